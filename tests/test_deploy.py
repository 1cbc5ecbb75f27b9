"""Deploying: the pt2 export, int8 ONNX, every artifact evaluated, export.max_accuracy_drop, convert --quantize.

One digits run (a tiny CNN that learns to ~0.85 in four epochs) exports safetensors, ONNX, int8 ONNX
(static, calibrated) and pt2; the other tests read it or a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

import recipec
from recipec.convert.pt2 import export_pt2
from recipec.errors import ExportError
from recipec.pipeline.build import build
from recipec.recipe.load import load_recipe
from tests.tinyrecipes import GROUPS2, run_cli, tiny_yaml, write_recipe

TRUST = ["tests.tinynets:tiny_cnn"]
RECIPE = tiny_yaml(model='{arch: "tests.tinynets:tiny_cnn", kwargs: {width: 8}, head: {num_classes: 10}}',
                   groups=GROUPS2, freeze="{trainable: [body, head]}", optimizer="{name: adamw, lr: 3.0e-2}",
                   data="{dataset: digits, image_size: 8, batch_size: 64}", train="{epochs: 4}",
                   export="{formats: [safetensors, onnx, pt2], quantize: {method: static, calibration_batches: 4}}")
# channel 0 of the first block x100: a per-tensor int8 activation scale leaves the others a level or two
COARSE = tiny_yaml(name="coarse", model='{arch: "tests.tinynets:outlier_cnn", kwargs: {width: 8, gain: 100.0}, '
                   'head: {num_classes: 10}}', groups="\n  - {name: body, match: ['^[0-7][.]']}\n"
                   "  - {name: head, match: ['^9[.]']}", freeze="{trainable: [body, head]}",
                   optimizer="{name: adamw, lr: 3.0e-2}", data="{dataset: digits, image_size: 8, batch_size: 64}",
                   export="{formats: [safetensors, onnx], quantize: {method: static, calibration_batches: 2, "
                          "per_channel: false}, max_accuracy_drop: 0.0}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("deploy")
    return build(load_recipe(write_recipe(folder, RECIPE)), out=folder / "run", log=None)


def _artifacts(run: Path) -> dict[str, Any]:
    return json.loads((run / "eval" / "artifacts.json").read_text())


def test_a_digits_run_evaluates_all_four_artifacts(run: Path) -> None:
    results = _artifacts(run)
    rows = {a["artifact"]: a for a in results["artifacts"]}
    assert list(rows) == ["model.safetensors", "model.onnx", "model.int8.onnx", "model.pt2"]
    assert results["reference"] == "model.safetensors" and results["split"] == "val" and results["metric"] == "accuracy"
    model = rows["model.safetensors"]["value"]
    assert model > 0.7, "the run did not learn: the int8 comparison below would say nothing"
    assert rows["model.onnx"]["value"] == pytest.approx(model, abs=1e-9)
    assert rows["model.pt2"]["value"] == pytest.approx(model, abs=1e-9)
    assert abs(rows["model.int8.onnx"]["value"] - model) <= 0.02  # within 2 points of fp32
    for name, row in rows.items():
        assert row["bytes"] == (run / name).stat().st_size and len(row["sha256"]) == 64 and not row["rejected"]
        assert row["delta"] == pytest.approx(row["value"] - model)
        assert row["latency_ms"]["batch_1"] > 0 and row["latency_ms"][f"batch_{results['batch']}"] > 0
    card = (run / "README.md").read_text()
    assert "### Exported artifacts" in card and "`model.int8.onnx`" in card and "`model.pt2`" in card


def test_pt2_logits_equal_the_models_at_batch_1_and_7(run: Path) -> None:
    model = recipec.load(run / "model.safetensors", trust_factories=TRUST)
    graph = recipec.load(run / "model.pt2")  # no factory to trust: the graph is in the file
    for batch in (1, 7):
        x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            assert (model(x) - graph(x)).abs().max() <= 1e-5


def test_int8_onnx_is_quantized_and_carries_the_recipe(run: Path) -> None:
    proto = onnx.load(run / "model.int8.onnx")
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["recipec.quantization"]) == {"method": "static", "per_channel": True, "format": "QDQ",
                                                         "calibration_batches": 4}
    assert "recipec.recipe" in meta and "recipec.provenance" in meta
    assert recipec.load_predictor(run / "model.int8.onnx").classes == [str(i) for i in range(10)]


def test_predict_inspect_and_eval_read_the_pt2(run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "a.png")
    code, out, err = run_cli(["predict", str(run / "model.pt2"), str(tmp_path / "a.png"), "--format", "jsonl"], capsys)
    assert code == 0, err
    pt2_top = json.loads(out)["top"]
    code, out, err = run_cli(["predict", str(run / "model.safetensors"), str(tmp_path / "a.png"), "--format", "jsonl",
                              "--trust-factory", TRUST[0]], capsys)
    assert code == 0, err
    assert [c["class"] for c in pt2_top] == [c["class"] for c in json.loads(out)["top"]]
    assert [c["score"] for c in pt2_top] == pytest.approx([c["score"] for c in json.loads(out)["top"]], abs=1e-6)
    code, out, err = run_cli(["inspect", str(run / "model.pt2"), "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["format"] == "pt2" and report["recipec"]["name"] == "tiny"
    assert report["inputs"][0]["shape"][1:] == [3, 8, 8] and isinstance(report["inputs"][0]["shape"][0], str)
    assert "aten.conv2d.default" in report["operators"]
    code, out, err = run_cli(["eval", str(run / "model.pt2"), "--json", "--out", str(tmp_path / "e.json")], capsys)
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(_artifacts(run)["artifacts"][0]["value"])


def test_convert_pt2_to_safetensors_loads_as_the_model(run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["convert", str(run / "model.pt2"), str(tmp_path / "w.safetensors")], capsys)
    assert code == 0, err
    a = recipec.load(tmp_path / "w.safetensors", trust_factories=TRUST)
    b = recipec.load(run / "model.safetensors", trust_factories=TRUST)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_convert_quantize_dynamic_and_static(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["convert", str(run / "model.onnx"), str(tmp_path / "d.onnx"), "--quantize", "dynamic"], capsys)
    assert code == 0, err
    assert json.loads({p.key: p.value for p in onnx.load(tmp_path / "d.onnx").metadata_props}
                      ["recipec.quantization"])["method"] == "dynamic"
    code, _, err = run_cli(["convert", str(run / "model.onnx"), str(tmp_path / "s.onnx"), "--quantize", "static"], capsys)
    assert code == 2 and "pass --recipe" in err and not (tmp_path / "s.onnx").exists()
    code, _, err = run_cli(["convert", str(run / "model.onnx"), str(tmp_path / "s.onnx"), "--quantize", "static",
                            "--recipe", str(run / "recipe.yaml")], capsys)
    assert code == 0, err
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(tmp_path / "s.onnx").graph.node}


def test_eval_artifacts_rewrites_the_table(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    (copy / "eval" / "artifacts.json").unlink()
    code, out, err = run_cli(["eval", str(copy), "--artifacts", "--trust-factory", TRUST[0]], capsys)
    assert code == 0, err
    assert "model.int8.onnx" in out and _artifacts(copy)["repeats"] == 20
    code, _, err = run_cli(["eval", str(copy), "--artifacts", "--split", "val"], capsys)
    assert code == 2 and "leave out --split" in err


def test_max_accuracy_drop_fails_a_coarse_int8_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["build", str(write_recipe(tmp_path, COARSE)), "--out", str(tmp_path / "run"), "--quiet"],
                           capsys)
    assert code == 1
    assert "model.int8.onnx: accuracy" in err and "export.max_accuracy_drop 0.0" in err
    run = tmp_path / "run"
    assert not (run / "model.int8.onnx").exists() and (run / "model.int8.onnx.rejected").is_file()
    row = next(a for a in _artifacts(run)["artifacts"] if a["artifact"] == "model.int8.onnx")
    assert row["rejected"] and row["delta"] < 0
    assert "**rejected**" in (run / "README.md").read_text()


class DataDependent(torch.nn.Module):
    """Branches on a tensor's value: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


@pytest.mark.parametrize("strict", [False, True])
def test_a_model_that_does_not_export_names_where(strict: bool, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"pt2 export of tiny failed at .*test_deploy\.py:\d+ in forward "
                                          r"\(`if x\.sum\(\) > 0:`\)") as info:
        export_pt2(DataDependent(), tmp_path / "m.pt2", input_shape=(2, 3, 2, 2), strict=strict, metadata={}, arch="tiny")
    assert f"export.pt2.strict: {str(not strict).lower()}" in str(info.value)
    assert not (tmp_path / "m.pt2").exists()


def test_quantize_without_onnx_is_a_located_recipe_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_recipe(tmp_path, tiny_yaml(export="{formats: [safetensors, pt2], quantize: {method: dynamic}}"))
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert code == 2
    assert "export.quantize: quantizes model.onnx: add onnx to export.formats" in err and "tiny.yaml:" in err
