"""The model card: a finished run directory rendered through a Jinja2 template into README.md.

Everything the card says is read back from the run directory (``recipe.yaml``, ``plan.json``,
``metrics.jsonl``, the provenance inside the exports, ``curves.png``), so ``recipec card``
re-renders any finished run, with the shipped template or another one. What the run does not
know is left out of the card rather than written as a placeholder.

Torch is imported only inside :func:`card_context`, to read an export's metadata.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
import yaml

from recipec import _json as clean_json
from recipec._atomic import atomic_write_text
from recipec._files import check_output, check_regular
from recipec.card._sandbox import LimitedSandbox, TemplateLimit, render_limited
from recipec.errors import RecipeError, RunDirectoryError
from recipec.recipe._yaml import read_embedded

__all__ = ["DEFAULT_TEMPLATE", "card_context", "render_card", "write_card"]

# recipec/templates is a symlink to the repository's templates/ in a source tree, a copy when installed.
DEFAULT_TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "card.md.j2"
_EXPORTS = ("model.safetensors", "model.safetensors.index.json", "model.pt", "model.onnx")
_KEY_ROWS = 20  # non-loaded keys listed per load stage; the rest are counted
_FATES = ("loaded", "adapted", "renamed", "mismatched", "missing", "new", "defaulted", "excluded", "unexpected")
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


def card_context(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything a card template can use, read from a run directory alone.

    Raw documents (``recipe``, ``plan``, ``metrics``, ``provenance``) sit beside digested
    sections (``model``, ``data``, ``training``, ``transfer``, ``evaluation``). Every key is
    always present; what the run does not know is ``None`` or empty.

    Args:
        run_dir: the directory ``recipec build`` wrote.

    Returns:
        The template context (plain data).

    Raises:
        RunDirectoryError: the directory, its recipe.yaml or metrics.jsonl is missing or unreadable.
        CheckpointError: an export's metadata is damaged.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirectoryError(f"{run}: no such run directory; give the directory `recipec build` wrote (--out)")
    missing = [name for name in ("recipe.yaml", "metrics.jsonl") if not (run / name).is_file()]
    if missing:
        raise RunDirectoryError([f"{run}: {name} is missing; a card needs a run that finished at least one epoch"
                                 for name in missing])
    recipe_yaml = (run / "recipe.yaml").read_text(encoding="utf-8")
    recipe = _parse(run / "recipe.yaml", recipe_yaml, lambda text: read_embedded(text, str(run / "recipe.yaml")))
    metrics = [_parse(run / "metrics.jsonl", line, json.loads)
               for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    if not metrics:
        raise RunDirectoryError(f"{run / 'metrics.jsonl'}: no epoch finished; build the run before its card")
    plan_file = run / "plan.json"
    plan = _parse(plan_file, plan_file.read_text(encoding="utf-8"), json.loads) if plan_file.is_file() else {}
    present = [name for name in _EXPORTS if (run / name).is_file()]
    provenance = _export_provenance(run, present)

    card = recipe.get("card") or {}
    model = _model(recipe, plan, provenance, metrics[-1])
    return {
        "name": recipe.get("name") or run.name,
        "recipe": recipe, "recipe_yaml": recipe_yaml, "plan": plan, "metrics": metrics, "provenance": provenance,
        "license": card.get("license"), "intended_use": card.get("intended_use"), "limitations": card.get("limitations"),
        "tags": list(dict.fromkeys(["recipec", "image-classification", *(card.get("tags") or [])])),
        "base_model": model["source"]["checkpoint"] if model["source"] else model["weights"],
        "model": model,
        "data": _data(recipe, plan.get("data") or provenance.get("data") or {}, model["weights"]),
        "training": _training(recipe, plan, metrics),
        "transfer": _transfer(plan),
        "task": recipe.get("task") or "multiclass", "multilabel": recipe.get("multilabel") or {"threshold": 0.5},
        "evaluation": {"final": metrics[-1], "has_val": metrics[-1].get("val_acc") is not None, "epochs": metrics,
                       "results": _eval_results(run)},
        "curves": "curves.png" if (run / "curves.png").is_file() else None,
        "plan_png": "plan.png" if (run / "plan.png").is_file() else None,  # runs before plan.png had none
        "exports": _exported_files(run, present),
        "load_file": next((name for name in present if name != "model.onnx"), None),
        "usage": _usage(recipe, provenance, present),
        "versions": provenance.get("versions") or {}, "time": provenance.get("time"),
        "environment": provenance.get("environment") or {},
    }


def render_card(run_dir: str | os.PathLike[str], *, template: str | os.PathLike[str] | None = None) -> str:
    """Render the model card of a run.

    Args:
        run_dir: the directory ``recipec build`` wrote.
        template: a Jinja2 template file; default: the recipe's ``card.template``, else the shipped card.

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
                                    *_EXPORTS)),
                run / "checkpoints", template, DEFAULT_TEMPLATE])
    text = render_card(run_dir, template=template)
    atomic_write_text(target, text)
    return target


