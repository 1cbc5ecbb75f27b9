"""The files of an ``hf/<repo id or folder>`` model, offline-first: a local folder as it is, a Hub
repository from the local Hugging Face cache (downloaded only when ``RECIPEC_ALLOW_DOWNLOAD=1``).

What is read from a repository is data: ``config.json`` and ``preprocessor_config.json`` as JSON,
and the weights as tensors (:mod:`recipec.model.hf_weights`); nothing it holds is imported or run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipec.errors import ModelError, WeightsUnavailableError
from recipec.model.offline import downloads_allowed, hub_cache
from recipec.recipe.archs import hf_config_problem, hf_folder, hf_name

__all__ = ["WEIGHT_FILES", "HFFiles", "locate", "read_json", "weights_file"]

CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
# what transformers' save_pretrained writes, in the order they are looked for: safetensors first
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
_SAFETENSORS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
_LEGACY = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]


@dataclass(frozen=True)
class HFFiles:
    """Where the files of an ``hf/`` model are.

    Attributes:
        folder: the local folder, or the cache's snapshot folder, holding ``config.json``.
        repo: the Hub repository id, or None for a local folder.
        commit: the snapshot's commit (a cached repository), else None.
    """

    folder: Path
    repo: str | None
    commit: str | None

    @property
    def name(self) -> str:
        """``facebook/dinov2-small`` (a Hub repository), or the folder's absolute path."""
        return self.repo if self.repo is not None else str(self.folder.resolve())

    @property
    def url(self) -> str:
        """The repository at its commit on the Hub, or the folder as a ``file://`` URL."""
        if self.repo is None:
            return self.folder.resolve().as_uri()
        return f"https://huggingface.co/{self.repo}" + (f"/tree/{self.commit}" if self.commit else "")


def locate(arch: str, weights: str | None, *, with_weights: bool) -> HFFiles:
    """The folder holding ``arch``'s ``config.json`` (and, ``with_weights``, its weights).

    A local folder (``hf/./models/vit``) is read as it is: ``weights`` may be ``DEFAULT`` or null. A
    repository id is looked up in the hub cache at ``weights`` as a revision (``DEFAULT`` or null:
    ``main``), and downloaded there only when ``RECIPEC_ALLOW_DOWNLOAD=1``: ``config.json``,
    ``preprocessor_config.json`` and, ``with_weights``, the safetensors files (``.bin`` ones only when
    the repository has no safetensors).

    Raises:
        ModelError: a folder that is not there or has no ``config.json``; a revision asked of a folder.
        WeightsUnavailableError: not in the cache and downloads not allowed, or the download failed.
    """
    at = ("model", "weights") if with_weights else ("model", "arch")
    folder = hf_folder(arch)
    if folder is not None:
        path = Path(folder)
        if weights not in (None, "DEFAULT"):
            raise ModelError((("model", "weights"), (
                f"{arch} is a local folder, which holds one set of weights: write model.weights: DEFAULT "
                f"(or null for random initialisation), not {weights!r}")))
        if not (path / CONFIG).is_file():
            why = "has no config.json" if path.is_dir() else "is not a folder"
            raise ModelError((("model", "arch"), (
                f"{arch}: {path.resolve()} {why} (a local folder is read from the working directory and holds "
                "what save_pretrained writes)")))
        return HFFiles(folder=path, repo=None, commit=None)
    repo = hf_name(arch)
    revision = "main" if weights in (None, "DEFAULT") else weights
    found = _cached(repo, revision, with_weights=with_weights)
    if found is not None:
        return found
    cache = hub_cache()
    where = cache / f"models--{repo.replace('/', '--')}"
    if not downloads_allowed():
        what = "weights" if with_weights else "config.json"
        raise WeightsUnavailableError((at, (
            f"{arch}: the {what} of Hub repository {repo} (revision {revision}) are not in the local Hugging Face "
            f"cache under {where}; download them there (hf download {repo}{'' if revision == 'main' else ' --revision ' + revision}, "
            "or point HF_HOME / HF_HUB_CACHE at a cache that has them), set RECIPEC_ALLOW_DOWNLOAD=1"
            + (", or set model.weights: null" if with_weights else ""))))
    _download(repo, revision, with_weights=with_weights, at=at)
    found = _cached(repo, revision, with_weights=with_weights)
    if found is None:
        raise WeightsUnavailableError((at, (
            f"{arch}: Hub repository {repo} (revision {revision}) has no config.json"
            + (" or no weights file (model.safetensors, pytorch_model.bin)" if with_weights else ""))))
    return found


def _cached(repo: str, revision: str, *, with_weights: bool) -> HFFiles | None:
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415  (comes with the hf extra)

    config = try_to_load_from_cache(repo, CONFIG, cache_dir=hub_cache(), revision=revision)
    if not isinstance(config, str):
        return None
    folder = Path(config).parent  # <cache>/models--org--name/snapshots/<commit>
    if with_weights and weights_file(folder) is None:
        return None
    return HFFiles(folder=folder, repo=repo, commit=folder.name)


def _download(repo: str, revision: str, *, with_weights: bool, at: tuple[str, ...]) -> None:
    from huggingface_hub import snapshot_download  # noqa: PLC0415  (comes with the hf extra)

    patterns = [CONFIG, PROCESSOR] + (_SAFETENSORS if with_weights else [])
    try:
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=hub_cache(), allow_patterns=patterns))
        if with_weights and weights_file(folder) is None:  # no safetensors: the .bin files, read safely
            snapshot_download(repo, revision=revision, cache_dir=hub_cache(), allow_patterns=_LEGACY)
    except Exception as exc:  # network, a missing repository or revision, disk: all mean "not available"
        raise WeightsUnavailableError((at, (
            f"hf/{repo}: could not download revision {revision} from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}); download it into the cache yourself"))) from exc


def weights_file(folder: Path) -> Path | None:
    """The weights of a ``save_pretrained`` folder: sharded or single safetensors first, then ``.bin``."""
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def read_json(folder: Path, name: str, *, required: bool) -> dict[str, Any] | None:
    """``folder/name`` as a JSON object (``config.json`` checked to name no code of its own), or None
    when it is not there and not ``required``.

    Raises:
        ModelError: at ``model.arch``: missing and required, unreadable, not an object, or a
            ``config.json`` with ``auto_map`` or without ``model_type``.
    """
    path = folder / name
    if not path.is_file():
        if required:
            raise ModelError((("model", "arch"), f"{folder} has no {name}"))
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError((("model", "arch"), f"{path} cannot be read as JSON ({exc})")) from exc
    problem = hf_config_problem(data, str(path)) if name == CONFIG else (
        None if isinstance(data, dict) else f"{path} is not a JSON object")
    if problem:
        raise ModelError((("model", "arch"), problem))
    return data
