"""Low-rank adapters (LoRA, DoRA) on base modules, through ``peft``.

``peft`` is an optional extra (``pip install 'recipec[peft]'``), imported only when a recipe
has ``adapters:``. :func:`resolve_targets` turns a preset or regexes into module names;
:func:`inject_adapters` wraps them with ``peft.inject_adapter_in_model`` (a ``LoraConfig``
whose ``target_modules`` is exactly those names); :func:`merge_adapters` folds every adapter
into its base weight and puts the plain base module back (what ``merge_and_unload`` does for a
``PeftModel``), so every export is an ordinary model.

Parameter names after injection: ``blocks.0.attn.qkv.weight`` becomes
``blocks.0.attn.qkv.base_layer.weight``, and the adapter adds ``...qkv.lora_A.default.weight``,
``...qkv.lora_B.default.weight`` (DoRA: ``...qkv.lora_magnitude_vector.default.weight``).
Problems name fields of the ``adapters:`` section (``("target", 0)``); the compiler locates them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from torch import nn

from recipec.errors import ModelError

__all__ = ["ADAPTER_KEY", "INSTALL", "adapted_module", "import_peft", "inject_adapters", "injection_root",
           "merge_adapters", "resolve_targets"]

INSTALL = "pip install 'recipec[peft]'"
ADAPTER_KEY = re.compile(r"\.(lora_[A-Za-z_]+)\.")  # an adapter parameter's name: <module>.lora_A.default.weight
_ADAPTABLE = (nn.Linear, nn.Conv2d)
# module names as timm, torchvision and transformers spell them
_PRESETS = {
    "attention": [r"(^|\.)(attn|self_attn|attention)\.(qkv|q|k|v|proj|q_proj|k_proj|v_proj|o_proj|out_proj)$",
                  r"(^|\.)attention\.(attention\.)?(query|key|value)$", r"(^|\.)attention\.output\.dense$"],
    "mlp": [r"(^|\.)mlp\.(fc1|fc2|fc3)$", r"(^|\.)intermediate\.dense$", r"(^|\.)layer\.\d+\.output\.dense$"],
    "all-linear": [r"."],
}


def import_peft() -> Any:
    """The ``peft`` module, imported on first use.

    Raises:
        ModelError: at ``method``: peft is not installed (with the install command).
    """
    try:
        import peft  # noqa: PLC0415  (optional extra, imported when a recipe has adapters)
    except ImportError as exc:
        raise ModelError((("method",), f"adapters need the peft extra, which is not installed ({exc}); "
                                       f"run: {INSTALL}")) from exc
    return peft


def resolve_targets(model: nn.Module, target: str | Sequence[str], *, exclude: Sequence[str] = (),
                    within: Collection[str] | None = None) -> list[str]:
    """The names of the modules ``target`` adapts, in model order.

    Args:
        model: the model, its new head in place.
        target: ``attention``, ``mlp``, ``all-linear`` (``all-linear``: nn.Linear only) or regexes
            searched in module names (nn.Linear and nn.Conv2d modules).
        exclude: module-name prefixes never adapted (the new head: it trains whole).
        within: names of the parameters a module must own to be adapted (``adapters.groups``); None: any.

    Raises:
        ModelError: a regex or preset that adapts no module (``("target", i)`` / ``("target",)``).
    """
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, _ADAPTABLE) or any(name == p or name.startswith(p + ".") for p in exclude):
            continue
        if within is not None and not any(f"{name}.{p}" in within for p, _ in module.named_parameters()):
            continue
        candidates.append((name, module))
    preset = isinstance(target, str)
    regexes = _PRESETS[target] if isinstance(target, str) else list(target)
    chosen: set[str] = set()
    problems: list[Any] = []
    for i, regex in enumerate(regexes):
        hits = {name for name, module in candidates if re.search(regex, name)
                and (not preset or isinstance(module, nn.Linear))}
        if not hits and not preset:
            problems.append((("target", i), f"{regex!r} matches no nn.Linear or nn.Conv2d module{_where(within)} "
                                            f"(modules are named e.g. {_examples(candidates)})"))
        chosen |= hits
    if preset and not chosen:
        problems.append((("target",), f"the preset {target!r} matches no module of this model{_where(within)}; "
                                      f"write regexes over module names instead (e.g. {_examples(candidates)})"))
    if problems:
        raise ModelError(problems)
    return [name for name, _ in candidates if name in chosen]


def inject_adapters(model: nn.Module, modules: Sequence[str], *, method: str, r: int, alpha: float,
                    dropout: float) -> None:
    """Wrap ``modules`` of ``model`` (in place) with LoRA (``method="lora"``) or DoRA adapters.

    PEFT initialises ``lora_B`` to zeros: the adapted model computes what the base computed.
    """
    peft = import_peft()
    root, prefix = injection_root(model, modules)
    names = [name[len(prefix):] for name in modules]
    target = "^(" + "|".join(re.escape(name) for name in names) + ")$"  # peft fullmatches a string target
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target,
                             use_dora=method == "dora", bias="none")
    peft.inject_adapter_in_model(config, root)


def injection_root(model: nn.Module, modules: Sequence[str] = ()) -> tuple[nn.Module, str]:
    """The module peft injects into, and its name prefix (``""``: the model itself).

    peft treats a module with ``config.model_type`` as a transformers model and needs its
    ``base_model_prefix``: recipec's wrapper around a transformers model has the config but not
    the prefix, so the adapters go into the transformers model inside it (``hf.``).
    """
    if not hasattr(getattr(model, "config", None), "model_type") or hasattr(model, "base_model_prefix"):
        return model, ""
    for name, sub in model.named_modules():
        if name and hasattr(sub, "base_model_prefix") and all(m.startswith(name + ".") for m in modules):
            return sub, name + "."
    return model, ""


def adapted_module(param_name: str) -> str | None:
    """The adapted module a parameter belongs to (``blocks.0.attn.qkv`` for its base weight and
    its adapters), or None for a parameter of an unadapted module."""
    match = ADAPTER_KEY.search(param_name)
    if match is not None:
        return param_name[:match.start()]
    if ".base_layer." in param_name:
        return param_name.rpartition(".base_layer.")[0]
    return None


def merge_adapters(model: nn.Module) -> list[str]:
    """Fold every adapter of ``model`` into its base weight and put the base module back; return their names.

    Afterwards the model is the plain architecture (the state-dict keys it had before
    :func:`inject_adapters`), computing what the adapted model computed (up to float rounding).
    """
    peft = import_peft()
    layer_type = peft.tuners.tuners_utils.BaseTunerLayer
    merged = []
    for name, module in list(model.named_modules()):
        if isinstance(module, layer_type) and name:
            module.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
            merged.append(name)
    return merged


def _where(within: Collection[str] | None) -> str:
    return "" if within is None else " inside adapters.groups"


def _examples(candidates: Sequence[tuple[str, nn.Module]]) -> str:
    names = [name for name, _ in candidates]
    return ", ".join(dict.fromkeys(names[:2] + names[-2:])) or "none: no nn.Linear or nn.Conv2d module"
