from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from recipec import provenance
from recipec.provenance import (
    PROVENANCE_KEY,
    RECIPE_KEY,
    environment,
    export_metadata,
    file_digest,
    now_utc,
    read_export_metadata,
    versions,
)
from recipec.errors import CheckpointError, ExportError

RECIPE = "name: tiny\nmodel:\n  arch: resnet18\n"
PROVENANCE = {"versions": {"torch": "2.14.1"}, "final_metrics": {"val_acc": 0.91, "val_loss": None},
              "classes": ["daisy", "rose"], "epochs_trained": 3, "name": "tiny"}


def test_import_does_not_import_torch() -> None:
    code = "import sys, recipec.provenance; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[2])
    assert result.stdout.strip() == "[]"


def test_versions_names_python_platform_and_installed_packages() -> None:
    found = versions()
    assert {"python", "platform", "recipec", "torch", "pydantic", "safetensors"} <= set(found)
    assert found["torch"] == importlib.metadata.version("torch")
    assert found["python"] == ".".join(map(str, sys.version_info[:3]))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in found.items())


def test_versions_name_every_installed_optional_extra_and_keep_the_old_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version
    extras = {"timm": "1.0.31", "transformers": "4.99.0", "peft": "0.20.0", "optuna": "4.5.0",
              "tensorboard": "2.21.0", "mlflow-skinny": "3.17.2", "huggingface_hub": "1.2.3"}

    def every_extra(name: str) -> str:
        if name == "mlflow":  # only the skinny distribution, which provides the same package
            raise importlib.metadata.PackageNotFoundError(name)
        return extras[name] if name in extras else real(name)

    monkeypatch.setattr(provenance.importlib.metadata, "version", every_extra)
    found = versions()
    assert {k: found.get(k) for k in ("timm", "transformers", "peft", "optuna", "tensorboard", "mlflow",
                                      "huggingface_hub")} == {
        "timm": "1.0.31", "transformers": "4.99.0", "peft": "0.20.0", "optuna": "4.5.0", "tensorboard": "2.21.0",
        "mlflow": "3.17.2", "huggingface_hub": "1.2.3"}
    # one flat name -> version map, as before: the keys earlier runs recorded mean what they meant
    assert {"python", "platform", "recipec", "torch", "torchvision", "safetensors", "pydantic"} <= set(found)
    assert all(isinstance(v, str) for v in found.values())


def test_versions_leaves_out_what_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version

    def without_onnx(name: str) -> str:
        if name.startswith("onnx") or name == "timm":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(provenance.importlib.metadata, "version", without_onnx)
    found = versions()
    assert "onnx" not in found and "onnxruntime" not in found and "timm" not in found and "torch" in found


def test_versions_finds_onnxruntime_under_its_gpu_name(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version

    def gpu_build(name: str) -> str:
        if name == "onnxruntime":
            raise importlib.metadata.PackageNotFoundError(name)
        return "1.99.0" if name == "onnxruntime-gpu" else real(name)

    monkeypatch.setattr(provenance.importlib.metadata, "version", gpu_build)
    assert versions()["onnxruntime"] == "1.99.0"


def test_environment_records_hardware_not_identity() -> None:
    env = environment("cpu")
    assert set(env) == {"device", "cpu_count", "torch_threads", "deterministic_algorithms"}
    assert env["device"] == "cpu" and env["cpu_count"] == os.cpu_count()
    assert socket.gethostname() not in json.dumps(env)
    assert str(Path.home()) not in json.dumps(env)


def test_file_digest_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # crosses chunk boundaries
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
    with pytest.raises(CheckpointError, match=r"nope\.pt: cannot be hashed"):
        file_digest(tmp_path / "nope.pt")


def test_now_utc_is_iso_utc_to_the_second() -> None:
    text = now_utc()
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0) and parsed.microsecond == 0 and "." not in text
    assert abs(datetime.now(timezone.utc) - parsed) < timedelta(seconds=5)


def test_export_metadata_round_trips() -> None:
    metadata = export_metadata(recipe_yaml=RECIPE, provenance=PROVENANCE)
    assert set(metadata) == {"format", RECIPE_KEY, PROVENANCE_KEY} and metadata["format"] == "pt"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    assert metadata[PROVENANCE_KEY] == json.dumps(PROVENANCE, sort_keys=True)  # stable bytes for equal inputs
    assert read_export_metadata(metadata) == (RECIPE, PROVENANCE)


def test_export_metadata_survives_a_safetensors_file(tmp_path: Path) -> None:
    import torch

    from recipec.weights import formats

    path = tmp_path / "model.safetensors"
    formats.save({"w": torch.ones(2)}, path, metadata=export_metadata(recipe_yaml=RECIPE, provenance=PROVENANCE))
    assert read_export_metadata(formats.read_metadata(path)) == (RECIPE, PROVENANCE)


def test_export_metadata_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(ExportError, match="not JSON-serialisable"):
        export_metadata(recipe_yaml=RECIPE, provenance={"source": Path("x.pt")})


@pytest.mark.parametrize("metadata", [{}, {"format": "pt"}, {"format": "pt", "author": "someone else"}])
def test_foreign_metadata_reads_as_absent(metadata: dict[str, str]) -> None:
    assert read_export_metadata(metadata) == (None, {})


def test_recipe_without_provenance() -> None:
    assert read_export_metadata({RECIPE_KEY: RECIPE}) == (RECIPE, {})


@pytest.mark.parametrize(("raw", "message"), [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object, got list")])
def test_damaged_provenance_names_the_key(raw: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=rf"'recipec\.provenance': {message}"):
        read_export_metadata({RECIPE_KEY: RECIPE, PROVENANCE_KEY: raw})


def test_file_digest_is_read_once_while_the_file_is_unchanged(tmp_path, monkeypatch):
    from recipec import provenance

    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = provenance.file_digest(path)
    updates: list[int] = []
    sha256 = hashlib.sha256

    class Counting:
        def __init__(self) -> None:
            self.inner = sha256()

        def update(self, chunk: bytes) -> None:
            updates.append(len(chunk))
            self.inner.update(chunk)

        def hexdigest(self) -> str:
            return self.inner.hexdigest()

    monkeypatch.setattr(provenance.hashlib, "sha256", Counting)
    assert provenance.file_digest(path) == first == sha256(b"a" * 1000).hexdigest()
    assert updates == []  # the second build-time hash of an unchanged source reads nothing
    st = os.stat(path)
    path.write_bytes(b"b" * 1000)  # same size, and the mtime set back: the ctime still moves
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert provenance.file_digest(path) == sha256(b"b" * 1000).hexdigest() and updates == [1000]
