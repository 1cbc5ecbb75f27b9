"""recipec inspect and convert on every layout (issue 20.3): a sharded .bin folder, a DCP directory, a
Lightning .ckpt, a timm .pth.tar and an ONNX file each convert to safetensors with the tensors they hold;
--state-dict-key, --rename, --strip-prefix and a --recipe's own source: section choose and rename them."""

from __future__ import annotations

import argparse
import fractions
import json
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from recipec.cli import main
from recipec.compiler.compile import compile_recipe
from recipec.errors import TransferError
from recipec.recipe.load import load_recipe
from recipec.weights import formats
from tests.tinynets import tiny_cnn

RECIPE = """\
    name: tiny-layouts
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
    data: {dataset: digits, image_size: 8, per_class: 10, batch_size: 64}
    train: {epochs: 1}
"""


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(tiny_cnn(num_classes=10, width=4).state_dict())


def _optimizer_state(weights: dict[str, torch.Tensor]) -> dict:
    """One moment per floating tensor, as an optimizer keeps for parameters (buffers included: the size is the point)."""
    floats = [t for t in weights.values() if t.is_floating_point()]
    return {"state": {i: {"exp_avg": torch.randn_like(t)} for i, t in enumerate(floats)},
            "param_groups": [{"lr": 0.1, "params": list(range(len(floats)))}]}


def _bin_folder(weights: dict[str, torch.Tensor], at: Path) -> Path:
    from huggingface_hub import save_torch_state_dict

    (at / "hf").mkdir()
    save_torch_state_dict(weights, at / "hf", safe_serialization=False, max_shard_size="1KB")
    return at / "hf"


