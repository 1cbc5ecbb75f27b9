"""TensorBoard and MLflow, read back through their own readers: one value per epoch and metric, across a kill."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from recipec.cli import main
from recipec.errors import RecipecError, RecipeError
from recipec.recipe.load import load_recipe
from recipec.tracking.metrics import flatten, scalars
from recipec.tracking.tracker import Tracking, open_tracking

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
    name: tiny
    seed: 3
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 2}, head: {num_classes: 10}}
    groups:
      - {name: body, match: ['^[0-4]\\.']}
      - {name: head, match: ['^8\\.']}
    freeze: {trainable: [head], unfreeze: {1: [body]}}
    optimizer: {name: adamw, lr: 1.0e-2, lr_decay: 2, scheduler: {name: cosine}}
    data: {dataset: digits, image_size: 8, per_class: 8, batch_size: 16}
    train: {epochs: 3, keep_last: 3}
    export: {formats: [safetensors]}
"""


def _recipe_file(tmp_path: Path, log: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY) + log)
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _history(epochs: int) -> list[dict[str, Any]]:
    """metrics.jsonl lines as the fit loop writes them (with keys other features add: val_acc_ema, nested)."""
    return [{"epoch": e, "train_loss": 2.0 - e / 10, "val_loss": 1.5 + e, "val_acc": 0.25 * e, "val_acc_ema": 0.1 * e,
             "lr": {"body": 1e-3 * (e + 1), "head": 1e-2}, "trainable_groups": ["head"], "trainable_params": 90 + e,
             "feature_cache": e == 0, "early_stopped": False, "seconds": 1.5 + e} for e in range(epochs)]


def _tensorboard(run: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


# --------------------------------------------------------------------------- what is logged


def test_scalars_are_every_number_of_a_metrics_line_under_its_own_name() -> None:
    line = _history(2)[1] | {"val_loss": None, "nonfinite": {"val_loss": "nan"}, "bad": math.inf}
    assert dict(scalars(line)) == {"train_loss": 1.9, "val_acc": 0.25, "val_acc_ema": 0.1, "lr/body": 2e-3,
                                   "lr/head": 1e-2, "trainable_params": 91.0, "seconds": 2.5}


def test_the_recipe_is_flattened_to_dotted_keys(tmp_path: Path) -> None:
    flat = flatten(load_recipe(_recipe_file(tmp_path, "log: {tensorboard: true}\n")))
    assert flat["optimizer.lr"] == 0.01 and flat["model.kwargs.width"] == 2 and flat["log.tensorboard"] is True
    assert flat["freeze.trainable"] == '["head"]' and flat["source"] == "null"


def test_a_bad_tracking_uri_is_a_located_recipe_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe_file(tmp_path, "log:\n  mlflow: {tracking_uri: 'ftp://host/x', experiment: e}\n")
    code, _, err = _cli(capsys, "validate", str(path))
    line = len(textwrap.dedent(TINY).splitlines()) + 2
    assert code == 2
    assert err.startswith(f"error: {path}:{line}:")
    assert "log.mlflow.tracking_uri: 'ftp://host/x' is not a tracking URI" in err and "sqlite:///" in err


def test_a_missing_backend_is_exit_2_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    path = _recipe_file(tmp_path, "log: {tensorboard: true, mlflow: true}\n")
    with pytest.raises(RecipeError, match=r"log\.mlflow: needs the mlflow extra.*pip install 'recipec\[mlflow\]'"):
        open_tracking(load_recipe(path), tmp_path / "run")
    code, _, err = _cli(capsys, "build", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and "pip install 'recipec[mlflow]'" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "recipe.yaml").exists() and not (tmp_path / "run" / "tensorboard").exists()


def test_off_on_other_ranks_and_in_smoke_runs(tmp_path: Path) -> None:
    recipe = load_recipe(_recipe_file(tmp_path, "log: {tensorboard: true}\n"))
    assert open_tracking(recipe, tmp_path, main=False) is None and open_tracking(recipe, tmp_path, smoke=True) is None
    assert open_tracking(load_recipe(_recipe_file(tmp_path, "")), tmp_path) is None


# --------------------------------------------------------------------------- TensorBoard across kills


class _Plan:
    def text(self) -> str:
        return "plan: tiny\n  group  params\n  head       90"


@pytest.mark.parametrize("recorded", [1, 2], ids=["killed-before-logging-epoch-1", "killed-before-recording-it"])
def test_tensorboard_holds_one_value_per_epoch_after_a_kill(tmp_path: Path, recorded: int) -> None:
    recipe = load_recipe(_recipe_file(tmp_path, "log: {tensorboard: true}\n"))
    run, history = tmp_path / "run", _history(3)
    run.mkdir()
    first = Tracking(recipe, run, plan=_Plan())
    first.log_epochs(history[:1])
    first.log_epochs(history[:2])  # epoch 1 is in TensorBoard's files ...
    first.close()
    # ... but a kill left tracking.json saying `recorded` epochs (1: it never got there)
    (run / "tracking.json").write_text(json.dumps({"tensorboard": {"epochs": recorded}}))
    second = Tracking(recipe, run, plan=_Plan())  # the resumed build: the checkpoint's history has 2 epochs, then epoch 2 ends
    second.log_epochs(history[:3])
    second.finish(history)

    events = _tensorboard(run)
    for tag, _ in scalars(history[0]):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(m["epoch"], pytest.approx(dict(scalars(m))[tag], rel=1e-6)) for m in history], tag
    assert sorted(events.Tags()["tensors"]) == ["plan/text_summary", "recipe/text_summary"]  # once each, at step 0
    assert [e.step for e in events.Tensors("plan/text_summary")] == [0]
    assert events.PluginTagToContent("hparams")  # the HPARAMS dashboard's experiment and session


