"""A stand-in for timm's pretrained weights: the exact Hugging Face hub cache layout, offline.

:func:`stand_in` saves a randomly initialised model where the hub cache keeps
``timm/<name>.<tag>``; :func:`go_offline` (the ``offline`` fixture of tests/model/conftest.py)
points HF_HOME and the torch hub at empty folders, makes the network unreachable and records
every download attempt, so a test can assert that none was made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors.torch
import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def stand_in(home: Path, name: str, tag: str, file: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """A randomly initialised model saved exactly where the hub cache keeps timm/<name>.<tag>."""
    import timm

    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in timm.create_model(f"{name}.{tag}").state_dict().items()}
    repo = home / "hub" / f"models--timm--{name}.{tag}"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    safetensors.torch.save_file(state, repo / "snapshots" / COMMIT / file)
    (repo / "refs" / "main").write_text(COMMIT)
    return state


def go_offline(tmp_path: Path, monkeypatch: Any) -> tuple[Path, list[tuple[Any, ...]]]:
    """An empty HF_HOME and torch hub, the hub offline, the network unreachable; (HF_HOME, download attempts)."""
    import huggingface_hub
    import torch.hub

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("RECIPEC_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
    attempts: list[tuple[Any, ...]] = []

    def download(*args: Any, **kwargs: Any) -> str:
        attempts.append(args)
        raise OSError("no network here")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return home, attempts
