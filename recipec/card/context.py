"""The model card's context: everything a card template can use, read back from a run directory.

``recipe.yaml``, ``plan.json``, ``metrics.jsonl``, ``eval/*.json`` and the provenance inside the
exports, digested into sections (model, data, training, transfer, evaluation, usage). What the
run does not know is ``None`` or empty, never a placeholder. :mod:`recipec.card.render` renders it.

The run's exported files are named once, here (:data:`EXPORT_FILES`). ``recipec card`` re-renders
without torch: the export readers (torch-bound) are imported only inside :func:`_export_provenance`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from recipec._files import expand_inputs
from recipec.errors import CheckpointError, RunDirectoryError
from recipec.inference.preprocessing import describe_preprocessing, preprocessing_of
from recipec.recipe.archs import family_name
from recipec.provenance import file_digest, read_export_metadata
from recipec.recipe._yaml import read_embedded

__all__ = ["EXPORT_FILES", "card_context"]

EXPORT_FILES = (  # the model exports of a run directory, in the order a user would pick one
    "model.safetensors", "model.safetensors.index.json", "model.pt", "model.onnx", "model.int8.onnx", "model.pt2")
_CHECKPOINTS = EXPORT_FILES[:3]  # read with recipec.weights.formats; the others are graphs
_KEY_ROWS = 20  # non-loaded keys listed per load stage; the rest are counted
_FATES = ("loaded", "adapted", "renamed", "mismatched", "missing", "new", "defaulted", "excluded", "unexpected")


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
    present = [name for name in EXPORT_FILES if (run / name).is_file()]
    provenance = _export_provenance(run, present)

    card = recipe.get("card") or {}
    model = _model(recipe, plan, provenance, metrics[-1])
    return {
        "name": recipe.get("name") or run.name,
        "recipe": recipe, "recipe_yaml": recipe_yaml, "plan": plan, "metrics": metrics, "provenance": provenance,
        "license": card.get("license"), "intended_use": card.get("intended_use"), "limitations": card.get("limitations"),
        "tags": list(dict.fromkeys(["recipec", "image-classification", *(card.get("tags") or [])])),
        "base_model": model["source"]["checkpoint"] if model["source"] else model["weights"],
        "library_name": {"timm": "timm", "hf": "transformers"}.get(family_name(str(model["arch"] or "")), "pytorch"),
        "hub": None,  # the hub folder's card: recipec.card.hub.hub_context
        "model": model,
        "data": _data(recipe, plan.get("data") or provenance.get("data") or {}, model["weights"]),
        "training": _training(recipe, plan, metrics),
        "transfer": _transfer(plan),
        "task": recipe.get("task") or "multiclass", "multilabel": recipe.get("multilabel") or {"threshold": 0.5},
        "evaluation": {"final": metrics[-1], "has_val": metrics[-1].get("val_acc") is not None, "epochs": metrics,
                       "results": _eval_results(run), "artifacts": _artifact_results(run)},
        "curves": "curves.png" if (run / "curves.png").is_file() else None,
        "plan_png": "plan.png" if (run / "plan.png").is_file() else None,  # runs before plan.png had none
        "exports": _exported_files(run, present),
        "load_file": next((name for name in present if not name.endswith(".onnx")), None),
        "usage": _usage(recipe, provenance, present),
        "versions": provenance.get("versions") or {}, "time": provenance.get("time"),
        "environment": provenance.get("environment") or {},
    }


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
    names: list[str] = []
    for name in present:
        names.append(name)
        if name.endswith(".index.json"):
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


def _artifact_results(run: Path) -> dict[str, Any] | None:
    """``eval/artifacts.json`` (every artifact evaluated after the exports, :mod:`recipec.pipeline.artifacts`)."""
    path = run / "eval" / "artifacts.json"
    if not path.is_file():
        return None
    found = _parse(path, path.read_text(encoding="utf-8"), json.loads)
    rows = found.get("artifacts")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise RunDirectoryError(f"{path}: 'artifacts' is not a list of objects; the run directory is damaged")
    return found


def _usage(recipe: dict[str, Any], provenance: dict[str, Any], present: list[str]) -> dict[str, Any]:
    """How to use the exports: which file, whether a factory must be trusted, the preprocessing in words."""
    arch = str((recipe.get("model") or {}).get("arch") or "")
    try:
        words = describe_preprocessing(preprocessing_of(provenance)) if provenance else None
    except (CheckpointError, KeyError, TypeError, ValueError):  # an export that records no preprocessing
        words = None
    return {"file": next((n for n in present if not n.endswith(".onnx")), None) or (present[0] if present else None),
            "onnx": "model.onnx" in present, "factory": arch if family_name(arch) == "factory" else None, "preprocessing": words}


def _export_provenance(run: Path, exports: list[str]) -> dict[str, Any]:
    readable = [name for name in exports if name in _CHECKPOINTS]
    if not readable and "model.pt2" in exports:
        from recipec.weights.pt2 import check  # noqa: PLC0415 (torch-bound, as below)

        return read_export_metadata(check(run / "model.pt2"))[1]
    if not readable and "model.onnx" in exports:
        from recipec.weights.onnx import read_onnx  # noqa: PLC0415 (torch-bound: only when a card reads an export)

        return read_export_metadata({p.key: p.value for p in read_onnx(run / "model.onnx").metadata_props})[1]
    if not readable:
        return {}
    from recipec.weights.formats import read_metadata  # noqa: PLC0415 (torch-bound, as above)

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
        "adapters": _adapters(plan, recipe),
    }


def _adapters(plan: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any] | None:
    """adapters: method, r, alpha, targets and the trainable share (None without adapters)."""
    a = plan.get("adapters")
    if not a:
        return None
    trainable = max(a["trainable"], default=0)
    return {"method": a["method"], "r": a["r"], "alpha": a["alpha"], "modules": a["modules"],
            "target": a["target"] if isinstance(a["target"], str) else ", ".join(a["target"]),
            "trainable": trainable, "total": a["total"], "share": trainable / a["total"] if a["total"] else 0.0,
            "export": (recipe.get("export") or {}).get("adapters", "merged")}


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
