"""The streaming safetensors writer (every ``formats.save`` of safetensors, exports included) and
``convert``'s hash computed while it writes: the same bytes as safetensors' own ``save_file``,
every edge case read back exactly, memory that does not grow with the checkpoint."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import _TYPES, save_file

from recipec.convert.checkpoint import CONVERTED_FROM_KEY, convert
from recipec.weights import formats, raw
from recipec.weights.formats import LateValue


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    assert size % 8 == 0
    return json.loads(raw[8:8 + size])


def _every_dtype() -> dict[str, torch.Tensor]:
    tensors = {f"{name.lower()}.weight": torch.arange(6).reshape(2, 3).to(dtype) for name, dtype in _TYPES.items()}
    tensors |= {"scalar": torch.tensor(2.5), "flag": torch.tensor(True), "empty": torch.zeros(0, 3),
                "half": torch.randn(5, dtype=torch.float16), "brain": torch.randn(7).bfloat16(),
                "int8": torch.tensor([-128, 0, 127], dtype=torch.int8), "mask": torch.tensor([True, False, True])}
    return tensors


def test_same_bytes_as_safetensors_save_file(tmp_path: Path) -> None:
    tensors = _every_dtype()
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    formats.save(tensors, tmp_path / "ours.safetensors")
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()


class NonContiguousModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
        self.register_buffer("transposed", base.t())  # (6, 4), strides (1, 6)
        self.register_buffer("strided", torch.arange(20.0)[::3])  # every third element of a storage
        self.register_buffer("channels_last", torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last))
        self.register_buffer("conjugated", torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64).conj())  # a lazy view


class SharedWeightsModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: stored once, recorded as an alias
        buffer = torch.arange(12.0)
        self.register_buffer("first", buffer[:6])  # two slices of one buffer: copied apart
        self.register_buffer("second", buffer[6:])


def test_round_trip_of_every_edge_case(tmp_path: Path) -> None:
    state = {**_every_dtype(), **NonContiguousModel().state_dict(), **SharedWeightsModel().state_dict()}
    meta = {"note": "kept \u00e9 \"quoted\"", "recipe": "a: 1\n"}
    formats.save(state, tmp_path / "m.safetensors", metadata=meta)
    header = _header(tmp_path / "m.safetensors")
    assert header["__metadata__"] == {**meta, "format": "pt", "head.weight": "embed.weight"}
    assert "head.weight" not in header  # stored once, under the owner's name
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(state) - {"head.weight"}
        for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
            assert f.get_tensor(key).dtype == state[key].dtype
            assert torch.equal(f.get_tensor(key), state[key]), key
    loaded = formats.load(tmp_path / "m.safetensors")
    assert set(loaded.state_dict) == set(state)
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in state.items())
    assert {k: loaded.metadata[k] for k in meta} == meta


def test_sharded_round_trip_streams_every_shard(tmp_path: Path) -> None:
    state = {f"layer{i}.weight": torch.full((64,), float(i)) for i in range(5)} | _every_dtype()
    written = formats.save(state, tmp_path / "m.safetensors.index.json", metadata={"k": "v"}, shard_size=600)
    assert len(written) > 3 and written[-1].name == "m.safetensors.index.json"
    loaded = formats.load(written[-1])
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in state.items())
    assert loaded.metadata["k"] == "v"


def test_late_value_is_written_into_the_header_at_the_end(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 3), "b": torch.zeros(3, dtype=torch.int64)}
    asked: list[str] = []

    def resolve() -> str:
        asked.append("now")
        return "f" * 64

    late = {"digest": LateValue(placeholder="0" * 64, resolve=resolve)}
    formats.save(state, tmp_path / "m.safetensors", metadata={"k": "v"}, late=late)
    assert asked == ["now"]
    assert _header(tmp_path / "m.safetensors")["__metadata__"]["digest"] == "f" * 64
    assert torch.equal(formats.load(tmp_path / "m.safetensors").state_dict["w"], state["w"])
    formats.save(state, tmp_path / "m.pt", late=late)  # a torch file asks first
    assert formats.load(tmp_path / "m.pt").metadata["digest"] == "f" * 64
    written = formats.save(state, tmp_path / "s.safetensors.index.json", late=late, shard_size=40)
    assert json.loads(written[-1].read_text())["metadata"]["digest"] == "f" * 64
    for shard in written[:-1]:
        assert _header(shard)["__metadata__"]["digest"] == "f" * 64
    bad = {"digest": LateValue(placeholder="0", resolve=lambda: "0" * 20)}
    with pytest.raises(AssertionError, match="changed the header's length"):
        formats.save(state, tmp_path / "bad.safetensors", late=bad)
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.parametrize("target", ["out.safetensors", "out.safetensors.index.json", "out.pt"])
def test_convert_records_the_sources_sha256(tmp_path: Path, target: str) -> None:
    source = tmp_path / "src.pt"
    torch.save({"state_dict": {f"t{i}": torch.randn(100) for i in range(4)}, "epoch": 3}, source)
    written = convert(source, tmp_path / target, shard_size="1KB" if "index" in target else None)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    for path in written:
        if path.name.endswith(".json"):
            recorded = json.loads(path.read_text())["metadata"][CONVERTED_FROM_KEY]
        else:
            recorded = formats.load(path).metadata[CONVERTED_FROM_KEY]
        assert json.loads(recorded) == {"file": "src.pt", "sha256": expected, "format": "torch"}


def test_sha256_stops_when_asked(tmp_path: Path) -> None:
    import threading

    (tmp_path / "f.bin").write_bytes(b"x" * (3 << 20))
    stop = threading.Event()
    stop.set()
    assert raw.sha256(tmp_path / "f.bin", stop=stop) == ""
    assert raw.sha256(tmp_path / "f.bin") == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_conversion_memory_does_not_grow_with_the_checkpoint(tmp_path: Path) -> None:
    """A 64 MiB checkpoint to safetensors (single and sharded): the peak anonymous memory above the
    process's own after imports stays far below the checkpoint (the tensors stream from the mapped file)."""
    source = tmp_path / "big.pt"
    torch.save({f"layer{i}.weight": torch.rand(1024, 1024) for i in range(16)}, source)
    script = textwrap.dedent("""
        import sys, threading, time
        from recipec.convert.checkpoint import convert

        def anon():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

        base, peak, done = anon(), [0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], anon())
                time.sleep(0.001)
        thread = threading.Thread(target=sample)
        thread.start()
        convert(sys.argv[1], sys.argv[2])
        convert(sys.argv[1], sys.argv[3], shard_size="16MB")
        done.set()
        thread.join()
        print((peak[0] - base) >> 20, "torchvision" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(source), str(tmp_path / "one.safetensors"),
                          str(tmp_path / "s.safetensors.index.json")],
                         check=True, capture_output=True, text=True, timeout=120).stdout.split()
    extra_mib, imported_torchvision = int(out[0]), out[1] == "True"
    assert extra_mib < 24, f"{extra_mib} MiB of anonymous memory for a 64 MiB conversion"
    assert not imported_torchvision  # no architecture is built: ~90 MiB of imports spared
    assert torch.equal(formats.load(tmp_path / "one.safetensors").state_dict["layer7.weight"],
                       torch.load(source, weights_only=True)["layer7.weight"])
