"""What a build leaves besides checkpoints: provenance, the exports and the training curves."""

from __future__ import annotations

import contextlib
import copy
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from recipec._atomic import atomic_path
from recipec.convert import hub as hub_folder
from recipec.convert.onnx import to_onnx
from recipec.convert.pt2 import to_pt2
from recipec.errors import ExportError
from recipec.model.families import architecture_record
from recipec.provenance import environment, export_metadata, file_digest, now_utc, versions
from recipec.recipe.load import PATH_FIELDS
from recipec.recipe.spec import Recipe
from recipec.weights import formats

__all__ = ["epoch_line", "export_model", "in_background", "plot_curves", "provenance_of"]


def provenance_of(recipe: Recipe, compiled: Any, data: Any, history: list[dict[str, Any]],
                  selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the exports and the card record of where the model came from.

    ``selection``: which weights were exported and why (:func:`recipec.train.select.export_state`): ``weights``
    (best, last or ema), ``epoch``, ``metric``, ``mode``, ``value``, and a ``note`` when best fell back to last.
    """
    source = None
    if recipe.source is not None and recipe.source.checkpoint:
        path = Path(recipe.source.checkpoint)
        source = {"checkpoint": str(path), "sha256": file_digest(path) if path.is_file() else None,
                  "state_dict_key": compiled.reports["source"].state_dict_key}
    weights = compiled.weights_info
    final = history[-1] if history else {}
    return {
        "name": recipe.name,
        "time": now_utc(),
        "base_model": {"arch": recipe.model.arch, "weights": weights.name if weights else None,
                       "url": weights.url if weights else None} | (
            # timm's pretrained_cfg: input size, interpolation, crop_pct the weights were trained with
            {"preprocessing": weights.preprocessing} if getattr(weights, "preprocessing", None) else {}),
        "source": source,
        "data": data.info,
        "classes": data.classes,
        "normalization": (None if data.normalization is None else
                          {"mean": list(data.normalization[0]), "std": list(data.normalization[1])}),
        # where the recipe's paths pointed on the building machine (recipe.yaml holds them relative to the run)
        "paths": _recipe_paths(recipe),
        "frozen_groups": [g.name for g in compiled.groups if g.name not in final.get("trainable_groups", [])],
        "epochs_trained": len(history),
        "final_metrics": {k: final.get(k) for k in ("train_loss", "val_loss", "val_acc")},
        "selection": selection,
        "versions": versions(),
        "environment": environment(str(compiled.device)),
    }


def _recipe_paths(recipe: Recipe) -> dict[str, str]:
    data = recipe.model_dump(mode="python")
    found = {}
    for path in PATH_FIELDS:
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str) and node:
            found[".".join(map(str, path))] = node
    return found


def export_model(recipe: Recipe, model: torch.nn.Module, run: Path, recipe_yaml: str,
            provenance: dict[str, Any]) -> list[Path]:
    """Write the exports named by ``export.formats`` into ``run``, each carrying recipe and provenance, and
    what rebuilds the architecture from the file alone (an ``hf/`` model's config: ``hf_model``)."""
    provenance = {**provenance, **architecture_record(model, recipe.model.arch)}
    dtype = getattr(torch, recipe.export.dtype)
    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    metadata = export_metadata(recipe_yaml=recipe_yaml, provenance=provenance)
    written: list[Path] = []
    try:
        for fmt in recipe.export.formats:
            if fmt == "hub":  # written last: the other exports are linked into the folder
                continue
            if fmt == "onnx":
                # exported in float32 whatever export.dtype says: fp16 graphs often fail on onnxruntime CPU
                written.append(to_onnx(copy.deepcopy(model).float().cpu().eval(), recipe, run / "model.onnx", metadata))
                continue
            if fmt == "pt2":  # float32 on the CPU too: the graph is what any machine runs
                written.append(to_pt2(copy.deepcopy(model).float().cpu().eval(), recipe, run / "model.pt2", metadata))
                continue
            target = run / ("model.safetensors" if fmt == "safetensors" else "model.pt")
            shard = recipe.export.shard_size if fmt == "safetensors" else None
            written += formats.save(state, target, metadata=metadata, shard_size=shard)
        if "hub" in recipe.export.formats:
            written += hub_folder.save(run, model, state, arch=recipe.model.arch, kwargs=recipe.model.kwargs,
                                       metadata=metadata, provenance=provenance, exports=written)
    except OSError as exc:
        raise ExportError(f"writing the exports to {run} failed: {exc}") from exc
    return written


def plot_curves(history: list[dict[str, Any]], path: Path, selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loss and accuracy per epoch, as a PNG (atomic), with the schedule's events marked on both panels:
    a dotted grey line where groups were unfrozen, and a dashed red one at the exported epoch.

    Args:
        history: the metrics of every epoch (``metrics.jsonl``).
        path: the PNG to write.
        selection: which weights were exported (:func:`recipec.train.select.export_state`: ``weights``,
            ``epoch``, ``metric``, ``value``); nothing is marked without it.

    Returns:
        What was marked, read back from the figure: ``{"unfreeze": {epoch: label}, "selected": {epoch: label}}``.
    """
    import matplotlib  # noqa: PLC0415 (matplotlib: only when a picture is drawn)
    import matplotlib.ticker  # noqa: PLC0415 (matplotlib: only when a picture is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (matplotlib: only when a picture is drawn)

    epochs = [m["epoch"] for m in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    try:
        left.plot(epochs, [m["train_loss"] for m in history], marker="o", label="train loss")
        if any(m["val_loss"] is not None for m in history):
            left.plot(epochs, [m["val_loss"] for m in history], marker="o", label="val loss")
            right.plot(epochs, [m["val_acc"] for m in history], marker="o", color="tab:green", label="val accuracy")
        for i, (epoch, label) in enumerate(_unfrozen(history).items()):
            for axis in (left, right):  # one legend entry for the style; each line names its groups beside it
                axis.axvline(epoch, color="0.55", linestyle=":", linewidth=1.2, gid=f"unfreeze:{epoch}:{label}",
                             label="groups unfrozen" if i == 0 and axis is left else None)
            left.text(epoch, 0.97, label + " ", transform=left.get_xaxis_transform(), rotation=90, ha="right",
                      va="top", fontsize=7, color="0.35")
        chosen = _chosen(selection)
        if chosen is not None:
            epoch, label = chosen
            for axis in (left, right):  # the label in the right panel's legend (the metric's side)
                axis.axvline(epoch, color="tab:red", linestyle="--", linewidth=1.2, gid=f"selected:{epoch}:{label}",
                             label=label if axis is right else None)
        for axis in (left, right):
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        right.set_ylim(0, 1)
        for axis in (left, right):
            if axis.get_legend_handles_labels()[0]:  # nothing labelled: no legend (matplotlib would warn)
                axis.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        marked: dict[str, dict[int, str]] = {"unfreeze": {}, "selected": {}}
        for line in left.get_lines():
            kind, _, rest = str(line.get_gid() or "").partition(":")
            if kind in marked:
                epoch_text, _, label = rest.partition(":")
                marked[kind][int(epoch_text)] = label
        return marked
    finally:
        plt.close(fig)


def _unfrozen(history: list[dict[str, Any]]) -> dict[int, str]:
    """Epoch -> "unfreeze a, b" for every epoch whose trainable groups grew (the schedule's freeze.unfreeze/gradual)."""
    found = {}
    for before, now in itertools.pairwise(history):
        added = [g for g in now.get("trainable_groups") or [] if g not in (before.get("trainable_groups") or [])]
        if added:
            found[int(now["epoch"])] = "unfreeze " + ", ".join(added)
    return found


def _chosen(selection: dict[str, Any] | None) -> tuple[int, str] | None:
    """The exported epoch and its label ("exported: epoch 3, best val_acc 0.912"), or None."""
    if not selection or selection.get("epoch") is None:
        return None
    epoch, weights, value = int(selection["epoch"]), selection.get("weights"), selection.get("value")
    if weights == "model":  # export.weights: model is the best epoch's weights (train.select)
        why = f"best {selection.get('metric')}" + (f" {value:.3g}" if isinstance(value, (int, float)) else "")
    else:
        why = {"last": "the last epoch", "ema": "the EMA weights at the end"}.get(str(weights), str(weights))
    return epoch, f"exported: epoch {epoch}, {why}"


@contextlib.contextmanager
def in_background(draw: Callable[..., Any], *args: Any) -> Iterator[None]:
    """``draw(*args)`` in a thread while the block runs; at its end the thread is joined (a failure, or
    Ctrl-C, still leaves the whole file) and its error raised. matplotlib alone takes about a second to
    import: a picture drawn first would hold back the first training step by that much."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            draw(*args)
        except BaseException as exc:  # raised in the building thread, below
            failed.append(exc)

    thread = threading.Thread(target=run, name="recipec-picture")
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise failed[0]


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    """The line a build prints at the end of an epoch."""
    val = "" if m["val_loss"] is None else f"  val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.3f}"
    if m.get("val_map") is not None:  # task: multilabel (val_acc is exact match)
        val += f"  val_map {m['val_map']:.3f}  val_f1_micro {m['val_f1_micro']:.3f}"
    # the recipe's 0-based epoch (freeze.unfreeze, metrics.jsonl, curves), then the count for people
    return (f"epoch {m['epoch']} ({m['epoch'] + 1} of {epochs})  train_loss {m['train_loss']:.4f}{val}  "
            f"trainable {', '.join(m['trainable_groups'])}  ({m['seconds']:.1f} s)")
