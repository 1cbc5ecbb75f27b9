"""A finished run on image folders with train/val/test splits, for the eval, predict and usage tests.

Seven classes (so top-5 is reported), 20x20 images resized to 16x16 (the resize is exercised),
ImageNet normalisation, a tiny CNN trained for two epochs, exported in all three formats.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from tests.imagedata import make_imagefolder
from tests.tinyrecipes import run_cli

CLASSES = ["cat", "dog", "emu", "fox", "gnu", "hen", "ibis"]
TRUST = ["tests.tinynets:tiny_cnn"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TRUSTED = [a for f in TRUST for a in ("--trust-factory", f)]  # TRUST as command-line flags
RECIPE = """\
    name: evalrun
    seed: 1
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 8}, head: {num_classes: 7}}
    groups:
      - {name: body, match: ['^[0-5]\\.']}
      - {name: head, match: ['^8\\.']}
    freeze: {trainable: [head, body]}
    optimizer: {name: adamw, lr: 1.0e-2}
    data: {dataset: imagefolder, root: data, image_size: 16, batch_size: 16, normalize: imagenet}
    train: {epochs: 2}
    export: {formats: [safetensors, torch, onnx]}
"""


_SHARED: dict[str, Path] = {}


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """``recipec ARGS`` in this process: (exit code, stdout, stderr)."""
    return run_cli(args, capsys)


def shared_run(tmp_path_factory: Any) -> Path:
    """One run per test session, built on first use (the tests that change it work on a copy)."""
    if "run" not in _SHARED:
        _SHARED["run"] = build_run(tmp_path_factory.mktemp("evalrun"))
    return _SHARED["run"]


def build_run(root: Path, *, splits: dict[str, int] | None = None, name: str = "run") -> Path:
    """Write the image folders under ``root/data`` and build the run into ``root/<name>``."""
    from recipec.pipeline.build import build
    from recipec.recipe.load import load_recipe

    make_imagefolder(root / "data", CLASSES, splits or {"train": 10, "val": 3, "test": 4}, size=20, seed=5)
    recipe = root / "recipe.yaml"
    recipe.write_text(textwrap.dedent(RECIPE))
    return build(load_recipe(recipe), out=root / name, log=None)
