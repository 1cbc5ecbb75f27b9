"""The card of ``RUN/hub/`` (``export.formats: [hub]``): the run's card, made for the Hugging Face Hub.

It is the same template with a few facts changed (:func:`hub_context`): ``library_name`` is the family's
(``timm``, ``transformers`` for ``hf/`` runs, or ``pytorch`` for torchvision), ``base_model`` is the Hub
repository the run started from (``timm/convnext_atto.d2_in1k``, ``facebook/dinov2-small``) or left out
(torchvision weights and local files are not Hub models),
the exports table lists the folder's files, and "How to use" shows timm and transformers, or plain
torchvision, before recipec. The files the card links to (``curves.png``, ``plan.png``, ``eval/``) are
linked into the folder (:func:`link_card_files`), so the card reads the same on the Hub. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipec._atomic import atomic_link
from recipec.errors import CheckpointError, RunDirectoryError
from recipec.inference.hub_config import config_classes, config_preprocessing, hub_family, read_hub_config
from recipec.inference.preprocessing import Preprocessing
from recipec.provenance import file_digest
from recipec.recipe.archs import hf_folder, hf_name

__all__ = ["FOLDER", "HUB_FILES", "has_hub_folder", "hub_context", "link_card_files", "torchvision_transform_code"]

FOLDER = "hub"  # RUN/hub/: the one place its name is written
HUB_FILES = ("config.json", "model.safetensors", "README.md")  # what every hub folder has once its card is written
_SHOWN = ("model.safetensors", "model.pt", "model.onnx", "config.json")  # the folder's files, as the card lists them
_PLACE = "path/to/hub"  # where the folder is, before `recipec push` names its repository


def has_hub_folder(run: str | Path) -> bool:
    """Whether the run has a hub folder (``RUN/hub/config.json``) that a card goes into."""
    return (Path(run) / FOLDER / "config.json").is_file()


def hub_context(context: dict[str, Any], run: str | Path, *, repo_id: str | None = None) -> dict[str, Any]:
    """``context`` (:func:`recipec.card.context.card_context` of ``run``) for the card of ``run/hub/``.

    Args:
        context: the run card's context.
        run: the run directory.
        repo_id: the Hub repository the folder goes to (``recipec push``), named in "How to use";
            None: the folder's local path stands in.

    Raises:
        RunDirectoryError: the folder's ``config.json`` is missing or damaged.
    """
    folder = Path(run) / FOLDER
    try:
        config = read_hub_config(folder, error=RunDirectoryError)
        family = hub_family(config)
        if family is None:
            raise CheckpointError(f"{folder / 'config.json'}: neither timm's, transformers' nor recipec's torchvision layout")
        # an hf/ run's preprocessing is in preprocessor_config.json, which transformers reads
        prep = None if family == "transformers" else config_preprocessing(config, str(folder / "config.json"))
        classes = config_classes(config, str(folder / "config.json"))
    except CheckpointError as exc:
        raise RunDirectoryError(f"{exc}; export the run again (export.formats: [hub])") from exc
    weights = str(context["model"].get("weights") or "")
    arch = str(context["model"].get("arch") or "")
    # hf/<repo id> whose weights the run started from (not a local folder, not random initialisation)
    repo = hf_name(arch) if family == "transformers" and weights and hf_folder(arch) is None else None
    where = repo_id or _PLACE
    hub = {
        "family": family, "repo_id": repo_id, "where": where, "architecture": config.get("architecture") or (config.get("architectures") or [None])[0],
        "num_classes": len(classes), "files": [name for name in _SHOWN if (folder / name).is_file()],
        "timm_name": f"hf-hub:{repo_id}" if repo_id else f"local-dir:{_PLACE}",
        "weights_file": "model.safetensors" if repo_id is None else f'hf_hub_download("{repo_id}", "model.safetensors")',
        "transform": torchvision_transform_code(prep) if family == "torchvision" and prep else None,
    }
    exports = [{"file": name, "bytes": (folder / name).stat().st_size, "sha256": file_digest(folder / name)}
               for name in _SHOWN if (folder / name).is_file()]
    return context | {
        "hub": hub,
        "library_name": family if family in ("timm", "transformers") else "pytorch",
        "base_model": weights if weights.startswith("timm/") else repo,  # a Hub repository, or nothing
        "tags": list(dict.fromkeys([*context["tags"], family])),
        "exports": exports,
    }


def link_card_files(context: dict[str, Any], run: str | Path) -> list[Path]:
    """Link (hard link, else copy) the run's files the card refers to into ``run/hub/``.

    Returns:
        The files linked.
    """
    run, folder = Path(run), Path(run) / FOLDER
    names = ["recipe.yaml", context.get("curves"), context.get("plan_png")]  # the card shows recipe.yaml's text
    for result in context["evaluation"]["results"]:
        names += [result.get("file"), result.get("confusion")]
    linked = []
    for name in filter(None, names):
        if (run / name).is_file():
            atomic_link(run / name, folder / name)
            linked.append(folder / name)
    return linked


def torchvision_transform_code(prep: Preprocessing) -> str:
    """Python source of a torchvision v2 transform that preprocesses a PIL RGB image as the run did."""
    size, resize = prep["image_size"], prep["resize_size"]
    mode = f"v2.InterpolationMode.{prep['interpolation'].upper()}"
    tensor = ["v2.ToImage()", "v2.ToDtype(torch.float32, scale=True)"]
    if prep["rule"] == "square":  # on the float image, as the run resized it
        steps = [*tensor, f"v2.Resize(({size}, {size}), antialias=True)"]
    else:  # on the PIL image, as the pretraining transforms did
        shorter = f"({resize}, {resize})" if prep["crop_mode"] == "squash" else str(resize)
        steps = [f"v2.Resize({shorter}, interpolation={mode}, antialias=True)", f"v2.CenterCrop({size})", *tensor]
    norm = prep["normalization"]
    if norm:
        steps.append(f"v2.Normalize(mean={_floats(norm['mean'])}, std={_floats(norm['std'])})")
    return "v2.Compose([\n" + "".join(f"    {step},\n" for step in steps) + "])"


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"