# --------------------------------------------------------------------------- both, through a real SIGKILL


_KILL_AFTER_LOGGING_EPOCH_1 = """
import os, signal, sys
import recipec.tracking.tracker as tracking
real = tracking.Tracking._save_state
def killed(self):
    if self._tb_epochs == 2:  # epoch 1 is in TensorBoard and MLflow; tracking.json does not say so yet
        os.kill(os.getpid(), signal.SIGKILL)
    real(self)
tracking.Tracking._save_state = killed
from recipec.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_killed_and_resumed_build_reads_back_once_per_epoch(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    path = _recipe_file(tmp_path, f"log:\n  tensorboard: true\n  mlflow: {{tracking_uri: 'sqlite:///{db}', "
                                  "experiment: kills}\n")
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER_LOGGING_EPOCH_1, "build", str(path), "--out", str(run),
                             "--quiet"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # epochs 0 and 1 done and checkpointed
    run_id = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]

    code, _, err = _cli(capsys, "build", str(path), "--out", str(run), "--resume", "--quiet")
    assert (code, err) == (0, "")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [0, 1, 2]
    expected = {tag: [(m["epoch"], dict(scalars(m))[tag]) for m in history] for tag, _ in scalars(history[0])}
    assert {"train_loss", "val_loss", "val_acc", "lr/head", "lr/body", "trainable_params"} <= set(expected)

    events = _tensorboard(run)
    for tag, values in expected.items():
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [(s, pytest.approx(v, rel=1e-6)) for s, v in values]
    assert "plan/text_summary" in events.Tags()["tensors"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("kills")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # resumed, not started anew
    found = runs[0]
    assert found.info.status == "FINISHED"
    for tag, values in expected.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, tag))
        assert got == values, tag
    assert found.data.params["optimizer.lr"] == "0.01" and found.data.params["train.epochs"] == "3"
    assert found.data.tags["recipec.base_model"] == "tests.tinynets:tiny_cnn (random init)"
    assert {"recipec.version", "mlflow.runName"} <= set(found.data.tags)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.safetensors", "README.md", "plan.json", "metrics.jsonl"} <= artifacts


def test_log_may_be_added_on_resume(tmp_path: Path) -> None:
    from recipec.pipeline.runs import check_resumable as _check_resumable
    from recipec.recipe.load import dump_recipe

    before = load_recipe(_recipe_file(tmp_path, ""))
    after = load_recipe(_recipe_file(tmp_path, "log: {tensorboard: true, mlflow: {experiment: later}}\n"))
    _check_resumable(after, dump_recipe(before))  # where metrics also go does not change the run: no error
    with pytest.raises(RecipecError, match="optimizer.lr"):
        _check_resumable(after.model_copy(update={"optimizer": after.optimizer.model_copy(update={"lr": 0.5})}),
                         dump_recipe(before))
