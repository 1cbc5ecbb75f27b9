"""Where a run came from: package versions, the machine, file hashes, time, export metadata.

Everything here is plain data (str, numbers, lists, dicts) so it fits a model card, a
training state and the str -> str metadata of safetensors and ONNX files. This module
never imports torch at module level: ``recipec validate`` and the card renderer stay torch-free.

Privacy: nothing that identifies a person or a machine is recorded: no hostname, user name,
home directory, absolute path or environment variable. ``environment`` says what kind of
hardware ran the job, not which machine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from recipec import _json as clean_json
from recipec._version import __version__
from recipec._files import open_regular
from recipec.errors import CheckpointError, ExportError

__all__ = [
    "PROVENANCE_KEY",
    "RECIPE_KEY",
    "environment",
    "export_metadata",
    "file_digest",
    "now_utc",
    "read_export_metadata",
    "versions",
]

RECIPE_KEY = "recipec.recipe"
PROVENANCE_KEY = "recipec.provenance"

# Report name -> distributions that provide it; GPU builds of onnxruntime ship under other names.
_PACKAGES: dict[str, tuple[str, ...]] = {
    "recipec": ("recipec",),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "safetensors": ("safetensors",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-silicon", "onnxruntime-directml"),
    "onnxscript": ("onnxscript",),  # torch's ONNX exporter
    "pydantic": ("pydantic",),
    # the optional extras: each changes what a run computes (timm's models and pretrained configs,
    # transformers' and peft's modules) or records (the trackers, the hub card parser)
    "timm": ("timm",),
    "transformers": ("transformers",),
    "peft": ("peft",),
    "optuna": ("optuna",),
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "huggingface_hub": ("huggingface_hub",),
}


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a run depends on, optional extras included.

    One flat name -> version map (the keys of earlier runs keep their meaning): the core packages, then
    every optional extra that is installed (timm, transformers, peft, optuna, tensorboard, mlflow,
    huggingface_hub). A package that is not installed is left out rather than recorded as unknown.

    Returns:
        ``{"python": "3.11.7", "platform": "Linux-6.8.0-x86_64-with-glibc2.39", "torch": "2.14.1", ...,
        "timm": "1.0.31"}``.
    """
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name, distributions in _PACKAGES.items():
        for distribution in distributions:
            try:
                found[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    if "recipec" not in found:
        # Run from a source tree that was never installed: the package still knows its version.
        found["recipec"] = __version__
    return found


def environment(device: str) -> dict[str, Any]:
    """What kind of hardware and numeric settings a run used.

    The hostname, user and paths are deliberately absent: cards and exports get shared.

    Args:
        device: the torch device the run used (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Returns:
        ``device``, ``cpu_count``, ``torch_threads``, ``deterministic_algorithms``; for CUDA
        devices also ``device_name``, ``cuda`` (toolkit version) and ``cudnn`` where known.
    """
    import torch  # noqa: PLC0415 (provenance stays torch-free until the environment is recorded)

    env: dict[str, Any] = {
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        env["device_name"] = torch.cuda.get_device_name(torch.cuda.current_device() if index is None else index)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def file_digest(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (constant memory for any size).

    Raises:
        CheckpointError: the file does not exist or cannot be read.
    """
    digest = hashlib.sha256()
    if not os.path.exists(path):
        raise CheckpointError(f"{os.fspath(path)}: cannot be hashed (no such file)")
    try:
        # a FIFO or /dev/urandom is refused: hashing it would hang or never end
        with open_regular(path, what="file to hash") as f:
            st = os.fstat(f.fileno())
            # a build hashes its source twice (resume record, provenance): once is enough while the
            # file is unchanged (ctime moves with any write or touch, and cannot be set back)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if key in _DIGESTS:
                return _DIGESTS[key]
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"{os.fspath(path)}: cannot be hashed ({exc.strerror or exc})") from exc
    _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple[int, ...], str] = {}


def now_utc() -> str:
    """The current time in ISO-8601, UTC, to the second: ``"2025-06-01T12:30:05+00:00"``.

    ``datetime.fromisoformat`` reads it back on every supported Python (3.10 does not read ``Z``).
    """
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def export_metadata(*, recipe_yaml: str, provenance: Mapping[str, Any]) -> dict[str, str]:
    """The str -> str metadata an export carries (safetensors ``__metadata__``, ONNX ``metadata_props``).

    ``"format": "pt"`` is what Hugging Face loaders look for in a safetensors file.

    Args:
        recipe_yaml: the resolved recipe, so the export can rebuild its own architecture.
        provenance: JSON-serialisable plain data (versions, environment, hashes, metrics).

    Returns:
        ``{"format": "pt", "recipec.recipe": recipe_yaml, "recipec.provenance": "<JSON, sorted keys>"}``.

    Raises:
        ExportError: ``provenance`` holds a value JSON cannot represent.
    """
    try:
        encoded = clean_json.dumps(provenance, sort_keys=True)  # a NaN final metric: null + "nonfinite"
    except (TypeError, ValueError) as exc:
        raise ExportError(
            f"provenance is not JSON-serialisable ({exc}); convert such values to str, numbers, lists or dicts"
        ) from exc
    return {"format": "pt", RECIPE_KEY: recipe_yaml, PROVENANCE_KEY: encoded}


def read_export_metadata(metadata: Mapping[str, str]) -> tuple[str | None, dict[str, Any]]:
    """Inverse of :func:`export_metadata`: the recipe and provenance an export carries.

    Files written by other tools carry neither, which is not an error.

    Args:
        metadata: a file's str -> str metadata.

    Returns:
        ``(recipe_yaml, provenance)``; ``None`` and ``{}`` for whatever is absent.

    Raises:
        CheckpointError: a recipec key is present but damaged (not a str, not a JSON object).
    """
    recipe = metadata.get(RECIPE_KEY)
    if recipe is not None and not isinstance(recipe, str):
        raise CheckpointError(f"metadata {RECIPE_KEY!r}: expected the recipe as YAML text, got {type(recipe).__name__}")
    raw = metadata.get(PROVENANCE_KEY)
    if raw is None:
        return recipe, {}
    try:
        provenance = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"metadata {PROVENANCE_KEY!r}: not valid JSON ({exc}); the file's metadata is damaged") from exc
    except RecursionError as exc:  # [[[[...]]]] thousands deep
        raise CheckpointError(f"metadata {PROVENANCE_KEY!r}: nested too deeply to be provenance; the file's metadata "
                              "is damaged") from exc
    if not isinstance(provenance, dict):
        raise CheckpointError(
            f"metadata {PROVENANCE_KEY!r}: expected a JSON object, got {type(provenance).__name__}; "
            "the file's metadata is damaged"
        )
    return recipe, provenance
