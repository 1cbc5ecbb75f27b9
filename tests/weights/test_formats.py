from __future__ import annotations

import argparse
import fractions
import hashlib
import json
import os
import pathlib
import pickle
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from recipec.errors import CheckpointError, UnsafeCheckpointError
from recipec.weights import _safetensors
from recipec.weights.formats import load, load_state_dict, read_metadata, save
from recipec.weights.raw import detect_format, sha256

MARKER_NAME = "pwned"


class TouchOnUnpickle:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.marker,))


class SharedWeightsModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight


def tiny_state_dict() -> dict[str, torch.Tensor]:
    return {
        "layer1.0.conv.weight": torch.randn(4, 2, 3, 3),
        "layer1.0.bn.running_mean": torch.randn(4),
        "layer1.0.bn.num_batches_tracked": torch.tensor(7),
        "fc.weight": torch.randn(3, 4, dtype=torch.float16),
        "fc.bias": torch.randn(3, dtype=torch.bfloat16),
        "mask": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
    }


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "model.pth", "model.bin"])
def test_round_trip_keeps_every_tensor_and_the_metadata(tmp_path: Path, name: str) -> None:
    sd = tiny_state_dict()
    sd["transposed"] = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous
    meta = {"recipe": json.dumps({"model": {"arch": "resnet18"}}), "note": "hi"}
    assert save(sd, tmp_path / name, metadata=meta) == [tmp_path / name]
    ckpt = load(tmp_path / name)
    assert_same(ckpt.state_dict, sd)
    assert ckpt.files == [tmp_path / name]
    if name.endswith(".safetensors"):
        assert (ckpt.format, ckpt.key) == ("safetensors", "")
        assert ckpt.metadata == {**meta, "format": "pt"}
    else:
        assert (ckpt.format, ckpt.key, ckpt.metadata) == ("torch", "state_dict", meta)
        assert torch.load(tmp_path / name, weights_only=True)["recipec_metadata"] == meta


def test_shared_tensors_are_stored_once_and_come_back_under_every_name(tmp_path: Path) -> None:
    sd = SharedWeightsModel().state_dict()
    save(sd, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"emb.weight"}  # the owner (first name) is kept
        assert f.metadata() == {"format": "pt", "head.weight": "emb.weight"}
    loaded = load_state_dict(tmp_path / "m.safetensors")
    assert_same(loaded, sd)
    assert loaded["head.weight"].data_ptr() == loaded["emb.weight"].data_ptr()


def test_overlapping_views_of_one_buffer_are_saved_apart(tmp_path: Path) -> None:
    base = torch.arange(10.0)
    sd = {"a": base[:6], "b": base[4:], "c": base.view(2, 5)}
    save(sd, tmp_path / "m.safetensors")
    assert_same(load_state_dict(tmp_path / "m.safetensors"), sd)


def test_sharded_save_writes_hugging_face_layout(tmp_path: Path) -> None:
    sd = {f"block{i}.weight": torch.full((8,), float(i)) for i in range(5)}  # 32 bytes each
    sd["big"] = torch.randn(40)  # 160 bytes: more than a shard, gets one alone
    sd["tied"] = sd["block0.weight"]
    files = save(sd, tmp_path / "model.safetensors", shard_size=70, metadata={"arch": "tiny"})
    names = [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    assert files == [tmp_path / n for n in names] + [tmp_path / "model.safetensors.index.json"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"arch": "tiny", "tied": "block0.weight", "total_size": 5 * 32 + 160}
    assert index["weight_map"] == {
        "block0.weight": names[0], "block1.weight": names[0], "block2.weight": names[1],
        "block3.weight": names[1], "block4.weight": names[2], "big": names[3],
    }  # fmt: skip
    with safe_open(str(tmp_path / names[3]), framework="pt") as f:
        assert list(f.keys()) == ["big"]
        assert f.metadata() == {"arch": "tiny", "tied": "block0.weight", "format": "pt"}
    for path in (tmp_path, tmp_path / "model.safetensors.index.json"):
        ckpt = load(path)
        assert ckpt.format == "safetensors-sharded"
        assert ckpt.files == [tmp_path / "model.safetensors.index.json", *(tmp_path / n for n in names)]
        assert ckpt.metadata == {"arch": "tiny", "tied": "block0.weight", "format": "pt"}
        assert_same(ckpt.state_dict, sd)
    assert read_metadata(tmp_path) == ckpt.metadata
    # Saving again into fewer shards leaves no stale shard behind.
    save(sd, tmp_path / "model.safetensors", shard_size=10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert_same(load_state_dict(tmp_path), sd)


# --- where the state dict is ---------------------------------------------------------------


def _model_sd() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.randn(2, 1, 3, 3), "conv.bias": torch.randn(2)}


def _optimizer_state() -> dict:
    # The shape of torch.optim.AdamW.state_dict(), without paying for a first step.
    state = {0: {"step": torch.tensor(1.0), "exp_avg": torch.randn(2, 1, 3, 3), "exp_avg_sq": torch.rand(2, 1, 3, 3)}}
    return {"state": state, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1]}]}


