"""ONNX export and verification: parity with torch, dynamic batch, metadata, clean failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from recipec.errors import ExportError
from recipec.weights import onnx as onnx_export
from recipec.weights.onnx import export_onnx, verify_onnx
from tests.tinynets import tiny_cnn

SHAPE = (1, 3, 8, 8)


class DataDependentModel(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=5, width=4)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _model().train()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    meta = {"recipec.recipe": "model: {arch: tiny}\n", "note": "ünïcode ✓"}
    assert export_onnx(model, path, input_shape=SHAPE, metadata=meta) == path
    assert model.training, "the caller's model keeps its mode"
    return model, path


def test_export_and_verify_parity(exported: tuple[nn.Module, Path]) -> None:
    model, path = exported
    report = verify_onnx(model, path, input_shape=SHAPE, atol=1e-5)
    assert report["ok"] and report["batch_sizes"] == [1, 3]
    assert report["max_abs_diff"] <= 1e-5
    assert report["atol"] == 1e-5


def test_dynamic_batch_runs_at_every_size(exported: tuple[nn.Module, Path]) -> None:
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (feed,), (out,) = session.get_inputs(), session.get_outputs()
    assert (feed.name, out.name) == ("input", "logits")
    assert feed.shape[0] == out.shape[0] == "batch"
    for batch in (1, 3):
        x = torch.randn(batch, 3, 8, 8)
        (logits,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        model.train()
        assert logits.shape == (batch, 5)
        np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_metadata_props_round_trip(exported: tuple[nn.Module, Path]) -> None:
    _, path = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props == {"recipec.recipe": "model: {arch: tiny}\n", "note": "ünïcode ✓"}


def test_static_batch_and_half_model(tmp_path: Path) -> None:
    model = _model().half()  # exported as a float32 copy; the model itself stays half
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=(2, 3, 8, 8), dynamic_batch=False, opset=19)
    proto = onnx.load(str(path))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 8, 8]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert next(o.version for o in proto.opset_import if o.domain == "") == 19
    assert next(model.parameters()).dtype == torch.float16
    report = verify_onnx(model, path, input_shape=(2, 3, 8, 8))
    assert report["batch_sizes"] == [2]


def test_opset_below_18_converts_or_fails_clearly(tmp_path: Path) -> None:
    # torch's exporter writes opset 18 and would silently ignore a lower opset_version.
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    path = export_onnx(mlp, tmp_path / "mlp.onnx", input_shape=(1, 4), opset=17)
    assert next(o.version for o in onnx.load(str(path)).opset_import if o.domain == "") == 17
    assert verify_onnx(mlp, path, input_shape=(1, 4), atol=1e-5)["ok"]
    with pytest.raises(ExportError, match=r"cannot convert this graph to opset 17 .*ReduceMean.*opset to 18 or higher"):
        export_onnx(_model(), tmp_path / "cnn.onnx", input_shape=SHAPE, opset=17)
    assert not (tmp_path / "cnn.onnx").exists()


def test_parity_failure_names_difference_and_tolerance(exported: tuple[nn.Module, Path]) -> None:
    model, path = exported
    changed = _model()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed[-1].bias += 0.5  # the torch model drifts after export
    with pytest.raises(ExportError, match=r"differ by up to 0\.5.*atol 0\.0001") as info:
        verify_onnx(changed, path, input_shape=SHAPE)
    assert info.value.exit_code == 1


def test_nan_output_fails_verification(exported: tuple[nn.Module, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model, path = exported
    real_run = ort.InferenceSession.run

    def nan_run(self: ort.InferenceSession, *args: object, **kwargs: object) -> list[np.ndarray]:
        return [np.full_like(out, np.nan) for out in real_run(self, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", nan_run)
    with pytest.raises(ExportError, match="differ by up to inf"):
        verify_onnx(model, path, input_shape=SHAPE)


def test_unexportable_model_raises_and_leaves_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExportError, match=r"ONNX export of DataDependentModel failed: .*data-dependent") as info:
        export_onnx(DataDependentModel(), tmp_path / "bad.onnx", input_shape=(1, 4))
    message = str(info.value)
    assert "if x.sum() > 0" in message and "\x1b[" not in message
    assert list(tmp_path.iterdir()) == []
    out, err = capfd.readouterr()
    assert "forward" not in out + err, "the exporter's chatter stays off the console"


def test_too_large_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export, "_MAX_BYTES", 1000)
    with pytest.raises(ExportError, match="at most 2 GiB.*export safetensors"):
        export_onnx(_model(), tmp_path / "big.onnx", input_shape=SHAPE, arch="tiny_cnn")
    assert list(tmp_path.iterdir()) == []


def test_non_str_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="'epochs'.*json.dumps"):
        export_onnx(_model(), tmp_path / "m.onnx", input_shape=SHAPE, metadata={"epochs": 3})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