# --------------------------------------------------------------------------- reading the run


def _parse(path: Path, text: str, parse: Any) -> Any:
    try:
        value = parse(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RunDirectoryError(f"{path}: not valid {path.suffix[1:].upper()} ({exc}); the run directory is damaged") from exc
    if not isinstance(value, dict):
        raise RunDirectoryError(f"{path}: expected an object, got {type(value).__name__}; the run directory is damaged")
    return value


def _exported_files(run: Path, present: list[str]) -> list[dict[str, Any]]:
    """Every exported file with its size and sha256, hashed from the disk now (shards after their index)."""
    from recipec.card.provenance import file_digest

    names: list[str] = []
    for name in present:
        names.append(name)
        if name.endswith(".index.json"):
            from recipec._files import expand_inputs

            names += [shard.name for shard in expand_inputs([run / name])[1:] if shard.is_file()]
    return [{"file": name, "bytes": (run / name).stat().st_size, "sha256": file_digest(run / name)}
            for name in dict.fromkeys(names)]


def _eval_results(run: Path) -> list[dict[str, Any]]:
    """What ``recipec eval`` wrote (``eval/<split>.json``): test first, then val, then any other."""
    folder = run / "eval"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        result = _parse(path, path.read_text(encoding="utf-8"), json.loads)
        if not {"split", "n", "accuracy"} <= set(result):
            continue
        macro = result.get("macro") if isinstance(result.get("macro"), dict) else {}
        found.append({"split": result["split"], "n": result["n"], "accuracy": result["accuracy"],
                      "top5": result.get("top5"), "loss": result.get("loss"), "macro_f1": macro.get("f1"),
                      "weighted_f1": (result.get("weighted") if isinstance(result.get("weighted"), dict) else {}).get("f1"),
                      "file": f"eval/{path.name}",
                      "export": result.get("export"),
                      "override": (result.get("data") if isinstance(result.get("data"), dict) else {}).get("override"),
                      "confusion": f"eval/{path.stem}-confusion.png" if (folder / f"{path.stem}-confusion.png")
                      .is_file() else None})
    order = {"test": 0, "val": 1}
    return sorted(found, key=lambda r: (order.get(r["split"], 2), r["file"]))


def _usage(recipe: dict[str, Any], provenance: dict[str, Any], present: list[str]) -> dict[str, Any]:
    """How to use the exports: which file, whether a factory must be trusted, the preprocessing in words."""
    from recipec.errors import CheckpointError
    from recipec.usage import describe_preprocessing, preprocessing_of

    arch = str((recipe.get("model") or {}).get("arch") or "")
    try:
        words = describe_preprocessing(preprocessing_of(None, provenance)) if provenance else None
    except (CheckpointError, KeyError, TypeError, ValueError):  # an export that records no preprocessing
        words = None
    return {"file": next((n for n in present if n != "model.onnx"), None) or (present[0] if present else None),
            "onnx": "model.onnx" in present, "factory": arch if ":" in arch else None, "preprocessing": words}


def _export_provenance(run: Path, exports: list[str]) -> dict[str, Any]:
    readable = [name for name in exports if name != "model.onnx"]
    if not readable and "model.onnx" in exports:
        from recipec.card.provenance import read_export_metadata
        from recipec.weights.onnx import read_onnx

        return read_export_metadata({p.key: p.value for p in read_onnx(run / "model.onnx").metadata_props})[1]
    if not readable:
        return {}
    from recipec.card.provenance import read_export_metadata
    from recipec.weights.formats import read_metadata  # imports torch: only here, never at module level

    return read_export_metadata(read_metadata(run / readable[0]))[1]


def _shown(path: str | None) -> str | None:
    # Cards get shared: an absolute path would name the machine's directories, its file name suffices.
    return None if path is None else (Path(path).name if os.path.isabs(path) else path)


def _model(recipe: dict[str, Any], plan: dict[str, Any], prov: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    spec = recipe.get("model") or {}
    weights = ((plan.get("weights") or {}).get("name") or (prov.get("base_model") or {}).get("weights")
               or spec.get("weights"))
    source = prov.get("source") or {}
    pinned = recipe.get("source") or {}
    report = (plan.get("reports") or {}).get("source") or {}
    checkpoint = source.get("checkpoint") or pinned.get("checkpoint") or report.get("source")
    trainable = (plan.get("parameters") or {}).get("trainable") or []
    return {
        "arch": spec.get("arch"), "kwargs": spec.get("kwargs") or {}, "in_channels": spec.get("in_channels", 3),
        "head": plan.get("head"), "weights": weights,
        "preprocessing": ((plan.get("weights") or {}).get("preprocessing")
                          or (prov.get("base_model") or {}).get("preprocessing")),
        "source": None if checkpoint is None else {
            "checkpoint": _shown(checkpoint), "sha256": source.get("sha256") or pinned.get("sha256"),
            "state_dict_key": source.get("state_dict_key") or report.get("state_dict_key")},
        "params_total": (plan.get("parameters") or {}).get("total"),
        "params_trainable_start": trainable[0] if trainable else None,
        "params_trainable_end": final.get("trainable_params"),
    }


def _data(recipe: dict[str, Any], info: dict[str, Any], weights: str | None) -> dict[str, Any]:
    spec = recipe.get("data") or {}
    dataset = spec.get("dataset") or info.get("dataset")
    root = spec.get("root") or info.get("root")
    normalize = info.get("normalize") or {}
    applied = normalize.get("applied", "none" if spec.get("normalize") == "none" else None)
    requested = str(normalize.get("requested") or spec.get("normalize"))
    sources = {"from_weights": f"the transforms of {weights}" if weights else "the normalisation recorded by the "
               "source checkpoint", "imagenet": "ImageNet statistics (data.normalize)"}
    classes = info.get("classes") or spec.get("classes") or []
    return {
        "dataset": dataset,
        # An image folder is known by its directory's name; its path is private.
        "name": Path(root).name if dataset == "imagefolder" and root else dataset,
        "classes": classes, "sizes": info.get("sizes") or {},
        "num_classes": len(classes) or ((recipe.get("model") or {}).get("head") or {}).get("num_classes"),
        "per_class": spec.get("per_class"), "val_fraction": spec.get("val_fraction"), "seed": recipe.get("seed"),
        "image_size": info.get("image_size") or spec.get("image_size"),
        "in_channels": info.get("in_channels") or (recipe.get("model") or {}).get("in_channels", 3),
        "normalization": applied if isinstance(applied, dict) else None,
        "normalization_from": sources.get(requested, requested),
        "resize": (info.get("resize") or {}).get("summary"),  # the resize applied (data.resize), one line
        "normalization_note": applied if isinstance(applied, str) else None,  # "none", "none (no pretrained weights)"
        "augment": info.get("augment", spec.get("augment") or []), "augment_skipped": info.get("augment_skipped") or [],
    }


def _training(recipe: dict[str, Any], plan: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    train = recipe.get("train") or {}
    groups = [{"name": g["name"], "params": g.get("params"),
               "trainable_from": next((e for e, t in enumerate(g.get("trainable") or []) if t), None),
               "lr": (g.get("lr") or [None])[0]} for g in plan.get("groups") or []]
    stopping = train.get("early_stopping") or {}
    fired = bool(metrics[-1].get("early_stopped")) and bool(stopping)
    return {
        "groups": groups, "optimizer": recipe.get("optimizer") or {},
        "batchnorm": (recipe.get("freeze") or {}).get("batchnorm"),
        "epochs_planned": train.get("epochs"), "epochs_trained": len(metrics),
        "early_stopped": {**stopping, "epoch": metrics[-1]["epoch"]} if fired else None,
        "batch_size": (recipe.get("data") or {}).get("batch_size"), "accumulate": train.get("accumulate", 1),
        "amp": train.get("amp", "none"), "grad_clip": train.get("grad_clip"),
    }


def _transfer(plan: dict[str, Any]) -> list[dict[str, Any]]:
    reports = plan["reports"] if "reports" in plan else ({"source": plan["load_report"]} if plan.get("load_report") else {})
    return [_stage(name, report) for name, report in reports.items()]


def _stage(name: str, r: dict[str, Any]) -> dict[str, Any]:
    def shape(s: list[int] | None) -> str:
        return "?" if s is None else "[" + ",".join(map(str, s)) + "]"

    def each(fate: str, why: str) -> list[tuple[str, str, str]]:
        side = "source" if fate == "unexpected" else "model"
        return [(k, side, why) for k in r.get(fate) or []]

    rows = [(a["key"], "model", f"adapted by {a['rule']} {shape(a.get('source_shape'))} → "
                                f"{shape(a.get('model_shape'))}") for a in r.get("adapted") or []]
    rows += [(m["key"], "model", f"shape mismatch: source {shape(m.get('source_shape'))} vs model "
                                 f"{shape(m.get('model_shape'))}, skipped") for m in r.get("mismatched") or []]
    rows += each("missing", "missing from the source, kept as initialised") + each("new", "new head, initialised fresh")
    defaulted = r.get("defaulted") or []
    if len(defaulted) > 3:
        rows.append((f"{defaulted[0]} and {len(defaulted) - 1} more", "model", "not in the source, default kept"))
    else:
        rows += each("defaulted", "not in the source, default kept")
    rows += [(e["key"], "source", f"excluded by `{e['pattern']}`" if e.get("pattern")
              else "excluded: matches no include pattern") for e in r.get("excluded") or []]
    rows += each("unexpected", "unexpected: not in the model")
    counts = r.get("counts") or {fate: len(r.get(fate) or []) for fate in _FATES}
    return {"stage": name, "source": _shown(r.get("source")) or None, "state_dict_key": r.get("state_dict_key") or None,
            "counts": {fate: n for fate, n in counts.items() if n or fate == "loaded"},
            "rows": rows[:_KEY_ROWS], "more": max(0, len(rows) - _KEY_ROWS)}


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
