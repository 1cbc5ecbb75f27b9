"""Speed settings that must not change results: the loop's device-side loss sums, data loader workers,
per-example augmentation seeds, torch.compile and channels_last (recipec.data.speed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import recipec.train.loop as loop
import recipec.data.speed as speed
from recipec.pipeline.build import build
from recipec.errors import RunError
from recipec.compiler.data_config import build_data
from recipec.data.loaders import set_epoch
from recipec.train.state import load_state
from tests.tinyrecipes import load_tiny, read_metrics, same_weights, tiny_yaml

TINY = tiny_yaml(freeze="{trainable: [head], unfreeze: {1: [block2], 2: [block1]}}",
                 data="{dataset: digits, image_size: 8, per_class: 10, batch_size: 32, augment: [hflip]}",
                 train="{epochs: 4, keep_last: 4}")


def _recipe(tmp_path: Path, *overrides: str) -> Any:
    return load_tiny(tmp_path, *overrides, body=TINY)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("plain")
    return build(_recipe(tmp_path), out=tmp_path / "run")


# --------------------------------------------------------------------------- the loop


def test_train_loss_is_the_per_batch_item_sum(tmp_path: Path) -> None:
    """Summed on the device, read once: still exactly sum(loss.item() * len(y)) / seen in batch order."""
    recipe = _recipe(tmp_path)
    from recipec.compiler.compile import compile_recipe
    from recipec.compiler.data_config import data_kwargs
    from recipec.compiler.fit_config import training_of

    data = build_data(**data_kwargs(recipe))
    compiled = compile_recipe(recipe, steps_per_epoch=len(data.train))
    seen: list[float] = []
    history = loop.fit(training_of(compiled), data, loop.FitConfig(epochs=2),
                       on_batch=lambda i, n, loss: seen.append(loss.item()))
    sizes = []
    for epoch in range(2):
        set_epoch(data, epoch)
        sizes.append([len(y) for _, y in data.train])
    first = len(sizes[0])
    for epoch, values in enumerate((seen[:first], seen[first:])):
        total = 0.0
        for value, n in zip(values, sizes[epoch]):
            total += value * n
        assert history[epoch]["train_loss"] == total / sum(sizes[epoch])


def test_a_nan_loss_stops_before_the_epoch_is_checkpointed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = loop.training_loss, {"n": 0}
    poisoned_call = 6  # 100 training examples (per_class 10), batch 32: 4 batches per epoch

    def poisoned(*args: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*args)
        return loss * math.nan if calls["n"] == poisoned_call else loss  # epoch 1, batch 1

    monkeypatch.setattr(loop, "training_loss", poisoned)
    with pytest.raises(RunError, match=r"epoch 1, batch 1: the loss is nan; lower optimizer.lr"):
        build(_recipe(tmp_path), out=tmp_path / "run")
    assert len(read_metrics(tmp_path / "run")) == 1  # epoch 0 only
    state = load_state(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_losses_check_every_chunk_when_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process stops a NaN run within _CHECK_EVERY batches, without waiting for the epoch's end."""
    monkeypatch.setattr(loop._Losses, "_CHECK_EVERY", 4)
    losses = loop._Losses(5, loop.World())
    for value in (1.0, 2.0, math.inf):
        losses.add(torch.tensor(value), 2)
    with pytest.raises(RunError, match="epoch 5, batch 2: the loss is inf"):
        losses.add(torch.tensor(0.5), 2)


# --------------------------------------------------------------------------- the input pipeline


def _epoch(data: Any, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    set_epoch(data, epoch)
    xs, ys = zip(*data.train)
    return torch.cat(xs), torch.cat(ys)


def test_batches_of_an_epoch_are_the_same_with_any_workers_and_after_a_restart() -> None:
    kwargs: dict[str, Any] = {"dataset": "digits", "image_size": 16, "per_class": 12, "batch_size": 16, "seed": 7,
                              "augment": ["hflip", "random_crop", "rotate"], "normalize": "none"}
    zero, two = build_data(**kwargs, num_workers=0), build_data(**kwargs, num_workers=2)
    assert (zero.info["num_workers"], two.info["num_workers"]) == (0, 2)
    rng = torch.get_rng_state()
    epochs = [_epoch(zero, e) for e in range(3)]
    assert torch.equal(torch.get_rng_state(), rng)  # augmentations leave the global stream (dropout) alone
    for e in (2, 0, 1):  # any order: epoch e depends on (seed, e) only
        x, y = _epoch(two, e)
        assert torch.equal(y, epochs[e][1]) and torch.equal(x, epochs[e][0])
    restarted = build_data(**kwargs, num_workers=2)
    x, y = _epoch(restarted, 1)
    assert torch.equal(x, epochs[1][0]) and torch.equal(y, epochs[1][1])
    assert not torch.equal(epochs[0][0], epochs[1][0])  # still random from epoch to epoch


def test_num_workers_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "usable_cores", lambda: 16)
    assert speed.auto_workers("auto", "digits", "cuda") == 0  # in memory: workers only add copies
    assert speed.auto_workers("auto", "fake", "cpu") == 0
    assert speed.auto_workers("auto", "imagefolder", "cuda") == 8
    assert speed.auto_workers("auto", "imagefolder", "cpu") == 4
    assert speed.auto_workers(3, "digits", "cpu") == 3
    monkeypatch.setattr(speed, "usable_cores", lambda: 2)
    assert speed.auto_workers("auto", "imagefolder", "cuda") == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two local ranks share the two cores
    assert speed.auto_workers("auto", "imagefolder", "cuda") == 0


