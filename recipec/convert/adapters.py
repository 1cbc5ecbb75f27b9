"""PEFT's own adapter files (``export.adapters: separate | both``): ``adapter_config.json`` and
``adapter_model.safetensors``, as ``PeftModel.save_pretrained`` writes them, so that
``peft.PeftModel.from_pretrained(base, folder)`` on the same base gives the run's logits.

The new head trains whole: it travels as a ``modules_to_save`` module (``base_model.model.<head>.*``).
``provenance.json`` (and the safetensors metadata) names the base model and its weights' sha256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from recipec._atomic import atomic_write_text
from recipec.errors import ExportError
from recipec.model.adapters import import_peft, injection_root
from recipec.provenance import export_metadata

__all__ = ["save"]

_PREFIX = "base_model.model."  # PeftModel's key prefix in adapter_model.safetensors


def save(model: nn.Module, folder: Path, *, head: str, provenance: dict[str, Any], recipe_yaml: str) -> list[Path]:
    """Write ``model``'s adapters (not yet merged) and its head ``head`` (a module path) into ``folder``.

    ``adapter_model.safetensors`` also carries the run's recipe (paths relative to ``folder``) and
    provenance, as every export does, so that ``recipec.load(folder)`` rebuilds base + adapters.

    Returns:
        The files written.
    """
    peft = import_peft()
    root, prefix = injection_root(model)
    if prefix:  # recipec's wrapper around a transformers model: PeftModel would need the wrapper's own prefix
        raise ExportError(f"export.adapters: separate files of a model wrapped at {prefix!r} (hf/ architectures) "
                          "are not supported yet; export merged")
    config = root.__dict__["peft_config"]["default"]  # inject_adapter_in_model sets it as a plain attribute
    saved = peft.LoraConfig(**{**config.to_dict(), "modules_to_save": [head]})
    saved.base_model_name_or_path = str(provenance.get("base", {}).get("arch") or "")
    folder.mkdir(parents=True, exist_ok=True)
    saved.save_pretrained(str(folder))
    state = {_PREFIX + k: v.detach().cpu().contiguous() for k, v in peft.get_peft_model_state_dict(model).items()}
    state |= {f"{_PREFIX}{head}.{k}": v.detach().cpu().contiguous()
              for k, v in model.get_submodule(head).state_dict().items()}
    metadata = export_metadata(recipe_yaml=recipe_yaml, provenance=json.loads(json.dumps(provenance, default=str)))
    save_file(state, str(folder / "adapter_model.safetensors"), metadata=metadata)
    atomic_write_text(folder / "provenance.json", json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n")
    return [folder / "adapter_config.json", folder / "adapter_model.safetensors", folder / "provenance.json"]
