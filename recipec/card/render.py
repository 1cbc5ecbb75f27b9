"""The model card: a finished run directory rendered through a Jinja2 template into README.md.

Everything the card says is read back from the run directory (``recipe.yaml``, ``plan.json``,
``metrics.jsonl``, the provenance inside the exports, ``curves.png``: :mod:`recipec.card.context`),
so ``recipec card`` re-renders any finished run, with the shipped template or another one. What
the run does not know is left out of the card rather than written as a placeholder.

Torch is imported only when :func:`card_context` reads an export's metadata.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

from recipec import _json as clean_json
from recipec._atomic import atomic_write_text
from recipec._files import check_output, check_regular
from recipec.card._sandbox import LimitedSandbox, TemplateLimit, render_limited
from recipec.card.hub import FOLDER, has_hub_folder, hub_context, link_card_files
from recipec.card.context import EXPORT_FILES, card_context
from recipec.errors import RecipeError, RunDirectoryError

__all__ = ["DEFAULT_TEMPLATE", "card_context", "render_card", "write_card", "write_hub_card"]

# recipec/templates is a symlink to the repository's templates/ in a source tree, a copy when installed.
DEFAULT_TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "card.md.j2"
MAX_TEMPLATE_BYTES = 1 << 20  # a card template is a page of Markdown


class _RegularFileLoader(jinja2.FileSystemLoader):
    """Templates (and what they include) are read only from regular files of bounded size: no FIFO, no device."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        for root in self.searchpath:
            candidate = os.path.join(root, *jinja2.loaders.split_template_path(template))
            if os.path.exists(candidate):
                check_regular(candidate, what="card template", error=RecipeError, max_bytes=MAX_TEMPLATE_BYTES)
                break
        return super().get_source(environment, template)


def render_card(run_dir: str | os.PathLike[str], *, template: str | os.PathLike[str] | None = None,
                hub: bool = False, repo_id: str | None = None) -> str:
    """Render the model card of a run.

    Args:
        run_dir: the directory ``recipec build`` wrote.
        template: a Jinja2 template file; default: the recipe's ``card.template``, else the shipped card.
        hub: the card of the run's hub folder (``RUN/hub/README.md``, see :mod:`recipec.card.hub`).
        repo_id: the Hub repository the hub folder goes to, named in its "How to use".

    Returns:
        The card as Markdown with YAML front matter.

    Raises:
        RunDirectoryError: see :func:`card_context`.
        RecipeError: the template cannot be read, does not parse or fails to render (its file and line named).

    Example:
        >>> print(render_card("runs/quickstart")[:3])
        ---
    """
    context = card_context(run_dir)
    if hub:
        context = hub_context(context, Path(run_dir), repo_id=repo_id)
    return _render(context, run_dir, template)


