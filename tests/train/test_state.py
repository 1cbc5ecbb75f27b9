from __future__ import annotations

import argparse
import copy
import os
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from recipec.errors import CheckpointError, RecipeError
from recipec.train.schedule import LrShape, build_scheduler
from recipec.train.state import RunPoint, checkpoint_paths, load_state, restore_state, rotate_checkpoints, save_state
from recipec.weights import formats

STEPS = 12
RECIPE = "name: tiny\nseed: 0\n"
TOP_KEYS = {"format", "version", "model", "optimizer", "scheduler", "epoch", "file_numbering", "step", "recipe",
            "trainable_groups", "history", "best", "rng", "versions", "time", "extra"}


class BatchNormDropoutModel(nn.Module):
    """BatchNorm buffers and dropout: both must come back for a resume to be exact."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class WarmupFactor:
    """A callable-object lr lambda: LambdaLR saves its ``__dict__``."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.calls = 0

    def __call__(self, step: int) -> float:
        self.calls += 1
        return min(1.0, (step + 1) / self.warmup)


class UnpicklableFactor(WarmupFactor):
    """Holds a numpy scalar: a weights-only load could not read it back."""

    def __init__(self) -> None:
        super().__init__(3)
        self.scale = np.float64(0.5)


def _make(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, LambdaLR]:
    torch.manual_seed(seed)
    model = BatchNormDropoutModel()
    optimizer = torch.optim.AdamW(
        [{"params": model.body.parameters(), "lr": 1e-3}, {"params": model.head.parameters(), "lr": 1e-2}],
        weight_decay=0.1,
    )
    scheduler = build_scheduler(optimizer, LrShape(scheduler="cosine", warmup=0.25), total_steps=STEPS)
    return model, optimizer, scheduler


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LambdaLR) -> None:
    model.train()
    x = torch.randn(8, 4)
    if random.random() < 0.5:  # an augmentation drawn from Python's RNG
        x = x.flip(1)
    x = x + float(np.random.normal()) * 0.1  # and one from numpy's
    x = x * (torch.rand(8, 1) > 0.2)  # and one from torch's
    loss = F.cross_entropy(model(x), torch.randint(0, 3, (8,)))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int = 1,
          best: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    point = RunPoint(epoch=epoch, step=epoch * 5, trainable_groups=["head"], history=[{"epoch": 0, "val_acc": 0.5}],
                     best=best)
    return save_state(path, model=model, optimizer=optimizer, scheduler=scheduler, point=point, recipe_yaml=RECIPE,
                      extra=extra)


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}.{i}")
    else:
        assert a == b, where


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LambdaLR) -> dict[str, Any]:
    return copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict()})


@pytest.fixture
def trained() -> tuple[nn.Module, torch.optim.Optimizer, LambdaLR]:
    _seed(0)
    parts = _make()
    for _ in range(3):
        _train_step(*parts)
    return parts


def test_round_trip_keeps_every_tensor_and_value(tmp_path: Path, trained: Any) -> None:
    model, optimizer, scheduler = trained
    path = _save(tmp_path / "state.pt", *trained, best={"epoch": 0, "val_acc": 0.5}, extra={"scaler": {"scale": 2.0}})
    loaded = load_state(path)
    assert set(loaded) == TOP_KEYS
    assert (loaded["format"], loaded["version"], loaded["epoch"], loaded["step"]) == ("recipec-training-state", 1, 1, 5)
    _assert_same(loaded["model"], model.state_dict(), "model")
    _assert_same(loaded["optimizer"], optimizer.state_dict(), "optimizer")
    _assert_same(loaded["scheduler"], scheduler.state_dict(), "scheduler")
    assert loaded["recipe"] == RECIPE and loaded["trainable_groups"] == ["head"]
    assert loaded["history"] == [{"epoch": 0, "val_acc": 0.5}] and loaded["best"] == {"epoch": 0, "val_acc": 0.5}
    assert loaded["extra"] == {"scaler": {"scale": 2.0}}
    assert "torch" in loaded["versions"] and datetime.fromisoformat(loaded["time"]).utcoffset().total_seconds() == 0
    assert len(loaded["rng"]["python"]["state"]) == 625 and len(loaded["rng"]["numpy"]["keys"]) == 624


