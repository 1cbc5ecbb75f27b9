"""Resume integrity: damaged, missing or foreign training states, changed inputs, interrupts.

Every resume either continues exactly the run it resumes (same weights as an uninterrupted
run) or is refused with exit 2 and a message that says why; never a silent wrong result.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import recipec.train.loop as loop
import recipec.train.state as state_module
from recipec.pipeline.build import build
from recipec.errors import BuildInterrupted, CheckpointError, RecipecWarning, RunDirectoryError
from recipec.train.schedule import LrShape, build_scheduler
from recipec.train.state import RunPoint, checkpoint_paths, latest_state, load_state, restore_state, save_state
from tests.tinyrecipes import load_tiny, run_cli, same_weights, write_chain, write_recipe

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted TINY run every resumed one must equal."""
    tmp_path = tmp_path_factory.mktemp("whole")
    return build(load_tiny(tmp_path), out=tmp_path / "whole")


def _interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Ctrl-C during the validation of ``epoch`` (0-based): ``epoch`` checkpoints are complete."""
    real, calls = loop.evaluate, {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == epoch + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", interrupted)


def _cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str, epoch: int = 2,
         name: str = "cut") -> Path:
    """A run interrupted after ``epoch`` complete epochs."""
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, epoch)
        with pytest.raises(KeyboardInterrupt):
            build(load_tiny(tmp_path, *overrides), out=tmp_path / name)
    return tmp_path / name


def _record_data(path: Path, record: str) -> int:
    """File offset of the first data byte of a zip record (torch writes them stored, uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(record))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def _largest_record(path: Path) -> str:
    """The largest tensor record (``archive/data/<n>``)."""
    with zipfile.ZipFile(path) as archive:
        tensors = [i for i in archive.infolist() if i.filename.split("/")[-2:-1] == ["data"]]
        return max(tensors, key=lambda i: i.file_size).filename


def _flip_bit(path: Path, offset: int, bit: int = 6) -> None:
    with open(path, "r+b") as f:  # in place: a hard-linked epoch file is damaged too, as on a real disk
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _parts() -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = TinyModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer, build_scheduler(optimizer, LrShape(scheduler="cosine"), total_steps=10)


def _save(path: Path, epoch: int, **kwargs: Any) -> Path:
    model, optimizer, scheduler = _parts()
    point = RunPoint(epoch=epoch, step=epoch * 5, trainable_groups=["head"],
                     history=[{"epoch": e, "val_acc": 0.5} for e in range(epoch)])
    return save_state(path, model=model, optimizer=optimizer, scheduler=scheduler, point=point,
                      recipe_yaml="name: tiny\n", **kwargs)


def _states(tmp_path: Path, epochs: int = 3) -> Path:
    folder = tmp_path / "checkpoints"
    for epoch in range(1, epochs + 1):
        _save(checkpoint_paths(folder, epoch)[0], epoch)
    return folder


# --------------------------------------------------------------------------- 7.5: damaged files


@pytest.mark.parametrize("where", ["tensor", "tensor-last-byte", "pickle"])
def test_one_flipped_bit_is_refused_not_loaded(tmp_path: Path, where: str) -> None:
    path = _save(tmp_path / "state.pt", 1)
    record = {"pickle": "data.pkl"}.get(where, _largest_record(path))
    with zipfile.ZipFile(path) as archive:
        size = archive.getinfo(next(n for n in archive.namelist() if n.endswith(record))).file_size
    _flip_bit(path, _record_data(path, record) + (size - 1 if where == "tensor-last-byte" else size // 2))
    if where != "pickle":  # what the fix stops: torch itself loads the damaged tensor without a word
        assert set(torch.load(path, weights_only=True)["model"]) == set(TinyModel().state_dict())
    with pytest.raises(CheckpointError, match=r"state\.pt: damaged: record '.*' fails its CRC-32 check") as info:
        load_state(path)
    assert info.value.exit_code == 2


def test_a_damaged_zip_directory_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = _save(tmp_path / "state.pt", 1)
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"PK\x01\x02")  # the last central directory entry: its local header offset
    raw[at + 42: at + 46] = struct.pack("<I", 7)
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="state.pt"):
        load_state(path)