def _dcp(weights: dict[str, torch.Tensor], at: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": weights, "optimizer": _optimizer_state(weights), "step": 7}, checkpoint_id=at / "dcp")
    return at / "dcp"


def _lightning(weights: dict[str, torch.Tensor], at: Path) -> Path:
    torch.save({"state_dict": {"model." + k: v for k, v in weights.items()}, "epoch": 3, "global_step": 30,
                "pytorch-lightning_version": "2.6.0", "optimizer_states": [_optimizer_state(weights)],
                "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}}, at / "last.ckpt")
    return at / "last.ckpt"


def _timm(weights: dict[str, torch.Tensor], at: Path) -> Path:
    """timm CheckpointSaver's layout, by hand; its EMA weights are the file's default."""
    torch.save({"epoch": 3, "arch": "tiny_cnn", "state_dict": {k: v + 1 for k, v in weights.items()},
                "optimizer": _optimizer_state(weights), "version": 2,
                "args": argparse.Namespace(model="tiny_cnn", lr=0.1), "state_dict_ema": weights}, at / "last.pth.tar")
    return at / "last.pth.tar"


def _onnx(weights: dict[str, torch.Tensor], at: Path) -> Path:
    floats = {k: v for k, v in weights.items() if v.is_floating_point()}
    nodes = [helper.make_node("ReduceSum", [k], [k + ".sum"], keepdims=0) for k in floats]
    nodes.append(helper.make_node("Sum", [k + ".sum" for k in floats], ["out"]))
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [])],
                              initializer=[numpy_helper.from_array(v.numpy(), k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(at / "m.onnx"))
    return at / "m.onnx"


LAYOUTS: dict[str, tuple[Callable[[dict[str, torch.Tensor], Path], Path], str, list[str]]] = {
    # name: (writer, the format inspect names, convert's extra flags)
    "bin-index": (_bin_folder, "torch-sharded", []),
    "dcp": (_dcp, "dcp", []),
    "lightning": (_lightning, "torch", ["--strip-prefix", "model."]),
    "timm": (_timm, "torch", []),
    "onnx": (_onnx, "onnx", []),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_inspects_and_converts_to_its_tensors(layout: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    write, fmt, flags = LAYOUTS[layout]
    weights = _weights()
    src = write(weights, tmp_path)
    code, out, err = run(capsys, "inspect", src, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["format"] == fmt
    if layout in ("dcp", "lightning", "timm"):  # training checkpoints: the optimizer state is listed and sized
        floats = [t for t in weights.values() if t.is_floating_point()]
        moments = {"tensors": len(floats), "bytes": sum(t.numel() * t.element_size() for t in floats)}
        (optimizer,) = [b for b in report["beside"] if b["optimizer"]]
        assert moments.items() <= optimizer.items()
    code, out, err = run(capsys, "convert", src, tmp_path / "out.safetensors", *flags)
    assert code == 0 and out == f"wrote {tmp_path / 'out.safetensors'}\n"
    assert ("EMA weights at 'state_dict_ema'" in err) == (layout == "timm")
    converted = formats.load(tmp_path / "out.safetensors").state_dict
    assert converted.keys() == weights.keys()
    assert all(converted[k].dtype == v.dtype and torch.equal(converted[k], v) for k, v in weights.items())


def test_state_dict_key_and_renames_choose_and_name_the_tensors(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    weights = _weights()
    src = _timm(weights, tmp_path)
    code, _, err = run(capsys, "convert", src, tmp_path / "a.safetensors", "--state-dict-key", "state_dict",
                       "--rename", r"^(\d)\.", r"features.\1.", "--rename", r"^features\.8\.", "head.")
    assert (code, err) == (0, "")
    converted = formats.load(tmp_path / "a.safetensors").state_dict
    assert torch.equal(converted["features.0.weight"], weights["0.weight"] + 1)
    assert torch.equal(converted["head.bias"], weights["8.bias"] + 1) and "features.8.bias" not in converted
    code, _, err = run(capsys, "convert", src, tmp_path / "b.safetensors", "--state-dict-key", "ema")
    assert code == 2 and err.startswith(f"error: {src}: state_dict_key 'ema': no such key; top-level keys: 'epoch'")
    code, _, err = run(capsys, "convert", src, tmp_path / "b.safetensors", "--strip-prefix", "model.")
    assert code == 2 and "error: --strip-prefix 'model.': pattern '^model\\.' matched no source key" in err
    code, _, err = run(capsys, "convert", src, tmp_path / "b.safetensors", "--rename", "(", "x")
    assert code == 2 and "error: --rename '(' 'x': '(' is not a valid regular expression" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "last.pth.tar"]


def test_the_command_line_names_its_flag_not_the_recipe_key(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"state_dict": _weights(), "ratio": fractions.Fraction(1, 3)}, tmp_path / "c.pt")
    for command in (["inspect", tmp_path / "c.pt"], ["convert", tmp_path / "c.pt", tmp_path / "c.safetensors"]):
        code, _, err = run(capsys, *command)
        assert code == 2 and "refused to unpickle fractions.Fraction" in err
        assert "pass --allow-global fractions.Fraction" in err and "source.allow_globals" not in err
        assert len(err.splitlines()) == 1
    code, _, err = run(capsys, "convert", tmp_path / "c.pt", tmp_path / "c.safetensors", "--allow-global",
                       "fractions.Fraction")
    assert (code, err) == (0, "")


def test_recipe_source_section_maps_its_own_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = _weights()
    ckpt = _lightning(weights, tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(RECIPE) + "source: {checkpoint: last.ckpt, rename: [['^model\\.', '']]}\n")
    code, _, err = run(capsys, "convert", ckpt, tmp_path / "a.safetensors", "--recipe", recipe)
    assert (code, err) == (0, "")
    converted = formats.load(tmp_path / "a.safetensors").state_dict
    assert converted.keys() == weights.keys() and all(torch.equal(converted[k], v) for k, v in weights.items())
    # Another file is not what the recipe's source: section describes: the error says the rename that fits.
    (tmp_path / "other.ckpt").write_bytes(ckpt.read_bytes())
    code, _, err = run(capsys, "convert", tmp_path / "other.ckpt", tmp_path / "b.safetensors", "--recipe", recipe)
    assert code == 2 and "lacks '0.weight', which tests.tinynets:tiny_cnn has" in err
    assert err.rstrip().endswith("the source's keys are tests.tinynets:tiny_cnn's with 'model.' in front: "
                                 "pass --strip-prefix model.")
    # The recipe's own rules are located in it.
    recipe.write_text(textwrap.dedent(RECIPE) + "source: {checkpoint: last.ckpt, rename: [['^module\\.', '']]}\n")
    code, _, err = run(capsys, "convert", ckpt, tmp_path / "b.safetensors", "--recipe", recipe)
    assert code == 2 and f"error: {recipe}:6:" in err and "source.rename.0: pattern '^module\\.' matched no" in err
    assert not (tmp_path / "b.safetensors").exists()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_is_a_recipe_source(layout: str, tmp_path: Path) -> None:
    write, _, flags = LAYOUTS[layout]
    weights = _weights()
    src = write(weights, tmp_path)
    rename = "rename: [['^model\\.', '']]" if flags else ""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(RECIPE) + f"source: {{checkpoint: {src.name}, {rename}}}\n")
    model = compile_recipe(load_recipe(recipe)).model
    assert all(torch.equal(t, weights[k]) for k, t in model.state_dict().items())
    if flags:  # without the rename: the error says the one that fixes it
        recipe.write_text(textwrap.dedent(RECIPE) + f"source: {{checkpoint: {src.name}}}\n")
        with pytest.raises(TransferError, match=r"source\.require_all: 10 model tensors get no weights .* the source's "
                                                r"keys are the model's with 'model\.' in front: add source\.rename: "
                                                r'\[\["\^model\\\\\.", ""\]\]'):
            compile_recipe(load_recipe(recipe))
