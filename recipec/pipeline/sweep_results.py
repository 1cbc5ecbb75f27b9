"""What a sweep leaves beside its trials: summary.csv, best.yaml and sweep.png (see :mod:`recipec.pipeline.sweep`).

Written from the study itself (the storage), so a sweep shared between processes or machines
summarises every trial, whichever process ran it.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

from recipec._atomic import atomic_path, atomic_write_text
from recipec.pipeline.sweep import SweepConfig
from recipec.recipe.load import dump_recipe, load_recipe

__all__ = ["write_results"]

_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def write_results(study: Any, config: SweepConfig, metric: str) -> dict[str, Any]:
    """Write ``summary.csv``, ``best.yaml`` (when a trial completed) and ``sweep.png`` into ``config.out``.

    Returns:
        ``{"best": number or None, "objective": value or None, "files": [written paths]}``.
    """
    out = config.out
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    names = list(dict.fromkeys(name for t in trials for name in t.params))
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(["number", "state", *names, metric, "epochs", "seconds", "reason"])
    for t in trials:
        state = _STATES.get(t.state.name, t.state.name.lower())
        table.writerow([t.number, "retried" if t.user_attrs.get("retried") else state,
                        *(t.params.get(n, "") for n in names), "" if t.value is None else t.value,
                        t.user_attrs.get("epochs", ""), t.user_attrs.get("seconds", ""), t.user_attrs.get("reason", "")])
    atomic_write_text(out / "summary.csv", text.getvalue())
    files = [out / "summary.csv"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = study.best_trial if complete else None
    if best is not None:
        recipe = load_recipe(config.recipe, best.user_attrs.get("overrides", []))
        header = (f"# the best trial ({best.number}) of study {study.study_name!r}: {metric} {best.value:.6g}\n"
                  f"# run: recipec build {out / 'best.yaml'}\n")
        atomic_write_text(out / "best.yaml", header + dump_recipe(recipe, relative_to=out))
        files.append(out / "best.yaml")
    if complete:
        _plot(study, out / "sweep.png")
        files.append(out / "sweep.png")
    return {"best": None if best is None else best.number, "objective": None if best is None else best.value,
            "files": files}


def _plot(study: Any, path: Path) -> None:
    """Optuna's optimization history and parameter importances, side by side, in one PNG."""
    import matplotlib  # noqa: PLC0415 (matplotlib: only when a picture is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (matplotlib: only when a picture is drawn)
    from optuna.visualization import matplotlib as views  # noqa: PLC0415 (optuna: the sweep extra)

    pictures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib views experimental
        for draw in (views.plot_optimization_history, views.plot_param_importances):
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as exc:  # importances need two finished trials that differ
                pictures.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            figure: Any = axes.figure  # a Figure: Optuna draws each view into its own
            figure.set_size_inches(6.4, 4.8)
            figure.tight_layout()
            figure.canvas.draw()
            pictures.append(figure.canvas.buffer_rgba())
            plt.close(figure)
    whole, panels = plt.subplots(1, 2, figsize=(12.8, 4.8))
    for panel, picture in zip(panels, pictures):
        panel.set_axis_off()
        if isinstance(picture, str):
            panel.text(0.5, 0.5, f"(not drawn: {picture})", ha="center", va="center", wrap=True)
        else:
            panel.imshow(picture)
    whole.tight_layout()
    with atomic_path(path) as tmp:
        whole.savefig(tmp, format="png", dpi=100)
    plt.close(whole)