def test_raw_file_loads_with_weights_only(tmp_path: Path, trained: Any) -> None:
    path = _save(tmp_path / "state.pt", *trained)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == TOP_KEYS
    assert raw["rng"]["torch"].dtype == torch.uint8
    # recipec's schedules are lambdas: LambdaLR stores None for each of them, nothing to unpickle.
    assert raw["scheduler"]["lr_lambdas"] == [None, None]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    _seed(0)
    model, optimizer, scheduler = _make()
    for _ in range(5):
        _train_step(model, optimizer, scheduler)
    path = _save(tmp_path / "epoch-0001.pt", model, optimizer, scheduler)
    for _ in range(STEPS - 5):
        _train_step(model, optimizer, scheduler)
    uninterrupted = _snapshot(model, optimizer, scheduler)

    _seed(123)  # a fresh process: other initial weights, other RNG positions
    model, optimizer, scheduler = _make(seed=123)
    restore_state(load_state(tmp_path / "last.pt"), model=model, optimizer=optimizer, scheduler=scheduler)
    for _ in range(STEPS - 5):
        _train_step(model, optimizer, scheduler)
    resumed = _snapshot(model, optimizer, scheduler)
    _assert_same(resumed, uninterrupted)
    assert resumed["optimizer"]["state"], "AdamW state must be compared, not empty"

    # Control: without the RNG states the same weights and optimizer drift apart.
    _seed(123)
    model, optimizer, scheduler = _make(seed=123)
    saved = load_state(path)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    for _ in range(STEPS - 5):
        _train_step(model, optimizer, scheduler)
    assert not torch.equal(model.head.weight, uninterrupted["model"]["head.weight"])


def test_callable_object_lr_lambda_is_saved_and_restored(tmp_path: Path) -> None:
    model, optimizer, _ = _make()
    scheduler = LambdaLR(optimizer, [WarmupFactor(3), WarmupFactor(5)])
    optimizer.step()
    scheduler.step()
    path = _save(tmp_path / "state.pt", model, optimizer, scheduler)
    assert torch.load(path, weights_only=True)["scheduler"]["lr_lambdas"] == [{"warmup": 3, "calls": 2},
                                                                             {"warmup": 5, "calls": 2}]
    fresh_model, fresh_optimizer, _ = _make()
    fresh = LambdaLR(fresh_optimizer, [WarmupFactor(1), WarmupFactor(1)])
    restore_state(load_state(path), model=fresh_model, optimizer=fresh_optimizer, scheduler=fresh)
    assert [f.warmup for f in fresh.lr_lambdas] == [3, 5]
    assert fresh.get_last_lr() == scheduler.get_last_lr()


def test_unplain_values_are_refused_by_key_before_writing(tmp_path: Path) -> None:
    model, optimizer, _ = _make()
    scheduler = LambdaLR(optimizer, [UnpicklableFactor(), WarmupFactor(2)])
    with pytest.raises(CheckpointError, match=r"scheduler\.lr_lambdas\.0\.scale: a numpy\.float64 .*\.item\(\)"):
        _save(tmp_path / "epoch-0001.pt", model, optimizer, scheduler)
    with pytest.raises(CheckpointError, match=r"extra\.args: a argparse\.Namespace"):
        _save(tmp_path / "epoch-0001.pt", *_make(), extra={"args": argparse.Namespace(lr=1)})
    assert list(tmp_path.iterdir()) == []


def test_epoch_file_refreshes_last(tmp_path: Path, trained: Any) -> None:
    first, last = checkpoint_paths(tmp_path, 1)  # one epoch completed: epoch 0, as metrics.jsonl counts it
    assert (first.name, last.name) == ("epoch-0000.pt", "last.pt")
    _save(first, *trained, epoch=1)
    assert load_state(last)["epoch"] == 1
    second = _save(checkpoint_paths(tmp_path, 2)[0], *trained, epoch=2)
    assert load_state(last)["epoch"] == 2 and load_state(first)["epoch"] == 1
    assert last.read_bytes() == second.read_bytes()
    _save(last, *trained, epoch=3)  # last.pt alone: no epoch file appears
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0000.pt", "epoch-0001.pt", "last.pt"]
    assert load_state(second)["epoch"] == 2, "rewriting last.pt must not touch the epoch file it was linked to"


def test_last_is_copied_where_hard_links_fail(tmp_path: Path, trained: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*args: Any) -> None:
        raise OSError("links not supported")

    monkeypatch.setattr(os, "link", no_links)
    epoch_file = _save(tmp_path / "epoch-0001.pt", *trained)
    last = tmp_path / "last.pt"
    assert last.read_bytes() == epoch_file.read_bytes() and not last.samefile(epoch_file)