@pytest.mark.parametrize(
    ("make", "key", "metadata"),
    [
        (lambda sd: sd, "", {}),
        (lambda sd: {"model_state_dict": sd, "optimizer_state_dict": _optimizer_state(), "epoch": 4}, "model_state_dict",
         {"epoch": 4}),
        (lambda sd: {"state_dict": sd, "epoch": 3, "global_step": 30, "hyper_parameters": {"lr": 0.1, "layers": [1, 2]},
                     "optimizer_states": [_optimizer_state()], "pytorch-lightning_version": "2.4"}, "state_dict",
         {"epoch": 3, "global_step": 30, "hyper_parameters": {"lr": 0.1, "layers": [1, 2]},
          "pytorch-lightning_version": "2.4"}),
        (lambda sd: {"model": sd, "args": {"arch": "x"}}, "model", {"args": {"arch": "x"}}),
        (lambda sd: {"state_dict": {k: -v for k, v in sd.items()}, "state_dict_ema": sd}, "state_dict_ema", {}),
        (lambda sd: {"model": {k: -v for k, v in sd.items()}, "model_ema": sd, "model_state_dict": "not a mapping"},
         "model_ema", {"model_state_dict": "not a mapping"}),
    ],
    ids=["raw", "model_state_dict", "lightning", "model", "ema-over-plain", "model_ema"],
)  # fmt: skip
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_finds_the_state_dict_in_every_common_layout(tmp_path: Path, make, key, metadata, legacy) -> None:
    sd = _model_sd()
    torch.save(make(sd), tmp_path / "ckpt.pth", _use_new_zipfile_serialization=not legacy)
    ckpt = load(tmp_path / "ckpt.pth")
    assert (ckpt.format, ckpt.key, ckpt.metadata) == ("torch-legacy" if legacy else "torch", key, metadata)
    assert_same(ckpt.state_dict, sd)


def test_module_prefix_and_non_tensor_entries(tmp_path: Path) -> None:
    ema = {"module.conv.weight": torch.ones(2), "_metadata": {"": {"version": 1}}, "n_averaged": 3}
    torch.save({"model_ema": ema}, tmp_path / "c.pt")
    ckpt = load(tmp_path / "c.pt", mmap=False)
    assert (ckpt.key, list(ckpt.state_dict)) == ("model_ema", ["module.conv.weight"])


def test_explicit_dotted_key(tmp_path: Path) -> None:
    sd = _model_sd()
    torch.save({"ema": {"model": sd, "decay": 0.999}, "model": {"x": torch.zeros(1)}}, tmp_path / "c.pt")
    ckpt = load(tmp_path / "c.pt", state_dict_key="ema.model")
    assert ckpt.key == "ema.model"
    assert_same(ckpt.state_dict, sd)
    with pytest.raises(CheckpointError, match=r"'ema\.nope': no such key; top-level keys: 'ema' \(dict\)"):
        load(tmp_path / "c.pt", state_dict_key="ema.nope")


def test_no_state_dict_lists_the_keys_and_the_fix(tmp_path: Path) -> None:
    torch.save({"weights": {"a": 1}, "epoch": 2, "stuff": torch.ones(1), "extra": [1]}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"'weights' \(dict\), 'epoch' \(int\).*source\.state_dict_key"):
        load(tmp_path / "c.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load(tmp_path / "list.pt")


# --- nothing hostile runs ------------------------------------------------------------------


def _write_malicious(path: Path, kind: str, marker: Path) -> None:
    payload = {"state_dict": {"w": torch.ones(2)}, "x": TouchOnUnpickle(marker)}
    if kind == "plain-pickle":
        with open(path, "wb") as f:
            pickle.dump({"x": TouchOnUnpickle(marker)}, f)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=kind == "zip")


