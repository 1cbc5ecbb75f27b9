"""``recipec push RUN REPO_ID``: upload ``RUN/hub/`` to the Hugging Face Hub.

The folder goes as it is (``export.formats: [hub]`` wrote it, :mod:`recipec.convert.hub`), in one commit,
with ``huggingface_hub`` (``create_repo(exist_ok=True)``, ``create_branch`` for ``--revision``,
``upload_folder``). Everything that can be checked here is, before anything is sent: the folder and its
files, the card (``huggingface_hub.ModelCard`` must parse it), the token (``HF_TOKEN``, or the file
``hf auth login`` writes). ``HF_ENDPOINT`` points the client at another Hub.

A card recipec rendered and nobody edited is rendered again with the repository's name, so its
"How to use" says ``hf-hub:REPO_ID``; a card edited by hand goes as it is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from recipec._version import __version__
from recipec.card.hub import FOLDER, HUB_FILES
from recipec.card.render import render_card, write_hub_card
from recipec.errors import HubError, RecipecError, RunDirectoryError, RunError

__all__ = ["INSTALL", "push"]

INSTALL = "pip install 'recipec[hub]'"
_NAMED = re.compile(r'snapshot_download\("([^"]+)"\)')  # the repository a rendered hub card names


def push(run_dir: str | os.PathLike[str], repo_id: str, *, revision: str | None = None, private: bool = False,
         commit_message: str | None = None) -> str:
    """Upload the run's hub folder to the Hub repository ``repo_id`` (created if needed).

    Args:
        run_dir: a run directory built with ``export.formats: [..., hub]``.
        repo_id: ``user/name`` or ``organization/name`` (a bare name goes to the token's user).
        revision: the branch to commit to (created from the default branch when missing); default ``main``.
        private: create the repository private (an existing repository keeps its visibility).
        commit_message: default ``Upload <run name> with recipec``.

    Returns:
        The URL of the commit.

    Raises:
        RunDirectoryError: no hub folder, or it lacks ``config.json``, ``model.safetensors`` or ``README.md``.
        HubError: huggingface_hub missing, a card that does not parse, no token, or the Hub refused
            the token or the repository (exit 2).
        RunError: the upload failed otherwise (the network, the server; exit 1).

    Example:
        >>> push("runs/flowers", "me/flowers-resnet18")
        'https://huggingface.co/me/flowers-resnet18/commit/3f1c...'
    """
    run = Path(run_dir)
    folder = run / FOLDER
    if not folder.is_dir():
        raise RunDirectoryError(f"{run}: has no hub folder ({FOLDER}/); add hub to export.formats "
                                "(export: {formats: [safetensors, hub]}) and build the run again")
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise RunDirectoryError(f"{folder}: lacks {', '.join(missing)}; "
                                + ("render the card with `recipec card " + str(run) + "`" if missing == ["README.md"]
                                   else "export the run again (recipec build --overwrite, export.formats with hub)"))
    hf = _import_hub()
    check_card(folder / "README.md", hf)
    token = hf.get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN, or run `hf auth login` (a token with write access)")
    api = hf.HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token, library_name="recipec",
                   library_version=__version__)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        _name_repository(run, repo)
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, revision=revision,
                                   commit_message=commit_message or f"Upload {run.resolve().name} with recipec",
                                   ignore_patterns=[".*", "*/.*"])  # the temporary files of an atomic write
    except RecipecError:
        raise
    except hf.errors.HfHubHTTPError as exc:
        raise _http_error(exc, repo_id) from exc
    except ValueError as exc:  # a repository id huggingface_hub refuses, metadata the Hub refuses
        raise HubError(f"the Hub refused {repo_id}: {' '.join(str(exc).split())}") from exc
    except OSError as exc:  # the network
        raise RunError(f"uploading {folder} to {repo_id} failed: {exc}; run `recipec push` again") from exc
    return str(commit.commit_url)


def check_card(path: Path, hf: Any = None) -> Any:
    """The card parsed by ``huggingface_hub.ModelCard``, its front matter round-tripped through ``ModelCardData``.

    Raises:
        HubError: the card does not parse, or its front matter is not a mapping.
    """
    hf = hf or _import_hub()
    try:
        card = hf.ModelCard.load(path)
        data = card.data.to_dict()
        hf.ModelCardData(**data).to_dict()
    except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise HubError(f"{path}: the card does not parse as a Hugging Face model card ({_first_line(exc)}); "
                       "render it again with `recipec card RUN`, or fix its front matter") from exc
    return card


def _name_repository(run: Path, repo: str) -> None:
    """Render the hub card again with the repository's name, unless someone edited it (it is not what
    recipec renders for the folder, or for the repository an earlier push named in it)."""
    readme = run / FOLDER / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
        named = _NAMED.search(text)
        untouched = any(render_card(run, hub=True, repo_id=earlier) == text
                        for earlier in dict.fromkeys([None, named[1] if named else None]))
    except (RecipecError, OSError, UnicodeDecodeError):
        return  # the card cannot be rendered here as it was: it goes as it is
    if untouched:
        write_hub_card(run, repo_id=repo)
        check_card(readme)


def _import_hub() -> Any:
    try:
        import huggingface_hub  # noqa: PLC0415 (optional extra: only `recipec push` needs it)
        import huggingface_hub.errors  # noqa: PLC0415 (as above)
    except ImportError as exc:
        raise HubError(f"recipec push needs huggingface_hub, which is not installed ({exc}); run: {INSTALL}") from exc
    return huggingface_hub


def _http_error(exc: Any, repo_id: str) -> RecipecError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    text = _first_line(exc)
    if status in (401, 403):
        return HubError(f"the Hub refused the token for {repo_id} (HTTP {status}: {text}); use a token with write "
                        "access to it (HF_TOKEN, or `hf auth login`)")
    if status in (400, 404, 409, 422):
        return HubError(f"the Hub refused {repo_id} (HTTP {status}: {text}); check the repository id (user/name) "
                        "and the revision")
    return RunError(f"uploading to {repo_id} failed (HTTP {status}: {text}); run `recipec push` again")


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
