"""What ``recipec validate`` checks beyond the schema, torch-free and fast: :func:`recipe_problems`.

A name no model family knows (``arch: resnet181``), a path that is not there (``data.root``,
``source.checkpoint``, ``source.recipe``, ``card.template``) and a hub folder the model cannot
have (:func:`hub_problem`) are found here, before anything is built; ``recipec plan`` finds them
too (it builds the model and reads the data), and more.
"""

from __future__ import annotations

from recipec.errors import RecipePath
from recipec.recipe.archs import arch_problem, family_name
from recipec.recipe.paths import path_problems
from recipec.recipe.spec import Recipe

__all__ = ["hub_problem", "recipe_problems"]


def recipe_problems(recipe: Recipe) -> list[tuple[RecipePath, str]]:
    """Every unknown architecture name and missing path of a loaded recipe, as ``(recipe path, message)``.

    Args:
        recipe: as :func:`recipec.recipe.load.load_recipe` returns it (paths absolute).

    Returns:
        The problems, architecture first; empty when there are none.

    Example:
        >>> recipe_problems(load_recipe("r.yaml"))
        [(('model', 'arch'), "unknown architecture 'resnet181'; did you mean 'resnet18' or ...")]
    """
    problems: list[tuple[RecipePath, str]] = []
    arch = arch_problem(recipe.model.arch)
    if arch is not None:
        problems.append((("model", "arch"), arch))
    problems += path_problems(recipe.model_dump(mode="python"))
    if "hub" in recipe.export.formats:  # a folder timm or torchvision must load: known before any training
        head = recipe.model.head
        why = hub_problem(recipe.model.arch, head_type=head.type if head else None, in_channels=recipe.model.in_channels)
        problems += [(("export", "formats"), why)] if why else []
    return problems


def hub_problem(arch: str, *, head_type: str | None, in_channels: int) -> str | None:
    """Why a model cannot have a hub folder that timm, torchvision or transformers loads (None when it can).

    For ``hf/`` models what the name alone tells: the rest (an image classifier of transformers' own:
    ViT, DINOv2, ConvNeXt, Swin; not CLIP or SigLIP vision towers) is checked when the model is built.

    Args:
        arch: ``model.arch``.
        head_type: ``model.head.type`` (None: the architecture's own head).
        in_channels: ``model.in_channels``.
    """
    family = family_name(arch)
    if family == "factory":
        return (f"{arch} is your own factory, which neither timm nor torchvision can build from a hub folder; "
                "drop hub from export.formats (model.safetensors loads with recipec.load)")
    if family not in ("timm", "torchvision", "hf"):
        return (f"{arch}: recipec writes hub folders for timm, torchvision and hf/ models, not yet for {family} ones; "
                "drop hub from export.formats")
    library = "transformers" if family == "hf" else family
    if head_type == "mlp":
        return (f"an mlp head is recipec's, not {library}'s: {library} builds {arch} with a linear classifier, "
                "which the weights would not fit; use model.head.type: linear, or drop hub from export.formats")
    if family == "torchvision" and in_channels != 3:
        return (f"torchvision builds {arch} for 3-channel images, and its first convolution would not take "
                f"the {in_channels}-channel weights; use model.in_channels: 3, or drop hub from export.formats")
    return None
