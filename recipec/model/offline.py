"""The offline policy while code that could download runs: nothing is fetched unless ``RECIPEC_ALLOW_DOWNLOAD=1``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.hub

from recipec.errors import WeightsUnavailableError

__all__ = ["downloads_allowed", "downloads_blocked", "hub_cache"]


def downloads_allowed() -> bool:
    """``RECIPEC_ALLOW_DOWNLOAD=1``: pretrained files missing from the local caches may be downloaded."""
    return os.environ.get("RECIPEC_ALLOW_DOWNLOAD") == "1"


def hub_cache() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub`` (default ``~/.cache/huggingface/hub``).

    Read at call time: huggingface_hub fixes its own constants when it is first imported.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


@contextlib.contextmanager
def downloads_blocked() -> Iterator[None]:
    """No hub or URL download while building, unless ``RECIPEC_ALLOW_DOWNLOAD=1``.

    A ``package.module:factory`` (``timm:create_model`` with ``pretrained: true``) would otherwise
    fetch weights behind the offline policy: the hub is put offline (cached files still load) and
    torch hub's ``download_url_to_file`` refuses, so a missing file is an error naming it.
    """
    if downloads_allowed():
        yield
        return
    hub_constants: Any = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants as hub_constants  # noqa: PLC0415  (optional: the timm extra)

    def refuse(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise WeightsUnavailableError((("model", "arch"), (
            f"refused to download {url} to {dst}: recipec downloads nothing unless RECIPEC_ALLOW_DOWNLOAD=1; "
            "put the file there, or set the environment variable")))

    saved_download, saved_offline = torch.hub.download_url_to_file, getattr(hub_constants, "HF_HUB_OFFLINE", None)
    torch.hub.download_url_to_file = refuse
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            raise WeightsUnavailableError((("model", "arch"), (
                f"the factory asked the Hugging Face hub for weights that are not in the local cache ({exc}); "
                "recipec downloads nothing unless RECIPEC_ALLOW_DOWNLOAD=1 (or use model.arch: timm/<name> "
                "with model.weights)"))) from exc
        raise
    finally:
        torch.hub.download_url_to_file = saved_download
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved_offline