def test_failed_save_leaves_previous_last_intact(tmp_path: Path, trained: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path / "epoch-0001.pt", *trained, epoch=1)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="(?i)no space"):  # recipec.errors.DiskFullError is an OSError
        _save(tmp_path / "epoch-0002.pt", *trained, epoch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt", "last.pt"]
    assert load_state(tmp_path / "last.pt")["epoch"] == 1


def test_crash_between_epoch_file_and_last(tmp_path: Path, trained: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path / "epoch-0001.pt", *trained, epoch=1)

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "epoch-0002.pt", *trained, epoch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt", "last.pt"]
    assert load_state(tmp_path / "last.pt")["epoch"] == 1 and load_state(tmp_path / "epoch-0002.pt")["epoch"] == 2


def test_rotation_keeps_the_newest_epoch_files_and_last(tmp_path: Path) -> None:
    names = ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt", "epoch-9999.pt", "epoch-10000.pt", "last.pt",
             "epoch-final.pt", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    deleted = rotate_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["epoch-9999.pt", "epoch-10000.pt", "last.pt", "epoch-final.pt", "notes.txt"])
    assert rotate_checkpoints(tmp_path, keep_last=2) == []
    assert [p.name for p in rotate_checkpoints(tmp_path, keep_last=0)] == ["epoch-9999.pt", "epoch-10000.pt"]
    assert (tmp_path / "last.pt").exists()
    assert rotate_checkpoints(tmp_path / "absent", keep_last=1) == []
    with pytest.raises(RecipeError, match=r"^keep_last: must be >= 0, got -1"):
        rotate_checkpoints(tmp_path, keep_last=-1)


def _foreign_files(tmp_path: Path, state_file: Path) -> dict[str, tuple[Path, str]]:
    tensors = {"w": torch.ones(2)}
    data = state_file.read_bytes()
    files = {
        "missing": (tmp_path / "nope.pt", "no such file"),
        "directory": (tmp_path, "is a directory"),
        "empty": (tmp_path / "empty.pt", "empty file"),
        "garbage": (tmp_path / "garbage.pt", "not a checkpoint"),
        "truncated": (tmp_path / "truncated.pt", "truncated or corrupt"),
        "safetensors": (tmp_path / "w.safetensors", "safetensors file, which holds weights only"),
        "bare": (tmp_path / "bare.pt", "bare state dict of 1 tensors"),
        "export": (tmp_path / "model.pt", "recipec weights export"),
        "other-tool": (tmp_path / "lightning.ckpt", r"top-level keys 'epoch', 'state_dict'"),
        "pickled-object": (tmp_path / "namespace.pt", r"holds pickled Python objects \(argparse\.Namespace\)"),
        "other-format": (tmp_path / "fmt.pt", "its format is 'something-else'"),
        "newer": (tmp_path / "newer.pt", "version 99 was written by a newer recipec"),
        "incomplete": (tmp_path / "incomplete.pt", "incomplete training state: no 'model'"),
    }
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "garbage.pt").write_bytes(b"hello, world! this is text")
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    save_file(tensors, tmp_path / "w.safetensors")
    torch.save(tensors, tmp_path / "bare.pt")
    formats.save(tensors, tmp_path / "model.pt", metadata={"recipec.recipe": RECIPE})
    torch.save({"epoch": 3, "state_dict": tensors}, tmp_path / "lightning.ckpt")
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "namespace.pt")
    torch.save({"format": "something-else"}, tmp_path / "fmt.pt")
    raw = torch.load(state_file, weights_only=True)
    torch.save(raw | {"version": 99}, tmp_path / "newer.pt")
    torch.save({k: v for k, v in raw.items() if k != "model"}, tmp_path / "incomplete.pt")
    return files


def test_load_says_what_a_file_is_instead(tmp_path: Path, trained: Any) -> None:
    state_file = _save(tmp_path / "real" / "state.pt", *trained)
    for name, (path, message) in _foreign_files(tmp_path, state_file).items():
        with pytest.raises(CheckpointError, match=message) as info:
            load_state(path)
        assert info.value.exit_code == 2, name


def test_restore_refuses_a_state_from_another_model(tmp_path: Path, trained: Any) -> None:
    path = _save(tmp_path / "state.pt", *trained)
    other = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match=r"(?s)lacks model key '0\.weight'.*different model"):
        restore_state(load_state(path), model=other, optimizer=torch.optim.AdamW(other.parameters()),
                      scheduler=LambdaLR(torch.optim.AdamW(other.parameters()), lambda s: 1.0))
    model = BatchNormDropoutModel()
    one_group = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match="does not fit the optimizer"):
        restore_state(load_state(path), model=model, optimizer=one_group, scheduler=LambdaLR(one_group, lambda s: 1.0))


def test_training_state_converts_like_any_checkpoint(tmp_path: Path, trained: Any) -> None:
    # `recipec convert checkpoints/last.pt model.safetensors` reads the weights under "model".
    model = trained[0]
    checkpoint = formats.load(_save(tmp_path / "epoch-0001.pt", *trained))
    assert checkpoint.key == "model"
    _assert_same(checkpoint.state_dict, model.state_dict())
