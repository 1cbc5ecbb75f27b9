"""Every path a recipe names, checked before any compute: :func:`path_problems`.

It reads raw recipe data (paths already absolute), so the loader can report the paths beside a
missing ``extends`` file, and :func:`recipec.pipeline.checks.check_inputs` reports them with the
data's problems. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from recipec._files import kind_of
from recipec.errors import RecipePath
from recipec.recipe.catalog import TORCHVISION

__all__ = ["path_problems"]

_DIRECTORY_DATASETS = ("imagefolder", *TORCHVISION)


def path_problems(data: Mapping[Any, Any]) -> list[tuple[RecipePath, str]]:
    """Every path of raw recipe data (paths already absolute) that does not exist or has the wrong kind."""
    def at(*path: str) -> Any:
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        return node if isinstance(node, str) and node.strip() else None

    problems: list[tuple[RecipePath, str]] = []
    checkpoint = at("source", "checkpoint")
    dcp = checkpoint is not None and os.path.isfile(os.path.join(checkpoint, ".metadata"))  # a DCP directory
    if checkpoint is not None and not os.path.isfile(checkpoint) and not dcp:
        problems.append((("source", "checkpoint"),
                         f"{checkpoint} is a directory; name the checkpoint file in it" if os.path.isdir(checkpoint)
                         else _not_regular(checkpoint) if os.path.exists(checkpoint)
                         else f"no such file {checkpoint} (a .pt/.pth/.bin/.ckpt, .safetensors, .onnx or *.index.json "
                              "file, or a DCP directory)"))
    upstream = at("source", "recipe")
    if upstream is not None and not os.path.isfile(upstream):
        problems.append((("source", "recipe"), f"no such recipe file {upstream}"))
    dataset = at("data", "dataset") or "digits"
    root = at("data", "root")
    if root is not None and dataset == "manifest" and not os.path.isfile(root):
        problems.append((("data", "root"), f"{root} is a directory; name the manifest file in it (.csv or .jsonl)"
                         if os.path.isdir(root) else _not_regular(root) if os.path.exists(root)
                         else f"no such manifest file {root} (dataset manifest needs a .csv or .jsonl file)"))
    if root is not None and dataset in _DIRECTORY_DATASETS and not os.path.isdir(root):
        layout = "root/<class>/<image>" if dataset == "imagefolder" else f"root/{TORCHVISION[dataset].folder}"
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        problems.append((("data", "root"), f"{root} {what} (dataset {dataset} needs {layout})"))
    template = at("card", "template")
    if template is not None and not os.path.isfile(template):
        problems.append((("card", "template"), _not_regular(template) if os.path.exists(template) else
                         f"no such template file {template}; give an existing Jinja2 file "
                         "or remove card.template for the shipped card"))
    return problems


def _not_regular(path: str) -> str:
    """A path that exists but is a FIFO, a device, a socket (or a link to one): never opened."""
    return f"{path} is {kind_of(os.stat(path).st_mode)}, not a regular file; name a regular file"
