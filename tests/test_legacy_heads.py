"""Runs written when a linear head with dropout was ``Sequential(Dropout, Linear)`` (its tensors at ``8.1.weight``)
still load, predict, resume and feed a downstream recipe, now that heads keep the classifier's own keys."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file

import recipec
from recipec.compiler.compile import compile_recipe
from recipec.pipeline.build import build
from tests.tinyrecipes import load_tiny, read_metrics, tiny_yaml

TRUST = ["tests.tinynets:tiny_cnn"]
TINY = tiny_yaml(model='{arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10, dropout: 0.1}}',
                 train="{epochs: 2, keep_last: 2, ema: {decay: 0.9}}", optimizer="{name: sgd, lr: 0.05}",
                 freeze="{trainable: [head]}", export="{formats: [safetensors, torch], weights: ema}")


def _old(state: dict[str, Any]) -> dict[str, Any]:
    return {("8.1." + k[2:] if k.startswith("8.") else k): v for k, v in state.items()}


def _age(run: Path) -> None:
    """Rewrite the run as an earlier recipec wrote it: the head's tensors under 8.1.*."""
    path = run / "model.safetensors"
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    save_file(_old(load_file(path)), path, metadata=metadata)
    seen = set()
    for name in ("last.pt", "best.pt", *(p.name for p in (run / "checkpoints").glob("epoch-*.pt"))):
        file = run / "checkpoints" / name
        if not file.exists() or file.stat().st_ino in seen:  # last.pt is a hard link to the newest epoch file
            continue
        seen.add(file.stat().st_ino)
        state = torch.load(file, weights_only=True)
        state["model"] = _old(state["model"])
        if isinstance(state.get("extra", {}).get("ema"), dict):
            state["extra"]["ema"]["state"] = _old(state["extra"]["ema"]["state"])
        torch.save(state, file)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("legacy")
    new = build(load_tiny(root, body=TINY), out=root / "new")
    assert "8.weight" in load_file(new / "model.safetensors")  # the linear's own names
    old = build(load_tiny(root, body=TINY), out=root / "old")
    _age(old)
    assert "8.1.weight" in load_file(old / "model.safetensors") and "8.weight" not in load_file(old / "model.safetensors")
    return new, old


def test_an_old_export_loads_with_the_same_logits(runs: tuple[Path, Path]) -> None:
    new, old = runs
    x = torch.randn(4, 3, 8, 8)
    reference = recipec.load(new / "model.safetensors", trust_factories=TRUST)(x)
    assert torch.equal(recipec.load(old / "model.safetensors", trust_factories=TRUST)(x), reference)
    predictor = recipec.load_predictor(old / "model.safetensors", trust_factories=TRUST)
    assert torch.equal(predictor.logits(x), reference)


def test_an_old_run_resumes(runs: tuple[Path, Path], tmp_path: Path) -> None:
    new, old = (Path(shutil.copytree(run, tmp_path / run.name)) for run in runs)  # the fixture's runs stay as built
    for run in (new, old):
        build(load_tiny(tmp_path, "train.epochs=3", body=TINY), out=run, resume=True)
    assert [m["epoch"] for m in read_metrics(old)] == [0, 1, 2]
    a, b = load_file(new / "model.safetensors"), load_file(old / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-exact, written with the new names


def test_an_old_export_is_a_source_checkpoint_whose_head_loads(runs: tuple[Path, Path], tmp_path: Path) -> None:
    _, old = runs
    recipe = load_tiny(tmp_path, f"source={{checkpoint: {old / 'model.safetensors'}}}", body=TINY)
    compiled = compile_recipe(recipe)
    assert torch.equal(compiled.model.state_dict()["8.weight"], load_file(old / "model.safetensors")["8.1.weight"])


def test_a_plain_torchvision_checkpoint_converts_with_the_quickstart_recipe(tmp_path: Path) -> None:
    """``recipec convert foreign.pth model.onnx --recipe recipes/quickstart.yaml`` (a linear head with dropout)
    used to fail on a plain 10-class resnet18 (``lacks 'fc.1.bias'``)."""
    import subprocess
    import sys

    import torchvision

    root = Path(__file__).resolve().parents[1]
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "foreign.pth")
    result = subprocess.run([sys.executable, "-m", "recipec", "convert", str(tmp_path / "foreign.pth"),
                             str(tmp_path / "model.onnx"), "--recipe", "recipes/quickstart.yaml"],
                            capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model.onnx").stat().st_size > 40e6  # resnet18's weights, checked against torch by convert