def test_latest_state_passes_over_damaged_files_to_the_newest_intact(tmp_path: Path) -> None:
    folder = _states(tmp_path)
    last = folder / "last.pt"
    assert last.samefile(folder / "epoch-0002.pt")  # a hard link: one flipped bit damages both names
    _flip_bit(last, _record_data(last, _largest_record(last)) + 3)
    path, state, damaged = latest_state(folder)
    assert (path.name, state["epoch"]) == ("epoch-0001.pt", 2)  # epoch 1 (0-based) done: 2 completed
    assert [line.split(":")[0] for line in damaged] == [str(last), str(folder / "epoch-0002.pt")]
    assert all("CRC-32" in line for line in damaged)


def test_latest_state_uses_an_intact_copy_when_only_last_is_damaged(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*args: Any) -> None:
        raise OSError("links not supported")

    monkeypatch.setattr(os, "link", no_links)  # last.pt is a copy
    folder = _states(tmp_path)
    (folder / "last.pt").write_bytes((folder / "last.pt").read_bytes()[:1000])  # truncated
    path, state, damaged = latest_state(folder)
    assert (path.name, state["epoch"]) == ("epoch-0002.pt", 3) and len(damaged) == 1


def test_nothing_intact_lists_every_damaged_file(tmp_path: Path) -> None:
    folder = _states(tmp_path, epochs=2)
    for name in ("epoch-0000.pt", "epoch-0001.pt"):
        (folder / name).write_bytes(b"garbage")
    (folder / "last.pt").unlink()
    with pytest.raises(CheckpointError) as info:
        latest_state(folder)
    assert [p.split(":")[0] for p in info.value.problems[:2]] == [str(folder / "epoch-0001.pt"),
                                                                  str(folder / "epoch-0000.pt")]
    assert "no intact training state" in info.value.problems[-1]
    with pytest.raises(RunDirectoryError, match="does not exist"):
        latest_state(tmp_path / "empty")


def test_an_epoch_file_that_holds_another_epoch_is_passed_over(tmp_path: Path) -> None:
    folder = _states(tmp_path, epochs=2)
    os.replace(folder / "epoch-0001.pt", folder / "epoch-0005.pt")
    (folder / "last.pt").unlink()
    path, _, damaged = latest_state(folder)
    assert path.name == "epoch-0000.pt" and damaged == [f"{folder / 'epoch-0005.pt'}: holds 2 completed epochs, not "
                                                        "what its name says (epoch 5)"]