def _render(context: dict[str, Any], run_dir: str | os.PathLike[str], template: str | os.PathLike[str] | None) -> str:
    recorded = (context["recipe"].get("card") or {}).get("template")  # relative to the run directory, or absolute
    path = Path(template) if template is not None else (Path(run_dir) / recorded if recorded else DEFAULT_TEMPLATE)
    # sandboxed: a card template is text from a recipe, and may reach only the data it is given
    env = LimitedSandbox(  # bounded output, sizes, loops and time too (recipec.card._sandbox)
        loader=_RegularFileLoader(str(path.parent)), undefined=jinja2.StrictUndefined,
        autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(_FILTERS)
    try:
        text = render_limited(env.get_template(path.name), context)
    except TemplateLimit as exc:
        raise RecipeError(f"{_template_line(exc) or path}: card template: {exc}") from exc
    except RecursionError as exc:  # compiling a template nested thousands deep
        raise RecipeError(f"{path}: card template: nested too deeply to compile") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise RecipeError(f"{exc.filename or path}:{exc.lineno}: card template: {exc.message}") from exc
    except jinja2.TemplateNotFound as exc:
        if exc.name == path.name:
            raise RecipeError(f"card template {path}: not found; give an existing Jinja2 file "
                              "(--template or card.template)") from None
        raise RecipeError(f"{_template_line(exc) or path}: card template: {exc.name!r} is not in {path.parent}") from exc
    except (jinja2.TemplateError, jinja2.sandbox.SecurityError, TypeError, ValueError, LookupError, AttributeError, ArithmeticError) as exc:
        raise RecipeError(f"{_template_line(exc) or path}: card template: {exc}") from exc
    except OSError as exc:
        raise RecipeError(f"card template {path}: cannot be read ({exc})") from exc
    # Optional sections leave blank lines behind; Markdown reads one blank line the same as several.
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def write_card(run_dir: str | os.PathLike[str], *, template: str | os.PathLike[str] | None = None,
               out: str | os.PathLike[str] | None = None) -> Path:
    """Render the card and write it atomically to ``out`` (default ``run_dir/README.md``).

    Rendering finishes before anything is written, so a failing template leaves the old card.

    Returns:
        The path written.

    Raises:
        RunDirectoryError, RecipeError: see :func:`render_card`.
    """
    run = Path(run_dir)
    target = Path(run_dir) / "README.md" if out is None else check_output(
        out, what="the card", error=RunDirectoryError,  # never onto a file the card is made from
        inputs=[*(run / n for n in ("recipe.yaml", "metrics.jsonl", "plan.json", "plan.png", "curves.png",
                                    *EXPORT_FILES)),
                run / "checkpoints", template, DEFAULT_TEMPLATE])
    context = card_context(run_dir)
    atomic_write_text(target, _render(context, run_dir, template))
    if out is None and has_hub_folder(run):  # the hub folder's card follows the run's (recipec eval adds results)
        _write_hub_card(run, hub_context(context, run), template)
    return target


def write_hub_card(run_dir: str | os.PathLike[str], *, template: str | os.PathLike[str] | None = None,
                   repo_id: str | None = None) -> Path:
    """Render the card of the run's hub folder into ``RUN/hub/README.md`` (atomically), and link the files
    it shows (``curves.png``, ``plan.png``, ``eval/``) into the folder.

    :func:`write_card` does this whenever the run has a hub folder; ``recipec push`` does it again
    with the repository's name.

    Raises:
        RunDirectoryError: the run has no hub folder, or its ``config.json`` is damaged.
        RecipeError: the template fails (see :func:`render_card`).
    """
    run = Path(run_dir)
    if not has_hub_folder(run):
        raise RunDirectoryError(f"{run}: has no hub folder ({FOLDER}/config.json); add hub to export.formats "
                                "and build the run again")
    return _write_hub_card(run, hub_context(card_context(run), run, repo_id=repo_id), template)


def _write_hub_card(run: Path, context: dict[str, Any], template: str | os.PathLike[str] | None) -> Path:
    text = _render(context, run, template)  # rendered before anything is written
    link_card_files(context, run)
    atomic_write_text(run / FOLDER / "README.md", text)
    return run / FOLDER / "README.md"


# --------------------------------------------------------------------------- template helpers


def _template_line(exc: BaseException) -> str | None:
    # jinja2 rewrites tracebacks so that template frames carry the template's file and line.
    where, tb = None, exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.endswith(".py") and not name.startswith("<"):
            where = f"{name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _num(x: Any) -> str:
    """4 significant digits; integers with thousands separators; None as a dash."""
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
        return "—" if x is None else str(x)
    if isinstance(x, int) or abs(x) >= 1e4:
        return f"{x:,.0f}"
    if not math.isfinite(x) or x == 0:
        return f"{x:g}"
    return f"{x:.4g}" if abs(x) >= 1e-3 else f"{x:.3e}"


def _size(n: float) -> str:
    units = iter(("kB", "MB", "GB", "TB"))
    unit = "B"
    while n >= 1000 and unit != "TB":
        n, unit = n / 1000, next(units)
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


_FILTERS: dict[str, Any] = {
    "num": _num,
    "sci": lambda x: "—" if x is None else f"{x:.3e}",  # learning-rate columns line up
    "count": lambda n: "—" if n is None else f"{int(n):,}",
    "pct": lambda x: "—" if x is None else f"{100 * x:.2f} %",
    "sig4": lambda x: float(f"{x:.4g}"),
    "size": _size,
    # JSON is valid YAML: front matter values written this way always parse, whatever they hold.
    "json": lambda value: clean_json.dumps(value, ensure_ascii=False),  # NaN: null
    "cell": lambda value: str(value).replace("|", "\\|").replace("\n", " "),
}
