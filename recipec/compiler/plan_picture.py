"""The plan as a picture: per layer group, when it trains and at which learning rate, epoch by epoch.

One heat strip: a row per group (earliest at the top, the head at the bottom), a column per
epoch. A trainable epoch is coloured by its learning rate on a log scale (the colour bar); a
frozen epoch is light grey and hatched. The right-hand labels say when each group starts to
train, the peak lr it trains at (after a warmup, not the warmup's lr) and its lr at the last
epoch; with few enough cells each one carries its lr (at the epoch's start).
Below, the load report's counts (every stage: ``model.weights``, ``source``) in a text box.

Everything drawn comes from the plan dict (``plan.json``, :func:`recipec.pipeline.build.plan_recipe`),
so the picture shows exactly what the JSON says. ``recipec plan RECIPE --png FILE`` writes
it, a build writes ``RUN/plan.png`` beside ``plan.json``, and the card shows it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recipec._atomic import atomic_path

__all__ = ["PlanPicture", "plot_plan"]

_FATES = ("loaded", "adapted", "excluded", "mismatched", "missing", "unexpected", "new", "defaulted")
_CELL_LABELS = 120  # cells at most for an lr written in every trainable cell (readable sizes only)


@dataclass
class PlanPicture:
    """What :func:`plot_plan` drew, read back from the figure's artists (for tests and callers).

    Attributes:
        title: the figure's title.
        groups: the row labels, top to bottom (earliest group first).
        frozen: group -> the epochs drawn hatched as frozen.
        lr: group -> per epoch, the lr its cell is coloured with (None where the cell is frozen).
        counts: load stage -> fate -> count, as written in the text box.
        text: the text box's content.
        notes: group -> its right-hand label (when it starts to train, its peak lr, its last lr).
    """

    title: str
    groups: list[str]
    frozen: dict[str, list[int]] = field(default_factory=dict)
    lr: dict[str, list[float | None]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    text: str = ""
    notes: dict[str, str] = field(default_factory=dict)


def plot_plan(plan: dict[str, Any], path: str | os.PathLike[str] | None = None) -> PlanPicture:
    """Draw ``plan`` (the plan.json document) and write it as a PNG at ``path`` (atomically).

    Readable from 1 to 30 groups and 1 to 300 epochs: the figure grows with the groups, epoch
    ticks thin out, and the lr is written into the cells only while there are few.

    Args:
        plan: the plan dict (``groups`` with per-epoch ``trainable`` and ``lr``, ``epochs``,
            ``load_report``/``reports``, ``name``).
        path: where to write the PNG; None draws without writing.

    Returns:
        What was drawn, read back from the figure.

    Raises:
        OutputError: ``path`` is a directory or a special file.

    Example:
        >>> compiled, plan = plan_recipe(load_recipe("recipes/gradual-unfreezing.yaml"))
        >>> plot_plan(plan, "plan.png").groups
        ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head']
    """
    import matplotlib  # noqa: PLC0415 (matplotlib: only when a picture is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (matplotlib: only when a picture is drawn)
    from matplotlib import colors, ticker  # noqa: PLC0415 (matplotlib: only when a picture is drawn)
    from matplotlib.patches import Rectangle  # noqa: PLC0415 (matplotlib: only when a picture is drawn)

    rows = plan["groups"]
    epochs = int(plan["epochs"])
    names = [str(r["name"]) for r in rows]
    n = len(rows)
    # (groups, epochs): lr where the group trains, masked where frozen (or lr 0: no colour on a log scale)
    values = np.ma.masked_all((n, epochs))
    for i, row in enumerate(rows):
        for e in range(epochs):
            if row["trainable"][e] and row["lr"][e] is not None and row["lr"][e] > 0:
                values[i, e] = row["lr"][e]
    shown = values.compressed()
    low, high = (float(shown.min()), float(shown.max())) if shown.size else (1e-4, 1e-3)
    if high <= low * 1.0001:  # one value: a decade around it, so the colour bar has a scale
        low, high = low / math.sqrt(10), high * math.sqrt(10)

    counts, lines = _report_text(plan)
    # sizes in inches: title, the strip (grows with the groups), epoch axis, then text box and colour bar
    width, strip, box = 11.0, max(1.2, 0.3 * n), max(1.0, 0.3 + 0.16 * len(lines))
    height = 0.9 + strip + 0.75 + box + 0.2
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((1.3 / width, (0.2 + box + 0.75) / height, 6.3 / width, strip / height))
    text_ax = fig.add_axes((0.1 / width, 0.2 / height, 6.5 / width, box / height))
    bar_ax = fig.add_axes((7.0 / width, (0.2 + box - 0.45) / height, 3.5 / width, 0.18 / height))
    try:
        cmap = matplotlib.colormaps["viridis"]
        norm = colors.LogNorm(vmin=low, vmax=high)
        ax.set_facecolor("white")
        mesh = ax.pcolormesh(np.arange(epochs + 1) - 0.5, np.arange(n + 1) - 0.5, values, cmap=cmap, norm=norm,
                             edgecolors="white" if epochs <= 60 and n <= 30 else "none", linewidth=0.5)
        for i, row in enumerate(rows):  # one hatched rectangle per run of frozen epochs
            for start, stop in _runs([not t for t in row["trainable"]]):
                ax.add_patch(Rectangle((start - 0.5, i - 0.5), stop - start, 1, facecolor="0.9", edgecolor="0.6",
                                       hatch="///", linewidth=0.5, label=f"frozen:{i}:{start}:{stop}"))
        if epochs * n <= _CELL_LABELS:
            for i in range(n):
                for e in range(epochs):
                    if values.mask[i, e]:
                        continue
                    dark = norm(float(values[i, e])) < 0.6
                    ax.text(e, i, f"{float(values[i, e]):.1e}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        ax.set_xlim(-0.5, epochs - 0.5)
        ax.set_ylim(n - 0.5, -0.5)  # earliest group at the top
        ax.set_yticks(range(n), names, fontsize=10 if n <= 12 else 8)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=min(epochs, 15), integer=True))
        ax.set_xlabel("epoch (lr at its start; hatched grey = frozen)")
        right = ax.twinx()
        right.set_ylim(ax.get_ylim())
        peak_epoch = _peak_epoch(plan, epochs)
        right.set_yticks(range(n), [_row_note(row, epochs, peak_epoch) for row in rows], fontsize=9 if n <= 12 else 7)
        fig.colorbar(mesh, cax=bar_ax, orientation="horizontal")
        bar_ax.set_title("learning rate (log scale)", fontsize=9)

        title = f"plan: {plan.get('name', '')}"
        opt = plan.get("optimizer") or {}
        sched = (opt.get("scheduler") or {}).get("name")
        subtitle = ", ".join(str(s) for s in (
            plan.get("arch"), f"{epochs} epoch{'s' if epochs != 1 else ''}", opt.get("name"),
            f"lr {opt['lr']:g}" if opt.get("lr") is not None else None,
            f"lr_decay {opt['lr_decay']:g}" if opt.get("lr_decay") not in (None, 1) else None,
            f"{sched} schedule" if sched else None) if s)
        fig.suptitle(f"{title}\n{subtitle}", fontsize=11)

        text_ax.axis("off")
        text_ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8,
                     transform=text_ax.transAxes, bbox={"boxstyle": "round", "facecolor": "0.96", "edgecolor": "0.7"})
        if path is not None:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=100)
        drawn = _read_back(fig, ax, mesh, text_ax, names, epochs, counts)
        drawn.notes = dict(zip(drawn.groups, (label.get_text() for label in right.get_yticklabels())))
        return drawn
    finally:
        plt.close(fig)


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[start, stop) of every run of True."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _row_note(row: dict[str, Any], epochs: int, peak_epoch: float | None = None) -> str:
    start = next((e for e, t in enumerate(row["trainable"]) if t), None)
    if start is None:
        return "frozen throughout"
    peak, last = _peak(row, start, peak_epoch), row["lr"][epochs - 1]
    span = f"lr {peak:.2e}" if math.isclose(peak, last) else f"peak lr {peak:.2e} -> {last:.2e}"
    return f"from epoch {start}: {span}"


def _peak(row: dict[str, Any], start: int, peak_epoch: float | None) -> float:
    """The highest lr a group trains at. The table samples the start of each epoch, which the end of a
    warmup may fall between: a group that trains from before the schedule peaks (``peak_epoch``: the
    warmup's end, onecycle's ``pct_start``) reaches its own lr (``peak_lr``, where the schedule's factor
    is 1); one unfrozen later trains at most at the lr of its first epoch."""
    trained = max(lr for lr, t in zip(row["lr"], row["trainable"]) if t)
    if peak_epoch is not None and start <= peak_epoch and row.get("peak_lr") is not None:
        return max(trained, float(row["peak_lr"]))
    return trained


def _peak_epoch(plan: dict[str, Any], epochs: int) -> float | None:
    """Where the lr schedule of ``plan`` peaks, in epochs (None when the plan does not say)."""
    scheduler = (plan.get("optimizer") or {}).get("scheduler")
    if not isinstance(scheduler, dict):
        return None
    if scheduler.get("name") == "onecycle":
        return float(scheduler.get("pct_start") or 0.0) * epochs
    return float(scheduler.get("warmup_epochs") or 0.0)


def _report_text(plan: dict[str, Any]) -> tuple[dict[str, dict[str, int]], list[str]]:
    reports = plan.get("reports") or {}
    if not reports:
        return {}, ["load report: no weights loaded (random initialisation)",
                    f"{_params_line(plan)}"]
    counts: dict[str, dict[str, int]] = {}
    lines = []
    for stage, report in reports.items():
        counts[stage] = {fate: len(report.get(fate) or []) for fate in _FATES}
        source = str(report.get("source") or "-").replace("$", r"\$")  # a path is text, never mathtext
        if len(source) > 70:
            source = "..." + source[-67:]
        lines.append(f"load report ({stage}: {source})")
        lines.append("  " + "  ".join(f"{'mismatched (skipped)' if fate == 'mismatched' else fate} {k:,}"
                                      for fate, k in counts[stage].items() if k or fate == "loaded"))
    lines.append(_params_line(plan))
    return counts, lines


def _params_line(plan: dict[str, Any]) -> str:
    params = plan.get("parameters") or {}
    trainable = params.get("trainable") or [0]
    return (f"parameters {params.get('total', 0):,} total; trainable {trainable[0]:,} at epoch 0, "
            f"{trainable[-1]:,} at the last epoch")


def _read_back(fig: Any, ax: Any, mesh: Any, text_ax: Any, names: list[str], epochs: int,
               counts: dict[str, dict[str, int]]) -> PlanPicture:
    """What the figure's artists hold: row labels, hatched spans, cell colours and the text box."""
    groups = [label.get_text() for label in ax.get_yticklabels()]
    frozen: dict[str, list[int]] = {name: [] for name in groups}
    for patch in ax.patches:
        if patch.get_hatch():
            (x0, y0), width = patch.get_xy(), patch.get_width()
            start = round(x0 + 0.5)
            frozen[groups[round(y0 + 0.5)]] += list(range(start, start + round(width)))
    array = np.ma.masked_invalid(mesh.get_array()).reshape(len(names), epochs)
    mask = np.ma.getmaskarray(array)
    lr = {name: [None if mask[i, e] else float(array[i, e]) for e in range(epochs)] for i, name in enumerate(groups)}
    text = "\n".join(t.get_text() for t in text_ax.texts)
    return PlanPicture(title=fig._suptitle.get_text().split("\n", 1)[0], groups=groups,
                       frozen={k: sorted(v) for k, v in frozen.items()}, lr=lr, counts=counts, text=text)
