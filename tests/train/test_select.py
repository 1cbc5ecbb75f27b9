"""train.select and export.weights: checkpoints/best.pt holds the best epoch, an early-stopped run exports it,
the provenance says which epoch and why, and best.pt stays true to the history across a kill and --resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import recipec.train.select as select
from recipec.pipeline.build import build
from recipec.errors import BuildInterrupted, RecipeError
from recipec.train.state import load_state
from tests.tinyrecipes import load_tiny, read_metrics, tiny_yaml

# all groups train at a high lr: val_acc rises for a few epochs, then falls, and early stopping ends the run
TINY = tiny_yaml(name="sel", seed="1", groups=None, freeze=None,
                 optimizer="{name: adamw, lr: 5.0e-2, scheduler: {name: none}}",
                 data="{dataset: digits, image_size: 8, per_class: 20, batch_size: 16, num_workers: 0}",
                 train="{epochs: 8, keep_last: 1, early_stopping: {metric: val_acc, patience: 1}}")


def _recipe(tmp_path: Path, *overrides: str) -> Any:
    return load_tiny(tmp_path, *overrides, body=TINY, name="sel.yaml")


def _best(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "best.pt", weights_only=True)


def _selection(run: Path) -> dict[str, Any]:
    with safe_open(run / "model.safetensors", "pt") as f:
        return json.loads(f.metadata()["recipec.provenance"])["selection"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("stopped")
    return build(_recipe(tmp_path), out=tmp_path / "run")


def test_an_early_stopped_run_exports_the_best_epoch(stopped):
    metrics = read_metrics(stopped)
    accs = [m["val_acc"] for m in metrics]
    assert metrics[-1]["early_stopped"] and len(metrics) < 8
    best_epoch = accs.index(max(accs))  # the first of equals, as argmax
    assert best_epoch != metrics[-1]["epoch"]
    best = _best(stopped)
    assert (best["epoch"], best["metric"], best["mode"], best["value"]) == (best_epoch, "val_acc", "max", max(accs))
    exported = load_file(stopped / "model.safetensors")
    assert exported.keys() == best["model"].keys()
    assert all(torch.equal(exported[k], best["model"][k]) for k in exported)
    last = load_state(stopped / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(exported[k], last[k]) for k in exported)  # not the last epoch's weights
    assert _selection(stopped) == {"weights": "model", "epoch": best_epoch, "metric": "val_acc", "mode": "max",
                                   "value": max(accs), "source": "the model"}
    card = (stopped / "README.md").read_text()
    assert f"- **Exported weights:** the best epoch, {best_epoch}, by val_acc (max: " in card
    # best.pt is never rotated away (keep_last: 1) and holds only weights and plain data
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == [
        "best.pt", f"epoch-{metrics[-1]['epoch']:04d}.pt", "last.pt"]  # named by the 0-based epoch it ends


@pytest.mark.slow  # an interrupted build and its resume: ~25 s on two busy cores
def test_a_kill_between_the_training_state_and_best_pt(stopped, tmp_path, monkeypatch):
    """The epoch's state is written, then the build dies before best.pt: --resume rewrites best.pt."""
    accs = [m["val_acc"] for m in read_metrics(stopped)]
    best_epoch = accs.index(max(accs))
    real, calls = select.save_best, {"n": 0}

    def dies_at_the_best_epoch(folder: Path, state: Any, selection: Any) -> Path:
        if selection.epoch == best_epoch:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(folder, state, selection)

    monkeypatch.setattr(select, "save_best", dies_at_the_best_epoch)
    with pytest.raises(BuildInterrupted):
        build(_recipe(tmp_path), out=tmp_path / "run")
    assert _best(tmp_path / "run")["epoch"] < best_epoch  # best.pt lags the state by one epoch
    monkeypatch.setattr(select, "save_best", real)
    lines: list[str] = []
    run = build(_recipe(tmp_path), out=tmp_path / "run", resume=True, log=lines.append)
    assert any("rewrote" in line and f"(epoch {best_epoch})" in line for line in lines)
    assert _selection(run) == _selection(stopped)
    a, b = load_file(stopped / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_last_and_select_by_val_loss(tmp_path, capsys):
    run = build(_recipe(tmp_path, "train.epochs=2", "train.early_stopping=null", "train.select.metric=val_loss",
                        "export.weights=last"), out=tmp_path / "run")
    losses = [m["val_loss"] for m in read_metrics(run)]
    assert _best(run)["epoch"] == losses.index(min(losses)) and _best(run)["mode"] == "min"
    exported, last = load_file(run / "model.safetensors"), load_state(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(exported[k], last[k]) for k in exported)
    assert _selection(run) == {"weights": "last", "epoch": 1, "metric": "val_loss", "mode": "min", "value": losses[1]}
    plan = json.loads((run / "plan.json").read_text())
    assert plan["select"] == {"metric": "val_loss", "mode": "min"} and plan["export_weights"] == "last"


def test_without_validation_best_is_the_last_epoch(tmp_path):
    run = build(_recipe(tmp_path, "train.epochs=1", "train.early_stopping=null", "data.val_fraction=0"),
                out=tmp_path / "run")
    assert not (run / "checkpoints" / "best.pt").exists()
    selection = _selection(run)
    assert selection["weights"] == "last" and selection["epoch"] == 0
    assert selection["note"] == "best fell back to the last epoch: no validation data (data.val_fraction 0)"
    exported, last = load_file(run / "model.safetensors"), load_state(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(exported[k], last[k]) for k in exported)


@pytest.mark.parametrize(("overrides", "where", "text"), [
    (["train.select={metric: val_loss, mode: max}"], "train.select.mode", "would pick the worst epoch"),
    (["train.select.metric=val_acc_ema"], "train.select.metric", "only with train.ema"),
    (["export.weights=ema"], "export.weights", "ema needs train.ema"),
    (["train.select.metric=val_f1"], "train.select.metric", "val_acc"),
])
def test_contradictions_are_located_errors(tmp_path, overrides, where, text):
    with pytest.raises(RecipeError) as info:
        _recipe(tmp_path, *overrides)
    assert any(f"{where}: " in p and text in p for p in info.value.problems), info.value.problems