def test_the_malicious_payload_is_real(tmp_path: Path) -> None:
    pickle.loads(pickle.dumps(TouchOnUnpickle(tmp_path / MARKER_NAME)))
    assert (tmp_path / MARKER_NAME).exists()


@pytest.mark.parametrize("kind", ["zip", "legacy", "plain-pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / MARKER_NAME
    _write_malicious(tmp_path / "evil.pt", kind, marker)
    for allow in ((), ("argparse.Namespace",)):
        with pytest.raises(UnsafeCheckpointError) as info:
            load(tmp_path / "evil.pt", allow_globals=allow)
        message = str(info.value)
        assert str(tmp_path / "evil.pt") in message
        assert "pathlib.Path" in message
        assert "nothing in the file was executed" in message
        assert "source.allow_globals" in message
    assert not marker.exists()


def test_allow_globals_lets_a_trusted_class_through(tmp_path: Path) -> None:
    torch.save({"state_dict": _model_sd(), "ratio": fractions.Fraction(1, 3), "epoch": 1}, tmp_path / "c.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"fractions\.Fraction"):
        load(tmp_path / "c.pt")
    ckpt = load(tmp_path / "c.pt", allow_globals=["fractions.Fraction"])
    assert (ckpt.key, ckpt.metadata) == ("state_dict", {"epoch": 1})
    with pytest.raises(CheckpointError, match=r"allow_globals\.1: cannot resolve 'argparse\.Nope'"):
        load(tmp_path / "c.pt", allow_globals=["fractions.Fraction", "argparse.Nope"])


def test_an_argparse_namespace_is_read_as_plain_data(tmp_path: Path) -> None:
    """timm's CheckpointSaver stores its command line as args: no --allow-global needed, allowed or not."""
    torch.save({"state_dict": _model_sd(), "args": argparse.Namespace(lr=0.1), "epoch": 1}, tmp_path / "c.pt")
    for allow in ((), ("argparse.Namespace",)):
        ckpt = load(tmp_path / "c.pt", allow_globals=allow)
        assert (ckpt.key, ckpt.metadata) == ("state_dict", {"args": {"lr": 0.1}, "epoch": 1})


@pytest.mark.parametrize(
    ("legacy", "mmap", "expected"), [(False, True, True), (False, False, False), (True, True, False)]
)
def test_torch_load_is_always_weights_only_and_mmaps_zip_files(tmp_path, monkeypatch, legacy, mmap, expected) -> None:
    torch.save(_model_sd(), tmp_path / "c.pt", _use_new_zipfile_serialization=not legacy)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load(tmp_path / "c.pt", mmap=mmap)
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": expected}]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="TorchScript"):
        load(tmp_path / "m.pt")


# --- corrupt or missing input --------------------------------------------------------------


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _header(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


CORRUPT = {
    "safetensors-cut": lambda p: (save(tiny_state_dict(), p), _cut(p)),
    "safetensors-header-cut": lambda p: (save(tiny_state_dict(), p), p.write_bytes(p.read_bytes()[:12])),
    "offsets-beyond-file": lambda p: _header(p, {"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}, b"0" * 8),
    "offsets-disagree-with-shape": lambda p: _header(p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"0" * 16),
    "zip-cut": lambda p: (torch.save(tiny_state_dict(), p), _cut(p)),
    "legacy-cut": lambda p: (torch.save(tiny_state_dict(), p, _use_new_zipfile_serialization=False), _cut(p)),
    "random-bytes": lambda p: p.write_bytes(os.urandom(300)),
    "random-after-pickle-opcode": lambda p: p.write_bytes(b"\x80\x02" + os.urandom(300)),
    "text": lambda p: p.write_text("these are not the weights you are looking for\n"),
    "empty": lambda p: p.write_bytes(b""),
}  # fmt: skip


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_files_raise_checkpoint_error(tmp_path: Path, case: str, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    CORRUPT[case](path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as info:
        load(path)
    assert not isinstance(info.value, UnsafeCheckpointError)


@pytest.mark.parametrize(
    ("content", "match"),
    [('{"architectures": ["X"]}', "not a safetensors index"), ('{"weight_map": ', "not a readable JSON index"),
     ('{"weight_map": {"a": "../x.safetensors"}}', "must be a file beside the index")],
)  # fmt: skip
def test_json_that_is_not_an_index(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        load(tmp_path / "config.json")


def test_missing_paths_and_directories(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load(tmp_path)
    save(_model_sd(), tmp_path / "a.safetensors")
    save(_model_sd(), tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match=r"several checkpoints \(a.safetensors, b.safetensors\)"):
        load(tmp_path)


def test_sharded_inconsistencies_are_named(tmp_path: Path) -> None:
    sd = {f"t{i}": torch.full((4,), float(i)) for i in range(4)}
    save(sd, tmp_path / "model.safetensors", shard_size=32)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = index["weight_map"]["t0"]  # listed, absent from its shard
    del index["weight_map"]["t3"]  # present in a shard, not listed
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as info:
        load(tmp_path)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        "lacks tensors the index maps to it: 'ghost'",
        "holds tensors the index does not map to it: 't3'",
    ]
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard 'model-00002-of-00002.safetensors' does not exist"):
        load(index_path)


# --- saving --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state_dict", "kwargs", "match"),
    [
        (_model_sd(), {"metadata": {"epoch": 3}}, "metadata 'epoch': keys and values must be str, got int"),
        (_model_sd(), {"metadata": {"head": "conv.bias"}}, "reads as a tied-weight alias"),
        ({"w": torch.ones(1), "n": 3}, {}, "'n': expected a tensor, got int"),
        ({"s": torch.eye(2).to_sparse()}, {}, r"to_dense\(\)"),
        ({"m": torch.empty(2, device="meta")}, {}, "'m': a meta tensor has no data"),
        (_model_sd(), {"shard_size": 0}, "shard_size: must be a positive number of bytes"),
    ],
)
@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_invalid_input_raises_before_anything_is_written(tmp_path, state_dict, kwargs, match, name) -> None:
    if "shard_size" in kwargs and name == "m.pt":
        match = "shard_size needs a .safetensors path"
    with pytest.raises(CheckpointError, match=match):
        save(state_dict, tmp_path / name, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="unknown checkpoint suffix '.h5'"):
        save(_model_sd(), tmp_path / "m.h5")


@pytest.mark.parametrize("shard_size", [None, 40])
def test_failed_write_leaves_old_files_and_no_temporaries(tmp_path: Path, monkeypatch, shard_size) -> None:
    sd = {f"t{i}": torch.full((8,), float(i)) for i in range(3)}
    save(sd, tmp_path / "model.safetensors", shard_size=shard_size)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    writes = []
    real_writer = _safetensors._write_data

    def failing_writer(payloads, file, metadata):
        writes.append(file)
        if len(writes) == 2 or shard_size is None:
            Path(file).write_bytes(b"partial")
            raise OSError("disk full")
        return real_writer(payloads, file, metadata)

    monkeypatch.setattr(_safetensors, "_write_data", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        save({k: v + 1 for k, v in sd.items()}, tmp_path / "model.safetensors", shard_size=shard_size)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failed_torch_save_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    save(_model_sd(), tmp_path / "m.pt")
    before = (tmp_path / "m.pt").read_bytes()

    def failing_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save(_model_sd(), tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    assert (tmp_path / "m.pt").read_bytes() == before


def test_state_dict_key_does_not_apply_to_safetensors(tmp_path: Path) -> None:
    save(_model_sd(), tmp_path / "m.safetensors")
    assert load(tmp_path / "m.safetensors", state_dict_key="").key == ""
    with pytest.raises(CheckpointError, match="state_dict_key 'model' does not apply"):
        load(tmp_path / "m.safetensors", state_dict_key="model")


def test_detect_format_sha256_and_read_metadata(tmp_path: Path) -> None:
    sd = _model_sd()
    save(sd, tmp_path / "a.safetensors", metadata={"k": "v"})
    save(sd, tmp_path / "b.pt", metadata={"k": "v"})
    torch.save({"model": sd, "cfg": {"depth": 2}}, tmp_path / "c.bin", _use_new_zipfile_serialization=False)
    (tmp_path / "d.pt").write_bytes((tmp_path / "a.safetensors").read_bytes())  # misnamed safetensors
    assert [detect_format(tmp_path / n) for n in ("a.safetensors", "b.pt", "c.bin", "d.pt")] == [
        "safetensors", "torch", "torch-legacy", "safetensors",
    ]  # fmt: skip
    assert read_metadata(tmp_path / "a.safetensors") == {"k": "v", "format": "pt"}
    assert read_metadata(tmp_path / "b.pt") == {"k": "v"}
    assert read_metadata(tmp_path / "c.bin") == {"cfg": '{"depth": 2}'}
    assert sha256(tmp_path / "b.pt") == hashlib.sha256((tmp_path / "b.pt").read_bytes()).hexdigest()
