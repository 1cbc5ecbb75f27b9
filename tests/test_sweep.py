"""recipec sweep: spaces, trials as runs, failed and pruned trials, results, resuming and sharing a study."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tinyrecipes import ROOT, killed_build, read_metrics, run_cli, tiny_yaml, write_recipe

optuna = pytest.importorskip("optuna")

# every group trains from epoch 0, selected on val_loss: its value moves with lr even where 3 epochs of the
# tiny net leave val_acc at chance (a lr of 1e-9 keeps the initial loss, a real one lowers it)
SWEPT = tiny_yaml(freeze="{}", train="{epochs: 3, select: {metric: val_loss}}")


def _space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _study(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def test_a_space_is_checked_against_the_recipe_schema_before_anything_is_written(tmp_path, capsys):
    recipe = write_recipe(tmp_path, SWEPT)
    space = _space(tmp_path, "optimizer.lrr: {loguniform: [1.0e-5, 1.0e-2]}\n"
                             "optimizer.lr_decay: {uniform: [4.0, 1.0]}\n"
                             "data.mixup.alpha: {chioce: [0.0, 0.2]}\n"
                             "freeze.unfreeze: {choice: [{}, {1: [block2]}]}\n")
    code, _, err = run_cli(["sweep", str(recipe), "--space", space, "--trials", "2", "--out",
                              str(tmp_path / "sw")], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: {space}:1:1: optimizer.lrr: not a recipe path: optimizer has no key 'lrr'; did you mean 'optimizer.lr'?",
        f"error: {space}:2:1: optimizer.lr_decay: uniform: low must be below high, got [4.0, 1.0]",
        f"error: {space}:3:1: data.mixup.alpha: must be one distribution: {{uniform: [low, high]}}, "
        "{loguniform: [low, high]}, {int: [low, high]} or {choice: [value, ...]}; did you mean 'choice'?"]
    assert not (tmp_path / "sw").exists()


def test_a_value_the_schema_refuses_is_a_failed_trial_that_trains_nothing(tmp_path, capsys):
    recipe = write_recipe(tmp_path, SWEPT)
    space = _space(tmp_path, "optimizer.lr: {choice: [-1.0]}\n")
    code, out, err = run_cli(["sweep", str(recipe), "--space", space, "--trials", "1", "--out",
                              str(tmp_path / "sw")], capsys)
    assert code == 1  # no trial completed: nothing to choose
    [row] = _rows(tmp_path / "sw")
    assert row["state"] == "failed" and row["optimizer.lr"] == "-1.0"
    assert "--set optimizer.lr=-1.0: optimizer.lr: must be > 0" in row["reason"], row["reason"]
    trial = tmp_path / "sw" / "trials" / "0000"
    assert sorted(p.name for p in trial.iterdir()) == ["sweep.json"]  # no plan, no metrics, no checkpoint
    assert json.loads((trial / "sweep.json").read_text())["state"] == "failed"
    assert "trial 0 (of 1)  failed" in out and "no trial completed" in err
    assert not (tmp_path / "sw" / "best.yaml").exists()


def test_a_sweep_writes_its_results_and_best_yaml_builds_to_the_reported_objective(tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny_yaml(freeze="{}", train="{epochs: 2, select: {metric: val_loss}}"))
    space = _space(tmp_path, "optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}\n")
    sw = tmp_path / "sw"
    code, out, err = run_cli(["sweep", str(recipe), "--space", space, "--trials", "6", "--out", str(sw),
                              "--pruner", "none"], capsys)
    assert code == 0, err
    rows = _rows(sw)
    assert [r["number"] for r in rows] == [str(n) for n in range(6)]
    assert {r["state"] for r in rows} == {"complete"} and {r["epochs"] for r in rows} == {"2"}
    assert len({r["optimizer.lr"] for r in rows}) == 6
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 6
    for n in range(6):  # each trial a normal run directory
        run = sw / "trials" / f"{n:04d}"
        assert {"recipe.yaml", "plan.json", "metrics.jsonl", "model.safetensors", "README.md"} <= \
            {p.name for p in run.iterdir()}
        assert float(rows[n]["val_loss"]) == min(m["val_loss"] for m in read_metrics(run))
    assert (sw / "sweep.png").read_bytes().startswith(b"\x89PNG")
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert f"best: trial {best['number']}, val_loss {float(best['val_loss']):.4f}" in out
    # best.yaml is a recipe ready for recipec build: it trains to the objective the sweep reported
    code, out, err = run_cli(["build", str(sw / "best.yaml"), "--out", str(tmp_path / "again"), "--quiet"], capsys)
    assert code == 0, err
    assert min(m["val_loss"] for m in read_metrics(tmp_path / "again")) == float(best["val_loss"])


def test_the_pruner_stops_a_trial_with_a_hopeless_lr_before_its_last_epoch(tmp_path, capsys):
    recipe = write_recipe(tmp_path, SWEPT)
    space = _space(tmp_path, "optimizer.lr: {choice: [3.0e-2, 1.0e-9]}\n")
    sw = tmp_path / "sw"
    sw.mkdir()
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{sw / 'study.db'}", direction="minimize")
    for lr in (3.0e-2, 3.0e-2, 1.0e-9):  # two good trials first: the median pruner's start-up
        study.enqueue_trial({"optimizer.lr": lr})
    code, _, err = run_cli(["sweep", str(recipe), "--space", space, "--trials", "3", "--out", str(sw)], capsys)
    assert code == 0, err
    rows = _rows(sw)
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned"]
    hopeless = sw / "trials" / "0002"
    assert len(read_metrics(hopeless)) < 3
    note = json.loads((hopeless / "sweep.json").read_text())
    assert note["state"] == "pruned" and note["reason"].startswith("pruned after epoch 0 (median pruner)")
    # the pruned run stays a valid, resumable run: --resume trains its remaining epochs
    code, _, err = run_cli(["build", str(hopeless / "recipe.yaml"), "--out", str(hopeless), "--resume", "--quiet"],
                           capsys)
    assert code == 0, err
    assert [m["epoch"] for m in read_metrics(hopeless)] == [0, 1, 2]


@pytest.mark.slow
def test_a_killed_sweep_continues_to_n_trials_and_runs_the_killed_one_again(tmp_path):
    recipe = write_recipe(tmp_path, tiny_yaml(freeze="{}", train="{epochs: 2, select: {metric: val_loss}}"))
    space = _space(tmp_path, "optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]}\n")
    sw = tmp_path / "sw"
    args = ["sweep", str(recipe), "--space", space, "--trials", "3", "--out", str(sw), "--pruner", "none"]
    killed = killed_build(*args, at=3)  # the 3rd validation: trial 1's first epoch
    assert killed.returncode == -9, killed.stderr
    [running] = _study(sw).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert running.number == 1
    again = subprocess.run([sys.executable, "-m", "recipec", *args], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert again.returncode == 0, again.stderr
    trials = _study(sw).get_trials()
    counted = [t for t in trials if not t.user_attrs.get("retried")]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 3  # N trials, none lost
    [retried] = [t for t in trials if t.user_attrs.get("retried")]
    assert retried.number == 1 and retried.state.name == "FAIL" and "interrupted" in retried.user_attrs["reason"]
    [rerun] = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert rerun.params == running.params
    assert json.loads((sw / "trials" / "0001" / "sweep.json").read_text())["state"] == "failed"
    assert [r["state"] for r in _rows(sw)] == ["complete", "retried", "complete", "complete"]


@pytest.mark.slow
def test_two_sweep_processes_sharing_a_storage_run_disjoint_trials_of_one_study(tmp_path):
    recipe = write_recipe(tmp_path, tiny_yaml(freeze="{}", train="{epochs: 2, select: {metric: val_loss}}"))
    space = _space(tmp_path, "optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]}\n")
    storage = f"journal:{tmp_path / 'study.log'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "recipec", "sweep", str(recipe), "--space", space, "--trials",
                               "6", "--out", str(tmp_path / f"sw{i}"), "--storage", storage, "--study", "shared",
                               "--pruner", "none"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    ran = [{int(d.name) for d in (tmp_path / f"sw{i}" / "trials").iterdir()} for i in range(2)]
    assert not ran[0] & ran[1]  # disjoint
    assert ran[0] | ran[1] >= set(range(6))  # one study: its numbers, shared out (at most one over per process)
    assert ran[0] and ran[1]
    for i in range(2):  # each process summarises the whole study
        assert {int(r["number"]) for r in _rows(tmp_path / f"sw{i}")} == ran[0] | ran[1]


def test_a_storage_that_cannot_be_opened_is_an_input_error_and_writes_nothing(tmp_path, capsys):
    recipe = write_recipe(tmp_path, SWEPT)
    space = _space(tmp_path, "optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}\n")
    code, out, err = run_cli(["sweep", str(recipe), "--space", space, "--trials", "1", "--out", str(tmp_path / "sw"),
                              "--storage", "nosuchdb://here"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: --storage nosuchdb://here: cannot open the study: ") and "Traceback" not in err
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_trials_that_log_to_mlflow_are_children_of_one_parent_run_per_study(tmp_path, capsys):
    from mlflow import MlflowClient

    from recipec.tracking.sweep_runs import PARENT_TAG

    recipe = write_recipe(tmp_path, tiny_yaml(freeze="{}", train="{epochs: 1}", log="{mlflow: {}}"))
    space = _space(tmp_path, "optimizer.lr: {choice: [1.0e-2, 3.0e-2]}\n")
    code, _, err = run_cli(["sweep", str(recipe), "--space", space, "--trials", "2", "--out", str(tmp_path / "sw"),
                            "--quiet"], capsys)
    assert code == 0, err
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'sw' / 'trials' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    [parent] = [r for r in runs if r.data.tags.get(PARENT_TAG) == "tiny"]
    children = {r.data.tags.get("recipec.sweep.trial"): r for r in runs if r is not parent}
    assert sorted(children) == ["0", "1"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {parent.info.run_id}
    values = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "val_acc")}
    assert values == {int(n): r.data.metrics["val_acc"] for n, r in children.items()}
