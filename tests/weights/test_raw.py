"""``recipec convert`` to safetensors without torch (``recipec.weights.raw``): the same bytes as the
route through torch, for every source it takes; the sources it declines still converted, through torch;
and no torch imported where the bytes can be copied."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from recipec.convert.checkpoint import convert
from recipec.errors import CheckpointError
from recipec.weights import formats, raw


class SharedWeightsModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10)
        self.head.weight = self.embed.weight  # tied: one tensor, stored once, the other name an alias
        self.bn = torch.nn.BatchNorm1d(4)  # an int64 num_batches_tracked
        buffer = torch.arange(12.0)
        self.register_buffer("first", buffer[:6])  # two slices of one storage: copied apart
        self.register_buffer("second", buffer[6:])


def _every_dtype() -> dict[str, torch.Tensor]:
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
              torch.int8, torch.uint8, torch.bool]
    tensors = {f"t.{str(d).removeprefix('torch.')}": torch.arange(12).reshape(3, 4).to(d) for d in dtypes}
    return tensors | {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "also_empty": torch.zeros(0, 3),
                      "param": torch.nn.Parameter(torch.randn(2, 2)), "row": torch.randn(1, 5)}


def _special_floats() -> torch.Tensor:
    """Values where a cast rounds: ties, subnormals of every width, the largest finite numbers, infinities."""
    ties = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, 1 + 3 * 2**-8, 65504.0, 65520.0, 3.4e38, -3.4e38])
    tiny = torch.tensor([2**-24, 2**-25, 3 * 2**-26, 2**-133, 2**-149, 1e-40, -1e-45, 0.0, -0.0])
    return torch.cat([ties, tiny, torch.tensor([float("inf"), -float("inf")]), torch.randn(1000) * 100])


def _parts(file: Path) -> tuple[object, bytes]:
    """A safetensors file's header as data, and its tensor data (or an index as data): what must be equal.
    (safetensors reads and writes metadata in an order that changes from process to process.)"""
    data = file.read_bytes()
    if file.name.endswith(".json"):
        return json.loads(data), b""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]), data[8 + size:]


def _torch_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raw, "load", lambda path: None)


def _both_routes(monkeypatch: pytest.MonkeyPatch, src: Path, out: Path, **options: object) -> tuple[list[Path], list[Path]]:
    fast = convert(src, out / "fast" / "m.safetensors", **options)  # type: ignore[arg-type]
    with monkeypatch.context() as patched:
        _torch_route(patched)
        slow = convert(src, out / "slow" / "m.safetensors", **options)  # type: ignore[arg-type]
    return fast, slow


@pytest.mark.parametrize("options", [{}, {"dtype": "float16"}, {"dtype": "bfloat16"}, {"dtype": "float32"},
                                     {"shard_size": "200B"}, {"dtype": "bfloat16", "shard_size": "300B"}],
                         ids=["copy", "float16", "bfloat16", "float32", "shards", "bfloat16-shards"])
@pytest.mark.parametrize("source", ["torch", "safetensors", "sharded"])
def test_the_same_bytes_as_through_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str,
                                         options: dict[str, str]) -> None:
    state = {**_every_dtype(), **SharedWeightsModel().state_dict(keep_vars=True),
             "special.f32": _special_floats(), "special.f64": _special_floats().double(),
             "special.f16": _special_floats().half(), "special.bf16": _special_floats().bfloat16()}
    if source == "torch":
        src = tmp_path / "src.pt"
        torch.save({"state_dict": OrderedDict(state), "epoch": 3, "config": {"lr": 0.1, "layers": [1, 2]},
                    "note": "é", "big": 2**70, "flags": (True, None)}, src)
    else:
        src = tmp_path / ("src.safetensors" if source == "safetensors" else "src.safetensors.index.json")
        formats.save({k: v.detach() for k, v in state.items()}, src, metadata={"note": "kept"},
                     shard_size=None if source == "safetensors" else 500)
    assert raw.load(src) is not None  # the fast route takes it
    fast, slow = _both_routes(monkeypatch, src, tmp_path, **options)
    assert [p.name for p in fast] == [p.name for p in slow] and len(fast) > (1 if "shard_size" in options else 0)
    for a, b in zip(fast, slow):  # the same bytes, but for the order of the header's metadata
        assert _parts(a) == _parts(b), a.name
    loaded = formats.load(fast[-1]).state_dict
    for name, tensor in state.items():
        expected = tensor.detach()
        if options.get("dtype") and expected.is_floating_point():
            expected = expected.to(getattr(torch, options["dtype"]))
        assert loaded[name].dtype == expected.dtype and torch.equal(loaded[name], expected), name


def test_the_source_hash_and_metadata_travel(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    torch.save({"model": {"w": torch.ones(3)}, "epoch": 7, "cfg": {"depth": 2}}, src)
    [out] = convert(src, tmp_path / "out.safetensors")
    meta = formats.read_metadata(out)
    assert json.loads(meta["recipec.converted_from"]) == {"file": "src.pt", "format": "torch",
                                                          "sha256": raw.sha256(src)}
    assert meta["epoch"] == "7" and json.loads(meta["cfg"]) == {"depth": 2}


def _legacy(path: Path) -> None:
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)


def _with_a_global(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.ones(2)}, "seen": {1, 2}}, path)  # builtins.set


def _transposed(path: Path) -> None:
    torch.save({"w": torch.arange(6.0).reshape(2, 3).t()}, path)


def _float8(path: Path) -> None:
    formats.save({"w": torch.ones(4).to(torch.float8_e4m3fn), "b": torch.ones(2)}, path.with_suffix(".safetensors"))
    path.with_suffix(".safetensors").rename(path)


@pytest.mark.parametrize("make", [_legacy, _with_a_global, _transposed, _float8])
def test_what_the_fast_route_declines_goes_through_torch(tmp_path: Path, make: object) -> None:
    src = tmp_path / "src.pt"
    make(src)  # type: ignore[operator]
    [out] = convert(src, tmp_path / "out.safetensors", dtype="bfloat16")
    expected = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                for k, v in formats.load(src).state_dict.items()}
    loaded = formats.load_state_dict(out)
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_a_file_torch_refuses_is_refused_in_torchs_words(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    torch.save({"w": torch.ones(2)}, src, pickle_protocol=4)  # FRAME: an opcode torch's safe loader lacks
    assert raw.load(src) is None
    with pytest.raises(CheckpointError, match="re-save without pickle_protocol"):
        convert(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_the_restricted_unpickler_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    """A pickle naming anything but tensors and plain data is declined; nothing in it runs."""
    src = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2)}, src)
    import zipfile

    with zipfile.ZipFile(src) as archive:
        records = {n: archive.read(n) for n in archive.namelist()}
    ran = tmp_path / "ran"
    name = next(n for n in records if n.endswith("data.pkl"))

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (Path.touch, (ran,))

    records[name] = pickle.dumps({"w": Evil()}, protocol=2)
    with zipfile.ZipFile(src, "w") as archive:
        for n, data in records.items():
            archive.writestr(n, data)
    assert raw.load(src) is None and not ran.exists()


def test_casts_match_torch_bit_for_bit(tmp_path: Path) -> None:
    values = _special_floats()
    nan = torch.tensor([float("nan"), -float("nan")])
    for stored in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        src = tmp_path / f"{stored}.safetensors"
        formats.save({"x": torch.cat([values, nan]).to(stored)}, src)
        for dtype in ("float16", "bfloat16", "float32"):
            [out] = convert(src, tmp_path / f"{stored}-{dtype}.safetensors", dtype=dtype)
            got = formats.load_state_dict(out)["x"]
            want = torch.cat([values, nan]).to(stored).to(getattr(torch, dtype))
            assert got.dtype == want.dtype
            assert torch.equal(got[:-2], want[:-2]), (stored, dtype)
            # NaNs stay NaNs (torch's own casts disagree on their sign and payload bits)
            assert got[-2:].isnan().all()


def test_no_torch_where_the_bytes_are_copied(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.randn(64, 64), "n": torch.tensor(3)}, "epoch": 1}, tmp_path / "src.pt")
    formats.save({"w": torch.randn(64, 64), "b": torch.randn(64)}, tmp_path / "src.safetensors")
    script = textwrap.dedent("""
        import sys
        from recipec.cli import main
        for args in (["src.pt", "a.safetensors"], ["src.safetensors", "b.safetensors", "--dtype", "bfloat16"],
                     ["src.safetensors", "c.safetensors.index.json", "--shard-size", "1KB"]):
            try:
                main(["convert", *args])
            except SystemExit as exc:
                assert not exc.code, exc.code
        print(sorted(m for m in ("torch", "torchvision", "safetensors.torch") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert out.splitlines()[-1] == "[]", out
    assert torch.equal(formats.load_state_dict(tmp_path / "b.safetensors")["w"],
                       formats.load_state_dict(tmp_path / "src.safetensors")["w"].bfloat16())
    assert (tmp_path / "c.safetensors.index.json").exists()


def test_a_bad_safetensors_header_is_worded_by_safetensors(tmp_path: Path) -> None:
    src = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}).encode()
    src.write_bytes(len(header).to_bytes(8, "little") + header + bytes(12))
    assert raw.load(src) is None  # 12 bytes for 4 float32: declined, and formats.load says why
    with pytest.raises(Exception, match="not a valid safetensors file"):
        convert(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()



def test_without_a_kernel_copy_the_bytes_go_through_a_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another file system (EXDEV), an old kernel, macOS: the same file, copied through memory."""
    import errno
    import os

    src = tmp_path / "src.pt"
    torch.save({"w": torch.randn(300, 100), "b": torch.arange(7)}, src)
    [kernel] = convert(src, tmp_path / "kernel.safetensors")

    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    [buffered] = convert(src, tmp_path / "buffered.safetensors")
    assert buffered.read_bytes() == kernel.read_bytes()
