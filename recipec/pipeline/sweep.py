"""``recipec sweep``: an Optuna study whose every trial is a recipe, built into its own run directory.

```
DIR/
  study.db          the study (SQLite), unless --storage names another
  trials/NNNN/      one run directory per trial (recipe.yaml, plan.json, metrics.jsonl, ...) + sweep.json
  summary.csv       one row per trial      best.yaml   the best trial's resolved recipe
  sweep.png         optimization history and parameter importances
```

A trial samples the space (:mod:`recipec.recipe.space`), turns the values into ``--set`` overrides
and loads the recipe: a combination the schema refuses is a failed trial with the reason, and
costs no training (so does one that :func:`build` refuses before its first epoch). Each epoch's
value of ``train.select`` is reported to Optuna and the pruner may stop the trial: the build
stops cleanly after that epoch's checkpoint (the run stays resumable) and ``sweep.json`` says so.

``--trials N`` is the size of the study, not of this process's share: running the command
again continues it, and several processes with the same ``--storage`` share it. A trial whose
process died (SIGKILL, a lost machine) stays RUNNING in the storage; the next sweep marks it
failed (``retried``, not counted) and runs its parameters again as a new trial (how a dead
process is told from a live one: :mod:`recipec.pipeline.sweep_trials`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipec.errors import RecipecError, RecipeError, RunDirectoryError
from recipec.pipeline.build import build, print_line
from recipec.pipeline.checks import check_inputs
from recipec.pipeline.sweep_trials import Heartbeat, Trial, reap_stale, this_host, write_trial_note
from recipec.recipe.load import load_recipe
from recipec.recipe.space import Dimension, load_space, override
from recipec.recipe.spec import Recipe
from recipec.tracking.sweep_runs import link_trial
from recipec.train.distributed import launch

__all__ = ["PRUNERS", "SweepConfig", "direction_of", "open_study", "sweep"]

PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class SweepConfig:
    """What ``recipec sweep`` was asked for, as plain values.

    ``storage``: an Optuna RDB URL (``sqlite:///...``, ``postgresql://...``) or ``journal:PATH``
    (Optuna's journal file storage); default ``sqlite:///DIR/study.db``. ``study``: default the
    recipe's name. ``timeout``: no trial starts after this many seconds.
    """

    recipe: str
    space: str
    trials: int
    out: Path
    overrides: tuple[str, ...] = ()
    storage: str | None = None
    study: str | None = None
    timeout: float | None = None
    pruner: str = "median"
    nproc: int = 1


def direction_of(recipe: Recipe) -> str:
    """``train.select`` as Optuna's direction (the mode left out: min for a loss, max otherwise)."""
    select = recipe.train.select
    mode = select.mode or ("min" if select.metric.removesuffix("_ema").endswith("loss") else "max")
    return "maximize" if mode == "max" else "minimize"


def sweep(config: SweepConfig, *, log: Callable[[str], None] | None = print_line) -> Any:
    """Run (or continue) the study until it holds ``config.trials`` trials, or ``config.timeout`` passes.

    Returns:
        The Optuna study (its results are written by :func:`recipec.pipeline.sweep_results.write_results`).

    Raises:
        RecipecError: a bad space, recipe or storage (exit 2), before any trial.

    Example:
        >>> study = sweep(SweepConfig("recipes/quickstart.yaml", "space.yaml", trials=6, out=Path("sweeps/qs")))
    """
    say = log or (lambda line: None)
    dims = load_space(config.space)
    base = load_recipe(config.recipe, config.overrides)
    check_inputs(base)  # data that is not there would fail every trial: say it once, now
    study, storage = open_study(config, base)
    optuna = _optuna()
    started = time.monotonic()
    while True:
        reap_stale(study, storage, _optuna())
        done = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING
                and not t.user_attrs.get("retried")]
        if len(done) >= config.trials:
            break
        if config.timeout is not None and time.monotonic() - started >= config.timeout:
            say(f"--timeout {config.timeout:g} s reached: no new trial starts ({len(done)} of {config.trials} in "
                "the study)")
            break
        trial = study.ask()
        result = _run_trial(trial, dims, config, base)
        say(_progress_line(result, config.trials, base.train.select.metric))
    return study


def open_study(config: SweepConfig, base: Recipe) -> tuple[Any, Any]:
    """The study named by ``config`` and its storage; the study is created when it is not there yet."""
    optuna = _optuna()
    url = config.storage or f"sqlite:///{config.out.resolve() / 'study.db'}"
    if config.storage is None:
        config.out.mkdir(parents=True, exist_ok=True)
    try:
        storage: Any
        if url.startswith("journal:"):
            backend = optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:"))
            storage = optuna.storages.JournalStorage(backend)
        else:
            storage = optuna.storages.RDBStorage(url)
        pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2),
                  "hyperband": optuna.pruners.HyperbandPruner,
                  "none": optuna.pruners.NopPruner}[config.pruner]()
        study = optuna.create_study(storage=storage, study_name=config.study or base.name, pruner=pruner,
                                    direction=direction_of(base), load_if_exists=True)
    except Exception as exc:  # a URL SQLAlchemy cannot read, a missing driver, a server not there: the input
        raise RecipecError(f"--storage {url}: cannot open the study: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if study.direction.name.lower() != direction_of(base):
        raise RecipeError(f"train.select: study {study.study_name!r} in {url} is to {study.direction.name.lower()}, "
                          f"this recipe's {base.train.select.metric} to {direction_of(base)}; name another --study")
    return study, storage


def _run_trial(trial: Any, dims: Sequence[Dimension], config: SweepConfig, base: Recipe) -> Trial:
    optuna = _optuna()
    started = time.monotonic()
    run = config.out / "trials" / f"{trial.number:04d}"
    params = {d.path: _suggest(trial, d) for d in dims}
    overrides = [*config.overrides, *(override(d.path, d.value_of(params[d.path])) for d in dims)]
    for key, value in {"host": this_host(), "pid": os.getpid(), "alive_at": time.time(),
                       "run": str(run.resolve()), "overrides": overrides}.items():
        trial.set_user_attr(key, value)
    result = Trial(trial.number, "failed", params, run=str(run))
    metric = base.train.select.metric
    heartbeat = Heartbeat(trial)
    try:
        recipe = load_recipe(config.recipe, overrides)  # validated before any compute
        reporter = _Reporter(trial, run, metric, recipe.train.epochs)
        if config.nproc > 1:
            _launched(config, run, overrides)
            reporter(None)  # its epochs, reported after the fact: pruning needs the build in this process
        else:
            build(recipe, out=run, log=reporter)
        values = [float(m[metric]) for m in reporter.history if m.get(metric) is not None]
        if not values:
            raise RecipecError(f"train.select: the run has no {metric} (no validation split?) to optimize")
        best = max(values) if direction_of(base) == "maximize" else min(values)
        result.state, result.value, result.epochs = "complete", float(best), len(reporter.history)
        state = optuna.trial.TrialState.COMPLETE
    except _Pruned as exc:
        result.state, result.epochs = "pruned", exc.epoch + 1
        result.reason = f"pruned after epoch {exc.epoch} ({config.pruner} pruner): {metric} {exc.value:.4g}"
        state = optuna.trial.TrialState.PRUNED
    except RecipecError as exc:
        result.reason = "; ".join(exc.problems)
        state = optuna.trial.TrialState.FAIL
    except Exception as exc:  # a bug: the trial is failed, not left RUNNING, and the error goes on
        trial.set_user_attr("reason", f"internal error: {type(exc).__name__}: {exc}")
        heartbeat.stop()
        trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    finally:
        heartbeat.stop()
    result.seconds = time.monotonic() - started
    if result.reason:
        trial.set_user_attr("reason", result.reason)
    trial.set_user_attr("epochs", result.epochs)
    trial.set_user_attr("seconds", round(result.seconds, 3))
    trial.study.tell(trial, result.value, state=state)
    write_trial_note(run, trial.number, trial.study.study_name, result)
    # with log.mlflow the trial's build made an MLflow run: a child of the study's parent run
    link_trial(run, study=trial.study.study_name, number=trial.number, state=result.state,
               objective=(metric, result.value))
    return result


def _launched(config: SweepConfig, run: Path, overrides: Sequence[str]) -> None:
    """The trial's build in ``config.nproc`` processes (torchrun's way, :func:`launch`)."""
    argv = ["build", config.recipe, "--out", str(run), "--quiet", *(a for o in overrides for a in ("--set", o))]
    code = launch(argv, config.nproc)
    if code:
        raise RunDirectoryError(f"the build of {run} under --nproc {config.nproc} exited with {code} (its errors "
                                "are printed above)")


class _Pruned(Exception):
    """The pruner's verdict (not an error), raised out of the build's epoch line."""

    def __init__(self, epoch: int, value: float) -> None:
        self.epoch, self.value = epoch, value
        super().__init__(f"pruned after epoch {epoch}")


class _Reporter:
    """The ``log`` a trial's build gets: at each line it reads the run's metrics.jsonl (written, with the
    epoch's checkpoint, before the build says the epoch's line) and reports each new epoch to Optuna;
    when the pruner says so it raises :class:`_Pruned`, which stops the build at a resumable point."""

    def __init__(self, trial: Any, run: Path, metric: str, epochs: int) -> None:
        self.trial, self.run, self.metric, self.epochs = trial, run, metric, epochs
        self.history: list[dict[str, Any]] = []

    def __call__(self, line: str | None) -> None:
        path = self.run / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        if len(lines) <= len(self.history):
            return
        for text in lines[len(self.history):]:
            metrics = json.loads(text)
            self.history.append(metrics)
            value = metrics.get(self.metric)
            if value is None:
                continue
            self.trial.report(float(value), int(metrics["epoch"]))
            last = metrics["epoch"] + 1 >= self.epochs or metrics.get("early_stopped")  # done anyway: exports follow
            if line is not None and not last and self.trial.should_prune():
                raise _Pruned(int(metrics["epoch"]), float(value))


def _suggest(trial: Any, dim: Dimension) -> Any:
    if dim.kind == "choice":
        return trial.suggest_categorical(dim.path, dim.choice_labels())
    if dim.kind == "int":
        return trial.suggest_int(dim.path, dim.args[0], dim.args[1])
    return trial.suggest_float(dim.path, dim.args[0], dim.args[1], log=dim.kind == "loguniform")


def _progress_line(t: Trial, total: int, metric: str) -> str:
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    value = f"  {metric} {t.value:.4f}" if t.value is not None else ""
    why = f"  ({t.reason})" if t.reason else ""
    return f"trial {t.number} (of {total})  {t.state}{value}  {params}  {t.epochs} epoch(s), {t.seconds:.1f} s{why}"


def _optuna() -> Any:
    try:
        import optuna  # noqa: PLC0415 (optuna: the sweep extra, only for recipec sweep)
    except ImportError:
        raise RecipecError("recipec sweep needs optuna: pip install 'recipec[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # recipec prints its own line per trial
    return optuna
