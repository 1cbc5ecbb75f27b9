"""``recipec build`` under ``torchrun --nnodes 2``: two "nodes" of one process each on localhost,
c10d rendezvous, gloo. One coherent run directory, the same weights on every rank, and a resume
after both torchruns are killed that ends with exactly the weights of an uninterrupted run.

Each rank runs ``python -m recipec build`` through a small entry script (written below) that wraps
``recipec.train.loop.fit`` to report from inside every rank: its final weights, and, when asked,
a pause after an epoch's checkpoint so that the test can SIGKILL both torchruns at that point.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from recipec.weights import formats

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # a hung rendezvous or collective fails the test instead of the CI job

RECIPE = """\
    name: multinode
    seed: 3
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
    freeze: {trainable: [head], unfreeze: {1: [body]}}
    groups:
      - {name: body, match: ['^[0134]\\.']}
      - {name: head, match: ['^8\\.']}
    optimizer: {name: adamw, lr: 1.0e-2}
    data: {dataset: digits, image_size: 8, per_class: 12, augment: [hflip], batch_size: 8}
    train: {epochs: 3, feature_cache: off}
    export: {formats: [safetensors]}
"""

ENTRY = """\
import os, sys, time
from pathlib import Path

import torch
import recipec.train.loop as loop
from recipec.cli import main

report = Path(os.environ["MULTINODE_REPORT"])
rank = os.environ["RANK"]
pause_after = int(os.environ.get("MULTINODE_PAUSE_AFTER", "0"))
(report / f"rank{rank}.pid").write_text(str(os.getpid()))
real_fit = loop.fit


def fit(**kwargs):
    end = kwargs["on_epoch_end"]

    def on_epoch_end(metrics):
        end(metrics)  # rank 0 writes metrics.jsonl and the checkpoint here
        if metrics["epoch"] + 1 == pause_after:
            (report / f"rank{rank}.paused").touch()
            time.sleep(600)  # killed here by the test

    result = real_fit(**{**kwargs, "on_epoch_end": on_epoch_end})
    state = {k: v.detach().clone() for k, v in kwargs["training"].model.state_dict().items()}
    torch.save({"state": state, "world_size": os.environ["WORLD_SIZE"], "group_rank": os.environ["GROUP_RANK"]},
               report / f"rank{rank}.pt")
    return result


loop.fit = fit
main(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchruns(tmp_path: Path, out: Path, report: Path, *, resume: bool = False, pause_after: int = 0,
               ) -> list[subprocess.Popen[str]]:
    """Two torchrun agents, one "node" each, meeting at a c10d rendezvous on a free localhost port."""
    report.mkdir(exist_ok=True)
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    recipe = tmp_path / "multinode.yaml"
    recipe.write_text(textwrap.dedent(RECIPE))
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), MULTINODE_REPORT=str(report), MULTINODE_PAUSE_AFTER=str(pause_after),
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}",
               "--max-restarts", "0", "--monitor-interval", "0.5",
               str(entry), "build", str(recipe), "--out", str(out), *(["--resume"] if resume else [])]
    # each agent leads its own process group, so that killing it kills its worker too
    return [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True) for _ in range(2)]


def _finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    deadline = time.monotonic() + TIMEOUT_S
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    finally:
        _kill(procs)
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out
    return outputs


def _kill(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _weights(report: Path) -> list[dict[str, torch.Tensor]]:
    files = [report / "rank0.pt", report / "rank1.pt"]
    loaded = [torch.load(f, weights_only=True) for f in files]
    assert {d["world_size"] for d in loaded} == {"2"} and {d["group_rank"] for d in loaded} == {"0", "1"}
    return [d["state"] for d in loaded]


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"differ: {unequal}"


@pytest.mark.slow
def test_two_nodes_build_one_run_and_resume_after_a_kill(tmp_path: Path) -> None:
    # an uninterrupted two-node run
    whole, whole_report = tmp_path / "whole", tmp_path / "whole-report"
    outputs = _finish(_torchruns(tmp_path, whole, whole_report))
    rank0, rank1 = _weights(whole_report)
    _assert_equal(rank0, rank1)  # every rank ends with the same model
    exported = formats.load(whole / "model.safetensors").state_dict
    assert sum(out.count("done:") for out in outputs) == 1  # rank 0 reports, once
    metrics = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2] and metrics[1]["trainable_groups"] == ["body", "head"]
    assert json.loads((whole / "plan.json").read_text())["world_size"] == 2
    assert (whole / ".recipec-run").is_file() and not list(whole.glob(".*.tmp"))
    assert sorted(p.name for p in whole.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]

    # the same run killed (both torchruns, SIGKILL) after epoch 1's checkpoint, then resumed
    run, report = tmp_path / "run", tmp_path / "report"
    procs = _torchruns(tmp_path, run, report, pause_after=1)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not all((report / f"rank{r}.paused").exists() for r in (0, 1)):
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            assert time.monotonic() < deadline, "the two nodes never reached the end of epoch 0"
            time.sleep(0.1)
    finally:
        _kill(procs)
        for r in (0, 1):  # the workers too, should one have left its agent's group
            pid = report / f"rank{r}.pid"
            if pid.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid.read_text()), signal.SIGKILL)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    _finish(_torchruns(tmp_path, run, report, resume=True))
    resumed = _weights(report)
    _assert_equal(resumed[0], resumed[1])
    _assert_equal(resumed[0], rank0)  # exactly the uninterrupted run's weights
    _assert_equal(formats.load(run / "model.safetensors").state_dict, exported)
    metrics_resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["val_loss"] for m in metrics_resumed] == [m["val_loss"] for m in metrics]
