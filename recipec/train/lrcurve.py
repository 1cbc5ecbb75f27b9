"""The learning-rate range test's result: the curve, the suggestion read from it, and how
``recipec lr-find`` prints and draws it (the test itself is :func:`recipec.pipeline.lrfind.find_lr`).

The suggestion is read from the smoothed curve (``beta`` :data:`BETA`, bias-corrected, as
fastai) by one of :data:`METHODS`, as fastai's and Lightning's ``lr_find`` read theirs.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recipec._atomic import atomic_path

__all__ = ["BETA", "DIVERGE", "METHODS", "LRFind", "ending", "format_lr_find", "plot_lr_find", "suggest_lr"]

METHODS = ("steepest", "valley", "minimum")
BETA = 0.98
DIVERGE = 4.0  # the test stops once the smoothed loss passes this multiple of its minimum (Lightning's rule)


@dataclass
class LRFind:
    """The result of a range test.

    Attributes:
        name: the recipe's name.
        method: how ``suggested_lr`` was read from the curve (:data:`METHODS`).
        suggested_lr: the suggested ``optimizer.lr``; None when the curve has too few points.
        suggested_index: its index in ``lrs``.
        group_lrs: group -> its lr at the suggestion (the epoch-0 trainable groups).
        ratios: group -> its lr divided by ``optimizer.lr`` (the discriminative ratios kept).
        trainable_groups: the groups trainable at epoch 0, the ones the test trains.
        lrs: ``optimizer.lr`` of every step taken.
        losses: the smoothed (bias-corrected) training loss at every step.
        raw_losses: the loss of every step as computed.
        stopped: why the test ended: ``end of range``, ``diverged`` (4x the best smoothed loss)
            or ``non-finite loss``.
    """

    name: str
    method: str
    suggested_lr: float | None
    suggested_index: int | None
    group_lrs: dict[str, float]
    ratios: dict[str, float]
    trainable_groups: list[str]
    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    stopped: str
    start_lr: float
    end_lr: float
    steps: int
    beta: float = BETA
    feature_cache: bool = False
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


def suggest_lr(lrs: list[float], losses: list[float], method: str = "steepest") -> int | None:
    """The index of the suggested lr on a range-test curve, or None when there are too few points.

    The first tenth of the points (at least one) and the last point are left out, as fastai
    and Lightning do: the start is dominated by smoothing warm-up, the end by divergence.

    - ``steepest`` (the default; Lightning's ``suggestion``): the lr where the smoothed loss falls
      fastest, the most negative slope ``d loss / d log10(lr)`` (``numpy.gradient``).
    - ``valley`` (fastai's default ``valley``): the longest valley, the longest decreasing
      subsequence of the curve from ``start`` to ``end``, and the point about 2/3 of the way down
      it: ``start + int((end - start) / 3) + int((end - start) / 6)``, fastai's formula.
    - ``minimum`` (fastai's ``minimum``): the lr at the lowest loss, divided by 10; the index is
      the point closest to that lr on a log scale.

    Args:
        lrs: increasing learning rates, one per step.
        losses: the smoothed loss at each.
        method: one of :data:`METHODS`.

    Returns:
        An index into ``lrs``, or None.

    Example:
        >>> lrs = [10 ** (-6 + i / 10) for i in range(60)]
        >>> losses = [2.0 - math.tanh(i / 10 - 3) for i in range(60)]   # falls fastest at i = 30
        >>> suggest_lr(lrs, losses)
        30
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    n = len(lrs)
    begin, end = max(1, n // 10), n - 1
    finite: list[int] = []  # the points before the first non-finite one
    for i in range(begin, end):
        if not (math.isfinite(losses[i]) and lrs[i] > 0):
            break
        finite.append(i)
    if len(finite) < 3:
        return None
    x = np.log10(np.asarray([lrs[i] for i in finite], dtype=float))
    y = np.asarray([losses[i] for i in finite], dtype=float)
    if method == "steepest":
        return finite[int(np.argmin(np.gradient(y, x)))]
    if method == "minimum":
        target = x[int(np.argmin(y))] - 1.0  # a tenth of the lr at the minimum
        return finite[int(np.argmin(np.abs(x - target)))]
    # valley: fastai's O(n^2) longest decreasing subsequence, then 2/3 of the way down
    m = len(y)
    lds, max_start, max_end = [1] * m, 0, 0
    for i in range(1, m):
        for j in range(i):
            if y[i] < y[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return finite[min(m - 1, max_start + int(sections) + int(sections / 2))]


def ending(result: LRFind) -> str:
    """Why the sweep ended, as a sentence for people (``result.stopped`` is the word for programs)."""
    if not result.lrs:
        return "the loss was not finite from the first step: no curve to read; lower --start-lr"
    last = result.lrs[-1]
    if result.stopped == "diverged":
        return (f"stopped at optimizer.lr {last:.2e}, where the smoothed loss passed {DIVERGE:g}x its minimum: the "
                "loss diverged, which is how a range test normally ends (from there on the lr is too high to train)")
    if result.stopped == "non-finite loss":
        return (f"stopped after optimizer.lr {last:.2e}: the next step's loss was infinite or NaN, which is how a "
                "range test normally ends (from there on the lr is too high to train)")
    return (f"the sweep reached --end-lr ({result.end_lr:.2e}) without the loss diverging: a higher --end-lr shows "
            "where it does")


def format_lr_find(result: LRFind, recipe_path: str = "RECIPE") -> str:
    """The text ``recipec lr-find`` prints: the curve at about a dozen points, then the suggestion."""
    lines = [f"lr-find: {result.name}  (on {result.device}; trains {', '.join(result.trainable_groups)} as at epoch 0"
             f"{', on cached head inputs' if result.feature_cache else ''})",
             f"{len(result.lrs)} of {result.steps} steps, optimizer.lr from {result.start_lr:.2e} to "
             f"{result.end_lr:.2e}; {ending(result)}", "",
             f"  {'optimizer.lr':>12}  {'loss':>9}  {'smoothed':>9}"]
    n = len(result.lrs)
    shown = sorted({round(i * (n - 1) / 11) for i in range(12)} | (
        {result.suggested_index} if result.suggested_index is not None else set())) if n else []
    for i in shown:
        mark = "  <- suggested" if i == result.suggested_index else ""
        lines.append(f"  {result.lrs[i]:>12.2e}  {result.raw_losses[i]:>9.4f}  {result.losses[i]:>9.4f}{mark}")
    lines.append("")
    if result.suggested_lr is None:
        lines.append("no suggestion: too few steps before the loss diverged; lower --start-lr or raise --steps")
        return "\n".join(lines)
    how = {"steepest": "where the smoothed loss falls fastest",
           "valley": "fastai's valley: 2/3 down the longest descent",
           "minimum": "a tenth of the lr at the lowest smoothed loss"}[result.method]
    lines.append(f"suggested optimizer.lr: {result.suggested_lr:.2e}  ({result.method}: {how})")
    lines.append("  per group: " + ", ".join(f"{g} {lr:.2e}" for g, lr in result.group_lrs.items()))
    lines.append(f"  recipec build {recipe_path} --set optimizer.lr={result.suggested_lr:.2e}")
    return "\n".join(lines)


def plot_lr_find(result: LRFind, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Draw the curve (log-scale lr) with the suggestion marked, as a PNG (atomic).

    Returns:
        What was drawn: ``{"x": lrs, "y": smoothed losses, "marked": suggested lr or None, "xscale": "log"}``.
    """
    import matplotlib  # noqa: PLC0415 (matplotlib: seconds to import, needed only to draw)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (after matplotlib.use)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        ax.plot(result.lrs, result.raw_losses, color="0.75", linewidth=0.8, label="loss per step")
        (curve,) = ax.plot(result.lrs, result.losses, color="tab:blue", label=f"smoothed (beta {result.beta:g})")
        marked = None
        if result.suggested_index is not None and result.suggested_lr is not None:
            marked = result.suggested_lr
            ax.axvline(marked, color="tab:red", linestyle="--", linewidth=1)
            ax.plot([marked], [result.losses[result.suggested_index]], "o", color="tab:red",
                    label=f"suggested {marked:.2e} ({result.method})")
        ax.set_xscale("log")
        finite = [v for v in result.losses if math.isfinite(v)]
        if finite:  # the raw losses of the last, diverging steps would squash the curve
            low, high = min(finite + [v for v in result.raw_losses if math.isfinite(v)]), max(finite)
            ax.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.15 * (high - low + 1e-12))
        ax.set_xlabel("optimizer.lr (the last group's; the others keep their ratios)")
        ax.set_ylabel("training loss")
        ax.set_title(f"lr-find: {result.name}  (trains {', '.join(result.trainable_groups)})", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        return {"x": np.asarray(curve.get_xdata(), dtype=float).tolist(),
                "y": np.asarray(curve.get_ydata(), dtype=float).tolist(),
                "marked": marked, "xscale": ax.get_xscale()}
    finally:
        plt.close(fig)

