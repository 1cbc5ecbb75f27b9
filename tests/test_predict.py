"""recipec predict: the same answers from every export format and from the model called directly."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import recipec
from tests.evalrun import CLASSES, TRUST, TRUSTED, cli, shared_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run(tmp_path_factory)


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_every_export_gives_the_same_top1_as_the_model_called_directly(run: Path, capsys) -> None:
    folder = run.parent / "data" / "test"
    results = {}
    for name in ("model.safetensors", "model.pt", "model.onnx"):
        code, out, err = cli(capsys, "predict", str(run / name), str(folder), "--format", "jsonl", "--top-k", "3",
                                 *TRUSTED)
        assert code == 0, err
        results[name] = _jsonl(out)
    files = sorted(str(p) for p in folder.rglob("*.png"))
    assert [r["path"] for r in results["model.safetensors"]] == files  # walked recursively, sorted
    for name, rows in results.items():
        assert [r["top"][0]["class"] for r in rows] == [r["top"][0]["class"] for r in results["model.safetensors"]], name
        for row in rows:
            scores = [t["score"] for t in row["top"]]
            assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    for a, b in zip(results["model.onnx"], results["model.pt"]):
        assert a["top"][0]["score"] == pytest.approx(b["top"][0]["score"], abs=1e-4)
    # the bare model, with the preprocessing done here as the README states it
    model = recipec.load(run / "model.safetensors", trust_factories=TRUST)
    batch = torch.stack([_documented(Image.open(f)) for f in files])
    with torch.no_grad():
        probs = torch.softmax(model(batch), 1)
    assert [CLASSES[i] for i in probs.argmax(1).tolist()] == [r["top"][0]["class"] for r in results["model.pt"]]
    assert [r["top"][0]["score"] for r in results["model.pt"]] == pytest.approx(probs.max(1).values.tolist(), abs=1e-5)
    # the run learnt: most test images are right
    right = sum(Path(r["path"]).parent.name == r["top"][0]["class"] for r in results["model.pt"])
    assert right >= 0.6 * len(files)


def _documented(image: Image.Image) -> torch.Tensor:
    """RGB, [0, 1], resized to 16x16 (bilinear, antialiased), ImageNet mean and std."""
    import numpy as np

    x = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255
    x = torch.nn.functional.interpolate(x[None], size=(16, 16), mode="bilinear", antialias=True)[0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean[:, None, None]) / std[:, None, None]


def test_csv_and_table_and_out(run: Path, tmp_path: Path, capsys) -> None:
    image = next((run.parent / "data" / "test" / "dog").iterdir())
    code, out, _ = cli(capsys, "predict", str(run / "model.onnx"), str(image), "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "class", "score"] and rows[1][0] == str(image) and rows[1][1] in CLASSES
    assert len(rows) == 2
    code, out, _ = cli(capsys, "predict", str(run / "model.onnx"), str(image), "--top-k", "2")
    header, line = out.splitlines()
    assert header.split() == ["path", "top-1", "#2"] and line.startswith(str(image)) and rows[1][1] in line
    target = tmp_path / "p.jsonl"
    code, out, _ = cli(capsys, "predict", str(run / "model.onnx"), str(image), "--format", "jsonl", "--out",
                           str(target))
    assert code == 0 and out == ""
    assert _jsonl(target.read_text())[0]["top"][0]["class"] == rows[1][1]


def test_an_unreadable_image_is_named_and_the_rest_predicted(run: Path, tmp_path: Path, capsys) -> None:
    good = [next((run.parent / "data" / "test" / c).iterdir()) for c in ("cat", "emu")]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    code, out, err = cli(capsys, "predict", str(run / "model.onnx"), str(good[0]), str(bad), str(good[1]),
                             "--format", "jsonl", "--batch-size", "2")
    assert code == 1
    assert [r["path"] for r in _jsonl(out)] == [str(good[0]), str(good[1])]
    assert f"error: {bad}: unreadable image" in err and "1 of 3 images could not be read" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--top-k", "0"], "--top-k"),
    (["--format", "xml"], "'xml' is not one of"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_arguments_exit_2(run: Path, capsys, args: list[str], message: str) -> None:
    code, _, err = cli(capsys, "predict", str(run / "model.onnx"), str(run.parent / "data" / "test"), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_missing_inputs_and_foreign_exports_exit_2(run: Path, tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "predict", str(run / "model.onnx"), str(tmp_path / "nope.png"))
    assert code == 2 and "nope.png: no such file or directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "predict", str(run / "model.onnx"), str(tmp_path / "empty"))
    assert code == 2 and "no image files" in err
    (tmp_path / "x.onnx").write_bytes(b"not onnx at all")
    image = next((run.parent / "data" / "test" / "cat").iterdir())
    code, _, err = cli(capsys, "predict", str(tmp_path / "x.onnx"), str(image))
    assert code == 2 and "x.onnx" in err and "Traceback" not in err
    code, _, err = cli(capsys, "predict", str(run / "model.safetensors"), str(image))  # factory not trusted
    assert code == 2 and "tests.tinynets:tiny_cnn" in err


def test_out_never_overwrites_an_input(run: Path, tmp_path: Path, capsys) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(image)
    before = image.read_bytes()
    code, _, err = cli(capsys, "predict", str(run / "model.onnx"), str(image), "--out", str(image))
    assert code == 2 and "is an input" in err and image.read_bytes() == before


def test_an_onnx_file_with_external_data_is_refused(run: Path, tmp_path: Path) -> None:
    import onnx

    from recipec.errors import CheckpointError
    from recipec.inference.predictor import load_predictor

    model = onnx.load(run / "model.onnx")
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert os.path.exists(tmp_path / "weights.bin")
    with pytest.raises(CheckpointError, match="external"):
        load_predictor(tmp_path / "ext.onnx")


def test_inspect_reads_onnx_and_shows_provenance_readably(run: Path, capsys) -> None:
    code, out, err = cli(capsys, "inspect", str(run / "model.onnx"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["format"] == "onnx" and report["opset"][""] == 18
    assert report["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 16, 16]}]
    assert report["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", len(CLASSES)]}]
    assert report["producer"]["name"] == "pytorch" and "recipec.recipe" in report["metadata"]
    assert report["recipec"]["classes"] == CLASSES
    assert report["recipec"]["provenance"]["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    for name in ("model.safetensors", "model.pt", "model.onnx"):
        code, out, _ = cli(capsys, "inspect", str(run / name))
        assert code == 0
        assert f"classes:       7: {', '.join(CLASSES)}" in out, name
        assert "normalisation: mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]" in out
        assert "resize:        16x16 square resize (bilinear)" in out and "input:         3 x 16 x 16" in out
        assert "model:         tests.tinynets:tiny_cnn, random init" in out and "epochs:        2" in out
        assert '{"' not in out  # no JSON strings cut at 80 characters
    assert "  input: float32 [batch, 3, 16, 16]" in out  # the last one: ONNX's own input


def test_inspect_of_a_foreign_onnx_file(tmp_path: Path, capsys) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    onnx.save(helper.make_model(graph, producer_name="handmade", opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "relu.onnx")
    code, out, err = cli(capsys, "inspect", str(tmp_path / "relu.onnx"))
    assert code == 0, err
    assert "producer:   handmade" in out and "opset:      ai.onnx 17" in out and "x: float32 [n, 4]" in out
    assert "recipec export" not in out
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
    code, _, err = cli(capsys, "inspect", str(tmp_path / "bad.onnx"))
    assert code == 2 and "not an ONNX" in err
