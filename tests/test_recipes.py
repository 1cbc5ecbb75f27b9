"""Every shipped recipe builds, in a fast variant (fewer epochs, fewer and smaller images)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.per_class=8", "data.image_size=16", "data.val_fraction=0.1"]
FAST = {
    "quickstart.yaml": ["train.epochs=3"],
    "gradual-unfreezing.yaml": ["train.epochs=3", "freeze.gradual={every: 1, start: 1}"],
    "mlp-head.yaml": ["train.epochs=2"],
    # its upstream (the quickstart) is built as shipped, into runs/ of the working directory
    "class-subset.yaml": ["train.epochs=2"],
    # a ConvNeXt's four stride-2 stages need 32 px; epoch 0 head only (cached), stages.3 joins at epoch 1
    "timm-quickstart.yaml": ["train.epochs=2", "data.image_size=32", "freeze.unfreeze={1: [stages.3]}"],
    # LoRA on a ViT at the 32 px its patch grid is built for; adapters in the last four blocks, the head
    "vit-lora.yaml": ["train.epochs=1", "data.image_size=32"],
}


def test_every_recipe_has_a_fast_variant():
    assert sorted(FAST) == sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(FAST))
def test_recipe_builds(name, tmp_path):
    sets = [arg for item in SMALL + FAST[name] for arg in ("--set", item)]
    result = subprocess.run([sys.executable, "-m", "recipec", "build", str(ROOT / "recipes" / name),
                             "--out", str(tmp_path / "run"), "--device", "cpu", *sets],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = int(next(i for i in FAST[name] if i.startswith("train.epochs=")).split("=")[1])
    assert len(metrics) == epochs
    assert (tmp_path / "run" / "model.safetensors").exists()