def test_build_resumes_past_a_corrupted_last_with_the_uninterrupted_result(tmp_path: Path, whole: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cut = _cut(tmp_path, monkeypatch, epoch=2)
    last = cut / "checkpoints" / "last.pt"
    _flip_bit(last, _record_data(last, _largest_record(last)) + 5)  # last.pt and epoch-0001.pt
    lines: list[str] = []
    with pytest.warns(RecipecWarning, match=rf"^damaged checkpoint passed over: {re.escape(str(last))}: damaged"):
        build(load_tiny(tmp_path), out=cut, resume=True, log=lines.append)
    assert f"resuming from {cut / 'checkpoints' / 'epoch-0000.pt'} (1 epoch done), the newest intact checkpoint" in lines
    assert same_weights(whole, cut)
    assert load_state(cut / "checkpoints" / "epoch-0001.pt")["epoch"] == 2  # rewritten whole


def _old_numbering(folder: Path) -> None:
    """Rewrite the states as recipec 0.1 wrote them: epoch-0002.pt held 2 completed epochs, no file_numbering."""
    for path in sorted(folder.glob("epoch-*.pt"), reverse=True):  # highest first: no name is taken twice
        state = torch.load(path, weights_only=True)
        path.unlink()
        del state["file_numbering"]
        torch.save(state, folder / f"epoch-{state['epoch']:04d}.pt")
    state = torch.load(folder / "last.pt", weights_only=True)
    (folder / "last.pt").unlink()
    del state["file_numbering"]
    torch.save(state, folder / "last.pt")


def test_a_run_with_the_old_file_numbering_resumes_from_the_epoch_inside_the_file(
        tmp_path: Path, whole: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cut = _cut(tmp_path, monkeypatch, epoch=2)
    folder = cut / "checkpoints"
    _old_numbering(folder)
    assert sorted(p.name for p in folder.glob("epoch-*.pt")) == ["epoch-0001.pt", "epoch-0002.pt"]
    (folder / "last.pt").unlink()  # the epoch files alone: their names count completed epochs
    path, state, damaged = latest_state(folder)
    assert (path.name, state["epoch"], damaged) == ("epoch-0002.pt", 2, [])
    lines: list[str] = []
    build(load_tiny(tmp_path), out=cut, resume=True, log=lines.append)
    assert f"resumed {cut} at epoch 2" in lines
    assert same_weights(whole, cut)
    # the new file of epoch 2 (0-based) took the name of the old one it follows
    assert load_state(folder / "epoch-0002.pt")["epoch"] == 3 and load_state(folder / "last.pt")["epoch"] == 3


# --------------------------------------------------------------------------- 7.6: a kill between the two names


def test_kill_between_epoch_file_and_last_resumes_from_the_epoch_file(tmp_path: Path, whole: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = state_module._refresh_last

    def killed(source: Path, last: Path) -> None:
        if source.name == "epoch-0001.pt":  # epoch 1 (0-based): the second
            raise KeyboardInterrupt
        real(source, last)

    with monkeypatch.context() as patch:
        patch.setattr(state_module, "_refresh_last", killed)
        with pytest.raises(KeyboardInterrupt):
            build(load_tiny(tmp_path), out=tmp_path / "cut")
    cut = tmp_path / "cut"
    assert load_state(cut / "checkpoints" / "last.pt")["epoch"] == 1
    lines: list[str] = []
    build(load_tiny(tmp_path), out=cut, resume=True, log=lines.append)
    assert f"resuming from {cut / 'checkpoints' / 'epoch-0001.pt'} (2 epochs done), the newest intact checkpoint" in lines
    assert f"resumed {cut} at epoch 2" in lines
    assert same_weights(whole, cut)


def test_plain_build_into_a_run_with_only_an_epoch_file_says_resume(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cut = _cut(tmp_path, monkeypatch, epoch=1)
    (cut / "checkpoints" / "last.pt").unlink()  # a kill after the epoch file, before last.pt ever existed
    with pytest.raises(RunDirectoryError, match=r"already holds a run \(checkpoints/epoch-0000\.pt\); add --resume"):
        build(load_tiny(tmp_path), out=cut)
    assert latest_state(cut / "checkpoints")[0].name == "epoch-0000.pt"  # what --resume continues from


# --------------------------------------------------------------------------- 7.7 and 8.5: epochs


def test_resume_with_fewer_epochs_than_trained_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    constant = ["optimizer.scheduler={name: none}", "freeze.unfreeze={}"]
    cut = _cut(tmp_path, monkeypatch, *constant, epoch=2)
    with pytest.raises(RunDirectoryError) as info:
        build(load_tiny(tmp_path, *constant, "train.epochs=1"), out=cut, resume=True)
    assert info.value.paths == [("train", "epochs")] and info.value.exit_code == 2
    assert "is 1, but the run to resume already trained 2 epochs" in info.value.problems[0]
    assert load_state(cut / "checkpoints" / "last.pt")["epoch"] == 2
    assert "epochs: 3" in (cut / "recipe.yaml").read_text()  # nothing rewritten
    # as many epochs as trained: nothing left to train, the run is exported as it stands
    run = build(load_tiny(tmp_path, *constant, "train.epochs=2"), out=cut, resume=True)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("scheduler", ["{name: cosine}", "{name: onecycle}"])
def test_growing_a_schedule_that_depends_on_the_total_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 scheduler: str) -> None:
    cut = _cut(tmp_path, monkeypatch, f"optimizer.scheduler={scheduler}", epoch=1)
    plan = (cut / "plan.json").read_text()
    with pytest.raises(RunDirectoryError) as info:
        build(load_tiny(tmp_path, f"optimizer.scheduler={scheduler}", "train.epochs=5"), out=cut, resume=True)
    assert info.value.paths == [("train", "epochs")]
    assert "changed from 3 to 5, but the" in info.value.problems[0] and "the 1 epoch already" in info.value.problems[0]
    assert "lr schedule depends on the number of epochs" in info.value.problems[0]
    assert (cut / "plan.json").read_text() == plan


@pytest.mark.parametrize("scheduler", ["{name: step, step_epochs: 2, gamma: 0.5, warmup_epochs: 1}"])  # none: test_build
def test_growing_a_schedule_independent_of_the_total_equals_the_longer_run(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           scheduler: str) -> None:
    sched = f"optimizer.scheduler={scheduler}"
    longer = build(load_tiny(tmp_path, sched, "train.epochs=4"), out=tmp_path / "longer")
    cut = _cut(tmp_path, monkeypatch, sched, epoch=2)  # a 3-epoch run, stopped after 2
    lines: list[str] = []
    build(load_tiny(tmp_path, sched, "train.epochs=4"), out=cut, resume=True, log=lines.append)
    assert any("train.epochs changed from 3 to 4" in line for line in lines)
    a, b = load_file(longer / "model.safetensors"), load_file(cut / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    metrics = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    plan = json.loads((cut / "plan.json").read_text())
    assert plan["epochs"] == 4 and "epochs: 4" in (cut / "recipe.yaml").read_text()
    for group in plan["groups"]:  # the plan of the grown run is what ran, epoch by epoch
        assert [m["lr"][group["name"]] for m in metrics] == pytest.approx(group["lr"], rel=1e-9)


# --------------------------------------------------------------------------- 7.7: the source file


def test_resume_after_the_source_checkpoint_was_replaced_is_refused(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.tinynets import tiny_cnn

    torch.manual_seed(0)
    original = {k: v.clone() for k, v in tiny_cnn(width=4).state_dict().items()}
    source = tmp_path / "backbone.safetensors"
    save_file(original, source)
    with_source = [f"source={{checkpoint: {source}, exclude: ['^8\\.']}}"]
    cut = _cut(tmp_path, monkeypatch, *with_source, epoch=1)
    recorded = load_state(cut / "checkpoints" / "last.pt")["extra"]["source_sha256"]
    save_file({k: v + 1 for k, v in original.items()}, source)  # another file, same name and keys
    with pytest.raises(RunDirectoryError) as info:
        build(load_tiny(tmp_path, *with_source), out=cut, resume=True)
    assert info.value.paths == [("source", "checkpoint")]
    assert f"the run was trained from a file with sha256 {recorded}" in info.value.problems[0]


# --------------------------------------------------------------------------- 8.9: the data


IMAGES = """\
    name: images
    seed: 1
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 2}}
    optimizer: {name: adamw, lr: 1.0e-2, scheduler: {name: none}}
    data: {dataset: imagefolder, root: images, image_size: 8, batch_size: 4, val_fraction: 0.25}
    train: {epochs: 3}
    export: {formats: [safetensors]}
"""


def _image(path: Path, value: int, noisy: bool = False) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if noisy:  # compresses worse: another file size
        Image.frombytes("RGB", (8, 8), bytes(range(192))).save(path)
    else:
        Image.new("RGB", (8, 8), (value, 255 - value, value // 2)).save(path)


def test_resume_onto_changed_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for c, name in enumerate(("cat", "dog")):
        for i in range(8):
            _image(tmp_path / "images" / name / f"{i}.png", 20 * i + 100 * c)
    recipe = load_tiny(tmp_path, body=IMAGES)
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            build(recipe, out=tmp_path / "cut")
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    assert len(load_state(last)["extra"]["data_fingerprint"]) == 64
    target = tmp_path / "images" / "dog" / "3.png"
    original = target.read_bytes()

    def added() -> None:
        _image(tmp_path / "images" / "dog" / "8.png", 7)

    def replaced() -> None:
        _image(target, 7, noisy=True)
        assert len(target.read_bytes()) != len(original)

    def renamed() -> None:
        os.replace(target, target.with_name("9.png"))

    changes = {"added": (added, lambda: (tmp_path / "images" / "dog" / "8.png").unlink()),
               "removed": (target.unlink, lambda: target.write_bytes(original)),
               "replaced": (replaced, lambda: target.write_bytes(original)),
               "renamed": (renamed, lambda: os.replace(target.with_name("9.png"), target))}
    for name, (change, undo) in changes.items():
        change()
        with pytest.raises(RunDirectoryError) as info:
            build(load_tiny(tmp_path, body=IMAGES), out=tmp_path / "cut", resume=True)
        assert info.value.paths == [("data", "root")], name
        assert "the data changed since the run started" in info.value.problems[0], name
        undo()
    build(load_tiny(tmp_path, body=IMAGES), out=tmp_path / "cut", resume=True)  # the data as it was: it resumes
    assert load_state(last)["epoch"] == 3


def test_unchanged_data_keeps_its_fingerprint(tmp_path: Path) -> None:
    for c, name in enumerate(("cat", "dog")):
        for i in range(6):
            _image(tmp_path / "images" / name / f"{i}.png", 30 * i + 100 * c)
    from recipec.compiler.data_config import build_data, data_kwargs

    recipe = load_tiny(tmp_path, body=IMAGES)
    first, second = build_data(**data_kwargs(recipe)), build_data(**data_kwargs(recipe))
    assert first.info["fingerprint"] == second.info["fingerprint"]
    (tmp_path / "images" / "notes.txt").write_text("not an image, not in the data")
    assert build_data(**data_kwargs(recipe)).info["fingerprint"] == first.info["fingerprint"]
    digits = load_tiny(tmp_path)
    assert build_data(**data_kwargs(digits)).info["fingerprint"] != first.info["fingerprint"]


# --------------------------------------------------------------------------- 7.8: damaged fields, temporary files


def _raw(tmp_path: Path) -> dict[str, Any]:
    return torch.load(_save(tmp_path / "good.pt", 2), weights_only=True)


DAMAGE = {
    "epoch-str": (lambda s: s | {"epoch": "3"}, r"field 'epoch': must be a whole number >= 0, got '3'"),
    "epoch-negative": (lambda s: s | {"epoch": -1}, r"field 'epoch': must be a whole number >= 0, got -1"),
    "epoch-bool": (lambda s: s | {"epoch": True}, r"field 'epoch': .* got True"),
    "step-float": (lambda s: s | {"step": 1.5}, r"field 'step': .* got 1\.5"),
    "recipe-int": (lambda s: s | {"recipe": 42}, r"field 'recipe': must be the resolved recipe as YAML text"),
    "recipe-empty": (lambda s: s | {"recipe": ""}, r"field 'recipe'"),
    "groups-str": (lambda s: s | {"trainable_groups": "head"}, r"field 'trainable_groups'"),
    "history-str": (lambda s: s | {"history": "x"}, r"field 'history'"),
    "history-ints": (lambda s: s | {"history": [1, 2]}, r"field 'history'"),
    "model-empty": (lambda s: s | {"model": {}}, r"field 'model'"),
    "optimizer-list": (lambda s: s | {"optimizer": []}, r"field 'optimizer'"),
    "scheduler-none": (lambda s: s | {"scheduler": None}, r"field 'scheduler'"),
    "extra-list": (lambda s: s | {"extra": []}, r"field 'extra'"),
    "rng-empty": (lambda s: s | {"rng": {}}, r"field 'rng\.torch'"),
    "rng-torch-empty": (lambda s: s | {"rng": s["rng"] | {"torch": torch.empty(0, dtype=torch.uint8)}},
                        r"field 'rng\.torch': must be a torch\.uint8 tensor of shape \[\d+\], got a torch\.uint8 "
                        r"tensor of shape \[0\]"),
    "rng-python-short": (lambda s: s | {"rng": s["rng"] | {"python": {"version": 3, "state": [1, 2],
                                                                       "gauss_next": None}}}, r"field 'rng\.python'"),
    "rng-numpy-keys": (lambda s: s | {"rng": s["rng"] | {"numpy": s["rng"]["numpy"] | {"keys": []}}},
                       r"field 'rng\.numpy'"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_fields_are_located_checkpoint_errors(tmp_path: Path, name: str) -> None:
    damage, message = DAMAGE[name]
    path = tmp_path / "damaged.pt"
    torch.save(damage(_raw(tmp_path)), path)
    with pytest.raises(CheckpointError, match=rf"damaged\.pt: damaged training state: {message}") as info:
        load_state(path)
    assert info.value.exit_code == 2


def test_several_damaged_fields_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "damaged.pt"
    torch.save(_raw(tmp_path) | {"epoch": None, "recipe": None, "history": None}, path)
    with pytest.raises(CheckpointError) as info:
        load_state(path)
    assert [p.split("field ")[1].split(":")[0] for p in info.value.problems] == ["'epoch'", "'recipe'", "'history'"]


def test_a_damaged_rng_state_that_passes_the_checks_is_still_a_checkpoint_error(tmp_path: Path) -> None:
    state = _raw(tmp_path)
    state["rng"]["python"]["version"] = 99  # random.setstate refuses it
    model, optimizer, scheduler = _parts()
    with pytest.raises(CheckpointError, match="field 'rng' cannot be restored"):
        restore_state(state, model=model, optimizer=optimizer, scheduler=scheduler)


def test_latest_state_passes_over_a_damaged_field(tmp_path: Path) -> None:
    folder = _states(tmp_path, epochs=2)
    last = folder / "last.pt"
    raw = torch.load(last, weights_only=True)
    last.unlink()  # break the hard link: only last.pt is damaged
    torch.save(raw | {"epoch": "two"}, last)
    path, state, damaged = latest_state(folder)
    assert (path.name, state["epoch"]) == ("epoch-0001.pt", 2)
    assert damaged == [f"{last}: damaged training state: field 'epoch': must be a whole number >= 0, got 'two'; "
                       "resume from an older checkpoint (checkpoints/epoch-*.pt) or start a new run"]


def test_next_build_removes_temporary_files_a_killed_build_left(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cut = _cut(tmp_path, monkeypatch, epoch=1)
    litter = [cut / ".model.safetensors.1a2b3c4d.tmp", cut / ".metrics.jsonl.x_y9z0ab.tmp",
              cut / "checkpoints" / ".last.pt.0f0f0f0f.tmp", cut / "checkpoints" / ".epoch-0002.pt.deadbeef.tmp"]
    kept = [cut / "notes.tmp", cut / ".hidden.tmp", cut / "checkpoints" / "mine.txt"]
    for path in litter + kept:
        path.write_bytes(b"partial")
    build(load_tiny(tmp_path), out=cut, resume=True)
    assert [p for p in litter if p.exists()] == []
    assert all(p.exists() for p in kept)


# --------------------------------------------------------------------------- 8.6: GradScaler


def _scaled_steps(scaler: torch.amp.GradScaler, n: int) -> None:
    model, optimizer, _ = _parts()
    for _ in range(n):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(torch.randn(4, 4)).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()


def test_grad_scaler_state_round_trip(tmp_path: Path) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    _scaled_steps(scaler, 5)
    saved = scaler.state_dict()
    assert saved["scale"] != 2.0**10 and saved["_growth_tracker"] == 1
    path = _save(tmp_path / "state.pt", 1, extra={"scaler": saved})
    fresh = torch.amp.GradScaler("cpu")
    model, optimizer, scheduler = _parts()
    restore_state(load_state(path), model=model, optimizer=optimizer, scheduler=scheduler, scaler=fresh)
    assert fresh.state_dict() == saved
    _scaled_steps(scaler, 3)
    _scaled_steps(fresh, 3)
    assert fresh.state_dict() == scaler.state_dict()


def test_build_saves_and_restores_the_grad_scaler(tmp_path: Path, whole: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[torch.amp.GradScaler] = []

    def cpu_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
        made.append(torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1))
        return made[-1]

    monkeypatch.setattr(loop, "grad_scaler", cpu_scaler)  # an fp16 CUDA run's scaler, on the CPU
    cut = _cut(tmp_path, monkeypatch, epoch=2)
    saved = load_state(cut / "checkpoints" / "last.pt")["extra"]["scaler"]
    assert saved["scale"] == 2.0 ** (4 + 2 * 7)  # doubled at each of the 14 steps of 2 epochs
    build(load_tiny(tmp_path), out=cut, resume=True)
    assert made[-1].state_dict()["scale"] == 2.0 ** (4 + 3 * 7), "the resumed scaler continues from the saved one"
    assert load_state(cut / "checkpoints" / "last.pt")["extra"]["scaler"] == made[-1].state_dict()
    assert same_weights(whole, cut)  # power-of-two scales are exact in float32: the weights are the same


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_a_grad_scaler_only_for_fp16_on_cuda() -> None:
    assert loop.grad_scaler("fp16", torch.device("cpu")) is None
    assert loop.grad_scaler("bf16", torch.device("cuda")) is None
    assert isinstance(loop.grad_scaler("fp16", torch.device("cuda")), torch.amp.GradScaler)


# --------------------------------------------------------------------------- 8.14: Ctrl-C


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_cli(args, capsys)


def test_ctrl_c_says_what_was_kept_and_the_exact_resume_command(tmp_path: Path, whole: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, name="my recipe.yaml")
    sets = ["--set", "train.keep_last=1", "--set", "card.tags=[a b]"]  # no effect on the weights
    run = tmp_path / "cut run"
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 2)
        code, _, err = _cli(capsys, "build", str(recipe), "--out", str(run), *sets, "--device", "cpu", "--quiet")
    assert code == 130 and "Traceback" not in err
    lines = err.splitlines()
    assert lines[0] == "error: interrupted"
    assert lines[1] == f"kept {run / 'checkpoints' / 'epoch-0001.pt'} (2 epochs done); continue with:"
    command = shlex.split(lines[2])
    assert command == ["recipec", "build", str(recipe), "--out", str(run), *sets, "--device", "cpu", "--resume"]
    assert _cli(capsys, *command[1:], "--quiet")[0] == 0
    assert same_weights(whole, run)


def test_ctrl_c_before_the_first_checkpoint_says_nothing_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, name="r.yaml")
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 0)
        code, _, err = _cli(capsys, "build", str(recipe), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 130
    assert err.splitlines()[1].startswith("no checkpoint was written yet")
    assert shlex.split(err.splitlines()[2]) == ["recipec", "build", str(recipe), "--out", str(tmp_path / "run")]
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))  # so the same command starts the run


def test_build_interrupted_is_a_keyboard_interrupt_that_names_the_checkpoint(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 1)
        with pytest.raises(BuildInterrupted) as info:
            build(load_tiny(tmp_path), out=tmp_path / "run")
    assert isinstance(info.value, KeyboardInterrupt)
    assert (info.value.run, info.value.epoch) == (str(tmp_path / "run"), 1)
    assert info.value.checkpoint == str(tmp_path / "run" / "checkpoints" / "epoch-0000.pt")


SECOND_CTRL_C = """\
import atexit, os, signal, sys, time, types
from recipec.cli import main

def second():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)

def build(*args, **kwargs):
    if sys.argv[3] == "exit":  # while the interpreter shuts down (data-loader workers joined, files closed)
        atexit.register(second)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C
        time.sleep(5)
    finally:
        if sys.argv[3] == "cleanup":  # while the build unwinds
            second()

sys.modules["recipec.pipeline.build"] = types.SimpleNamespace(build=build)  # no torch: a fast subprocess
main(["build", sys.argv[1], "--out", sys.argv[2]])
"""


@pytest.mark.parametrize("when", ["cleanup", "exit"])
def test_a_second_ctrl_c_during_shutdown_prints_no_traceback(tmp_path: Path, when: str) -> None:
    recipe = write_recipe(tmp_path, name="r.yaml")
    done = subprocess.run([sys.executable, "-c", SECOND_CTRL_C, str(recipe), str(tmp_path / "run"), when], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: interrupted again: stopped at once")


def test_the_interrupt_handler_is_restored_after_main(capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGINT)
    _cli(capsys, "validate", str(ROOT / "recipes" / "quickstart.yaml"))
    assert signal.getsignal(signal.SIGINT) is before


def test_an_interrupted_upstream_build_continues_with_the_same_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))  # tests.tinynets
    write_chain(tmp_path, upstream_epochs=2, export="{formats: [safetensors]}")
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 1)  # in the upstream's second epoch
        code, _, err = _cli(capsys, "build", "down.yaml", "--quiet")
    assert code == 130
    upstream = Path("runs") / "upstream"
    assert err.splitlines()[1] == (f"interrupted while building the upstream run {upstream} "
                                   f"(kept {upstream / 'checkpoints' / 'epoch-0000.pt'}); continue with:")
    assert shlex.split(err.splitlines()[2]) == ["recipec", "build", "down.yaml"]
    code, out, err = _cli(capsys, "build", "down.yaml")
    assert code == 0, err
    assert f"up.yaml into {upstream}\nresumed {upstream} at epoch 1\n" in out
    assert out.startswith("resuming upstream recipe ")
    assert (upstream / "model.safetensors").exists() and (Path("runs") / "downstream" / "model.safetensors").exists()
