"""Every layout people hand recipec: a sharded .bin index, a DCP directory, a Lightning .ckpt, a timm
.pth.tar (args and all) and an ONNX file, each read with the tensors it was written with, and safely."""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import pickle
import warnings
from pathlib import Path

import onnx
import pytest
import torch
import torch.distributed.checkpoint as dcp
from onnx import helper, numpy_helper
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

from recipec.errors import CheckpointError, TransferError, UnsafeCheckpointError
from recipec.weights import formats
from recipec.weights._pickle import PlainNamespace
from recipec.weights.inspect import format_inspect, inspect_checkpoint
from recipec.weights.raw import detect_format
from recipec.weights.transfer import apply_transfer
from tests.tinynets import tiny_cnn


class TouchOnUnpickle:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.marker,))


class SystemOnUnpickle:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (self.command,))


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=3, width=4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    return model, optimizer


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _dcp_save(state: dict, directory: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized, assuming a single process"
        dcp.save(state, checkpoint_id=directory)


def test_a_sharded_bin_index_reads_every_shard(tmp_path: Path) -> None:
    from huggingface_hub import save_torch_state_dict

    model, _ = _trained()
    state = model.state_dict()
    save_torch_state_dict(state, tmp_path, safe_serialization=False, max_shard_size="1KB")
    index = tmp_path / "pytorch_model.bin.index.json"
    assert detect_format(index) == detect_format(tmp_path) == "torch-sharded"
    loaded = formats.load(tmp_path)
    assert loaded.format == "torch-sharded" and len(loaded.files) > 2 and loaded.files[0] == index
    assert _equal(loaded.state_dict, dict(state))
    (tmp_path / loaded.files[-1].name).unlink()
    with pytest.raises(CheckpointError, match=r"shard 'pytorch_model-.*\.bin' does not exist"):
        formats.load(index)


def test_a_dcp_directory_reads_the_model_and_nests_as_saved(tmp_path: Path) -> None:
    model, optimizer = _trained()
    _dcp_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, tmp_path / "ck")
    assert detect_format(tmp_path / "ck") == "dcp"
    loaded = formats.load(tmp_path / "ck")
    assert (loaded.format, loaded.key, loaded.metadata) == ("dcp", "model", {"epoch": 3})
    assert _equal(loaded.state_dict, dict(model.state_dict()))
    assert [f.name for f in loaded.files] == [".metadata", "__0_0.distcp"]
    exp_avg = formats.load(tmp_path / "ck" / ".metadata", state_dict_key="optimizer.state.0").state_dict["exp_avg"]
    assert torch.equal(exp_avg, optimizer.state_dict()["state"][0]["exp_avg"])
    report = inspect_checkpoint(tmp_path / "ck")
    optimizer_bytes = sum(t.numel() * t.element_size() for s in optimizer.state_dict()["state"].values()
                          for t in s.values())
    assert report["beside"] == [{"key": "optimizer", "tensors": 3 * 8, "bytes": optimizer_bytes, "optimizer": True}]


def test_a_tensor_in_chunks_is_put_together_by_offsets(tmp_path: Path) -> None:
    """FSDP saves each rank's shard of a tensor as a chunk; one process can only write the metadata by hand."""
    whole = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    _dcp_save({"w": whole, "b": torch.ones(2)}, tmp_path)
    with open(tmp_path / ".metadata", "rb") as f:
        meta = pickle.load(f)  # the test's own file: plain pickle is fine here
    stream = io.BytesIO()
    chunks, storage = [], {}
    for start, rows in ((0, 4), (4, 2)):
        offset = stream.tell()
        torch.save(whole[start:start + rows].clone(), stream)
        chunks.append(ChunkStorageMetadata(offsets=torch.Size([start, 0]), sizes=torch.Size([rows, 4])))
        storage[MetadataIndex("w", [start, 0])] = _StorageInfo("__1_0.distcp", offset, stream.tell() - offset)
    (tmp_path / "__1_0.distcp").write_bytes(stream.getvalue())
    meta.state_dict_metadata["w"].chunks = chunks
    meta.storage_data = {k: v for k, v in meta.storage_data.items() if k.fqn != "w"} | storage
    with open(tmp_path / ".metadata", "wb") as f:
        pickle.dump(meta, f)
    loaded = formats.load(tmp_path)
    assert torch.equal(loaded.state_dict["w"], whole) and torch.equal(loaded.state_dict["b"], torch.ones(2))
    meta.state_dict_metadata["w"].chunks = chunks[:1]  # rows 4 and 5 are in no chunk
    with open(tmp_path / ".metadata", "wb") as f:
        pickle.dump(meta, f)
    with pytest.raises(CheckpointError, match=r"the chunks of 'w' do not make up its \[6, 4\]"):
        formats.load(tmp_path)


def test_dcp_metadata_naming_anything_else_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": TouchOnUnpickle(marker)}))
    with pytest.raises(UnsafeCheckpointError, match=r"refused to unpickle pathlib\.Path\.touch: .* nothing in the "
                                                    r"file was executed") as info:
        formats.load(tmp_path)
    assert info.value.refused == ["pathlib.Path.touch"]
    (tmp_path / ".metadata").write_bytes(pickle.dumps(SystemOnUnpickle(f"touch {marker}")))
    with pytest.raises(UnsafeCheckpointError, match=r"refused to unpickle posix\.system"):
        inspect_checkpoint(tmp_path)
    assert not marker.exists()
    pickle.loads((tmp_path / ".metadata").read_bytes())  # the payload is real
    assert marker.exists()
    (tmp_path / ".metadata").write_bytes(b"\x80\x04\x95")
    with pytest.raises(CheckpointError, match="damaged DCP metadata"):
        formats.load(tmp_path)


