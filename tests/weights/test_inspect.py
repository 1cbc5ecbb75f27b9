from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from recipec.errors import CheckpointError, UnsafeCheckpointError
from recipec.weights import inspect as inspect_module
from recipec.weights.formats import save
from recipec.weights.inspect import format_inspect, inspect_checkpoint


def tied_state_dict() -> dict[str, torch.Tensor]:
    emb = torch.randn(10, 4)
    return {
        "emb.weight": emb,
        "conv.weight": torch.randn(8, 4, 3, 3, dtype=torch.float16),  # 288 elements, 576 bytes
        "bn.num_batches_tracked": torch.tensor(5),
        "head.weight": emb,
        "head.bias": torch.zeros(10, dtype=torch.bfloat16),
    }


EXPECTED_KEYS = {
    "emb.weight": ([10, 4], "float32"),
    "conv.weight": ([8, 4, 3, 3], "float16"),
    "bn.num_batches_tracked": ([], "int64"),
    "head.weight": ([10, 4], "float32"),
    "head.bias": ([10], "bfloat16"),
}


@pytest.fixture
def header_only(monkeypatch):
    """Fail the test if tensor data is read from a safetensors file."""
    real = inspect_module.safetensors_reader

    class NoData:
        def __init__(self, reader) -> None:
            self._reader = reader

        def get_tensor(self, name):
            raise AssertionError(f"read tensor data of {name}")

        def __getattr__(self, name):
            return getattr(self._reader, name)

    @contextlib.contextmanager
    def reader(path):
        with real(path) as handle:
            yield NoData(handle)

    monkeypatch.setattr(inspect_module, "safetensors_reader", reader)
    monkeypatch.setattr(inspect_module, "load", lambda *a, **k: pytest.fail("safetensors must not be loaded"))


@pytest.mark.parametrize(("name", "shard_size"), [("m.safetensors", None), ("model.safetensors", 100), ("m.pt", None)])
def test_report_is_complete_and_json(tmp_path: Path, name: str, shard_size, request) -> None:
    if name.endswith(".safetensors"):
        request.getfixturevalue("header_only")
    files = save(tied_state_dict(), tmp_path / name, metadata={"recipe": '{"a": 1}'}, shard_size=shard_size)
    target = files[-1]
    report = inspect_checkpoint(target)
    assert json.loads(json.dumps(report)) == report
    assert report["path"] == str(target)
    assert report["files"] == [str(target), *(str(f) for f in files[:-1])] if shard_size else [str(target)]
    assert report["tensors"] == 5
    assert report["parameters"] == 40 + 288 + 1 + 40 + 10
    assert report["total_bytes"] == 160 + 576 + 8 + 160 + 20
    assert report["dtypes"] == {"float32": 2, "float16": 1, "int64": 1, "bfloat16": 1}
    assert {k["key"]: (k["shape"], k["dtype"]) for k in report["keys"]} == EXPECTED_KEYS
    assert [e["key"] for e in report["largest"]][:1] == ["conv.weight"]
    assert report["largest"][0] == {"key": "conv.weight", "shape": [8, 4, 3, 3], "dtype": "float16", "bytes": 576}
    assert [e["bytes"] for e in report["largest"]] == sorted((e["bytes"] for e in report["largest"]), reverse=True)
    if name.endswith(".safetensors"):
        assert report["format"] == ("safetensors-sharded" if shard_size else "safetensors")
        assert report["state_dict_key"] == ""
        assert report["metadata"]["head.weight"] == "emb.weight"
        assert {"key": "head.weight", "shape": [10, 4], "dtype": "float32", "alias_of": "emb.weight"} in report["keys"]
    else:
        assert (report["format"], report["state_dict_key"]) == ("torch", "state_dict")
        assert report["metadata"] == {"recipe": '{"a": 1}'}


def test_torch_metadata_and_largest_is_capped(tmp_path: Path) -> None:
    sd = {f"layer{i}.weight": torch.zeros(i + 1) for i in range(15)}
    torch.save({"model": sd, "epoch": 7, "config": {"depth": (1, 2)}}, tmp_path / "c.pth")
    report = inspect_checkpoint(tmp_path / "c.pth")
    assert report["metadata"] == {"epoch": 7, "config": {"depth": [1, 2]}}
    assert [e["key"] for e in report["largest"]] == [f"layer{i}.weight" for i in range(14, 4, -1)]
    assert len(report["keys"]) == 15


def test_unsafe_and_corrupt_files_raise(tmp_path: Path) -> None:
    import fractions

    torch.save({"state_dict": {"w": torch.ones(1)}, "ratio": fractions.Fraction(1, 3)}, tmp_path / "c.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"fractions\.Fraction"):
        inspect_checkpoint(tmp_path / "c.pt")
    assert inspect_checkpoint(tmp_path / "c.pt", allow_globals=["fractions.Fraction"])["tensors"] == 1
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        inspect_checkpoint(tmp_path / "bad.safetensors")


def test_format_inspect_is_compact_text(tmp_path: Path) -> None:
    save(tied_state_dict(), tmp_path / "m.safetensors", metadata={"note": "line one\nline two", "long": "x" * 200})
    text = format_inspect(inspect_checkpoint(tmp_path / "m.safetensors"))
    lines = text.splitlines()
    assert lines[0] == f"{tmp_path / 'm.safetensors'}  (safetensors)"
    assert "tensors:    5" in lines
    assert "parameters: 379 (379)" in lines
    assert "dtypes:     float32 x2, bfloat16 x1, float16 x1, int64 x1" in lines
    assert any(line.split() == ["conv.weight", "8x4x3x3", "float16", "576", "B"] for line in lines)
    assert any(line.split() == ["bn.num_batches_tracked", "scalar", "int64", "8", "B"] for line in lines)
    assert "  note: line one line two" in lines
    assert f"  long: {'x' * 77}..." in lines
    assert max(len(line) for line in lines) <= 100


def test_recipec_metadata_is_said_shown_above_only_when_it_is(tmp_path: Path) -> None:
    from recipec.provenance import export_metadata

    recipe = "name: tiny\nmodel: {arch: resnet18}\n"
    meta = export_metadata(recipe_yaml=recipe, provenance={"name": "tiny", "base_model": {"arch": "resnet18"}})
    save({"w": torch.ones(2)}, tmp_path / "export.safetensors", metadata=meta)
    lines = format_inspect(inspect_checkpoint(tmp_path / "export.safetensors")).splitlines()
    assert "recipec export:" in lines and "  name:          tiny" in lines
    assert "  recipec.recipe, recipec.provenance: shown above (--json prints them whole)" in lines
    # a recipe alone (what `recipec features` writes): no empty heading, no "shown above"
    save({"w": torch.ones(2)}, tmp_path / "feats.safetensors", metadata={"recipec.recipe": recipe})
    lines = format_inspect(inspect_checkpoint(tmp_path / "feats.safetensors")).splitlines()
    assert "recipec export:" not in lines and not any("shown above" in line for line in lines)
    assert "metadata:" in lines and lines[-1] == "  recipec.recipe: the model's recipe, 2 lines (--json prints it whole)"