def test_loaders_for_cuda_pin_memory() -> None:
    kwargs: dict[str, Any] = {"dataset": "digits", "image_size": 8, "per_class": 4, "num_workers": "auto"}
    cuda, cpu = build_data(**kwargs, device="cuda"), build_data(**kwargs)
    assert cuda.train.pin_memory and cuda.val is not None and cuda.val.pin_memory
    assert not cpu.train.pin_memory and cuda.info["num_workers"] == cpu.info["num_workers"] == 0


def test_the_plan_records_workers_compile_and_channels_last(tmp_path: Path, plain: Path) -> None:
    from recipec.pipeline.planning import plan_recipe

    planned = json.loads((plain / "plan.json").read_text())
    assert planned["data"]["num_workers"] == 0 and planned["speed"]["compile"] is None
    compiled, plan = plan_recipe(_recipe(tmp_path, "train.compile=max-autotune", "train.channels_last=true"))
    assert plan["speed"] | {"summary": ""} == {"compile": "max-autotune", "compile_phases": 3, "channels_last": True,
                                               "num_workers": "auto", "summary": ""}
    assert "compiles once per phase of the freezing schedule, 3 phases" in compiled.plan.text()


# --------------------------------------------------------------------------- compile and channels_last


def test_compile_and_channels_last_give_the_sameread_metrics(tmp_path: Path, plain: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECIPEC_COMPILE_BACKEND", "eager")  # dynamo's guards alone; aot_eager and inductor: slow tests
    run = build(_recipe(tmp_path, "train.compile=true", "train.channels_last=true"), out=tmp_path / "run")
    ours, theirs = read_metrics(run), read_metrics(plain)
    for a, b in zip(ours, theirs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5) and a["val_acc"] == b["val_acc"]
    # one compile per phase of the freezing schedule (epochs 0, 1, 2-3), none in between
    assert [m["compiles"] for m in ours] == [1, 1, 1, 0]
    exported = load_file(run / "model.safetensors")
    assert exported.keys() == load_file(plain / "model.safetensors").keys()
    assert not any("_orig_mod" in k for k in load_state(run / "checkpoints" / "last.pt")["model"])
    assert all(torch.allclose(exported[k].float(), v.float(), rtol=1e-4, atol=1e-5)
               for k, v in load_file(plain / "model.safetensors").items())


@pytest.mark.slow
def test_a_compiled_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECIPEC_COMPILE_BACKEND", "aot_eager")
    overrides = ("train.compile=true", "train.channels_last=true")
    whole = build(_recipe(tmp_path, *overrides), out=tmp_path / "whole")
    real, calls = loop._Losses.total, {"n": 0}

    def interrupted(self: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # during epoch 2: epochs 0 and 1 are checkpointed
            raise KeyboardInterrupt
        return real(self)

    with monkeypatch.context() as patch:
        patch.setattr(loop._Losses, "total", interrupted)
        with pytest.raises(KeyboardInterrupt):
            build(_recipe(tmp_path, *overrides), out=tmp_path / "cut")
    resumed = build(_recipe(tmp_path, *overrides), out=tmp_path / "cut", resume=True)
    assert same_weights(whole, resumed)


@pytest.mark.slow
def test_inductor_compiles_once_per_phase(tmp_path: Path, plain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real backend (needs a C++ compiler, as torch.compile on CPU does): same metrics within float tolerance."""
    monkeypatch.delenv("RECIPEC_COMPILE_BACKEND", raising=False)
    run = build(_recipe(tmp_path, "train.compile=true"), out=tmp_path / "run")
    ours, theirs = read_metrics(run), read_metrics(plain)
    assert [m["compiles"] for m in ours] == [1, 1, 1, 0]
    for a, b in zip(ours, theirs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