def test_a_dcp_value_that_is_not_plain_data_is_left_out_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _dcp_save({"model": {"w": torch.ones(3)}, "epoch": 2, "trap": TouchOnUnpickle(marker)}, tmp_path / "ck")
    loaded = formats.load(tmp_path / "ck")
    assert loaded.metadata == {"epoch": 2} and not marker.exists()
    (tmp_path / "ck" / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp: ends before the bytes of"):
        formats.load(tmp_path / "ck")


def test_lightning_ckpt_lists_its_optimizer_state(tmp_path: Path) -> None:
    model, optimizer = _trained()
    state = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 4, "global_step": 40, "pytorch-lightning_version": "2.6.0",
                "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [], "hyper_parameters": {"lr": 1e-3}},
               tmp_path / "last.ckpt")
    loaded = formats.load(tmp_path / "last.ckpt")
    assert loaded.key == "state_dict" and _equal(loaded.state_dict, state)
    assert loaded.metadata["hyper_parameters"] == {"lr": 1e-3}
    report = inspect_checkpoint(tmp_path / "last.ckpt")
    (beside,) = report["beside"]
    assert (beside["key"], beside["tensors"], beside["optimizer"]) == ("optimizer_states", 24, True)
    text = format_inspect(report)
    assert "beside:     'optimizer_states' (optimizer state): 24 tensors" in text
    assert f"(the state dict; {_kib(report['total_bytes'] + beside['bytes'])} of tensors in all)" in text
    # Every source key is "model." + a model key: the error says the one rename that fixes it.
    with pytest.raises(TransferError, match=r'with \'model\.\' in front: add source\.rename: \[\["\^model\\\\\.", ""\]\]'):
        apply_transfer(tiny_cnn(num_classes=3, width=4), loaded.state_dict)


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


def test_timm_checkpoint_args_read_as_plain_data(tmp_path: Path) -> None:
    import timm.utils

    model, optimizer = _trained()
    args = argparse.Namespace(model="tiny_cnn", lr=0.1, sched=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saver = timm.utils.CheckpointSaver(model, optimizer, args=args, model_ema=model, checkpoint_dir=str(tmp_path),
                                           recovery_dir=str(tmp_path), max_history=1)
        saver.save_checkpoint(0, metric=0.5)
    loaded = formats.load(tmp_path / "last.pth.tar")
    assert loaded.key == "state_dict_ema" and _equal(loaded.state_dict, dict(model.state_dict()))
    assert type(loaded.metadata["args"]) is PlainNamespace and loaded.metadata["args"] == vars(args)
    assert (loaded.metadata["arch"], loaded.metadata["version"], loaded.metadata["metric"]) == ("tiny_cnn", 2, 0.5)
    assert [b["key"] for b in loaded.beside] == ["optimizer", "state_dict"]
    assert formats.load(tmp_path / "last.pth.tar", state_dict_key="state_dict").key == "state_dict"


def test_a_namespace_holding_code_is_still_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": argparse.Namespace(trap=TouchOnUnpickle(marker))},
               tmp_path / "c.pth.tar")
    with pytest.raises(UnsafeCheckpointError, match=r"refused to unpickle .*pathlib\.Path.* nothing in the file was"):
        formats.load(tmp_path / "c.pth.tar")
    assert not marker.exists()


def _onnx_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A graph that adds its initializers' sums: what matters here is the initializers."""
    inits = [numpy_helper.from_array(t.numpy(), name) for name, t in tensors.items()]
    nodes = [helper.make_node("ReduceSum", [name], [f"{name}.sum"], keepdims=0) for name in tensors]
    nodes.append(helper.make_node("Sum", [f"{name}.sum" for name in tensors] or ["none"], ["out"]))
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [])],
                              initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(proto, {"note": "from a test"})
    onnx.save(proto, str(path))


def test_onnx_initializers_are_a_state_dict(tmp_path: Path) -> None:
    tensors = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.randn(2), "scale": torch.tensor(2.5)}
    _onnx_file(tmp_path / "m.onnx", tensors)
    assert detect_format(tmp_path / "m.onnx") == "onnx"
    loaded = formats.load(tmp_path / "m.onnx")
    assert (loaded.format, loaded.key, loaded.metadata) == ("onnx", "", {"note": "from a test"})
    assert _equal(loaded.state_dict, tensors)
    with pytest.raises(CheckpointError, match=r"state_dict_key 'model' does not apply: an ONNX graph holds one"):
        formats.load(tmp_path / "m.onnx", state_dict_key="model")
    _onnx_file(tmp_path / "empty.onnx", {})
    with pytest.raises(CheckpointError, match=r"empty\.onnx: the ONNX graph has no initializers"):
        formats.load(tmp_path / "empty.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not protobuf at all")
    with pytest.raises(CheckpointError, match=r"bad\.onnx: not an ONNX file"):
        formats.load(tmp_path / "bad.onnx")
