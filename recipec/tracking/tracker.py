"""Experiment tracking: each epoch's metrics in TensorBoard and MLflow (the ``log:`` recipe section).

Both backends are optional extras (``pip install 'recipec[tensorboard]'``, ``'recipec[mlflow]'``),
imported only when a recipe turns them on; only rank 0 logs.

What each one gets:

- **TensorBoard** (``RUN/tensorboard/``): every number of each ``metrics.jsonl`` line as a
  scalar at step = epoch, under the same name (``train_loss``, ``val_acc``, ...; the per-group
  learning rates as ``lr/<group>``); the plan and the recipe as text; the flattened recipe as
  hyperparameters (the HPARAMS dashboard, with the epoch metrics as its metrics).
- **MLflow** (``log.mlflow.tracking_uri``, default ``sqlite:///mlflow.db`` beside the run
  directory; experiment default the recipe's name): the flattened recipe as params, the
  same metrics at step = epoch, tags (base model, source sha256, recipec version), and at the
  end the exports, the card, ``plan.json``, ``metrics.jsonl``, ``recipe.yaml`` and the curves
  as artifacts.

Exactly one value per epoch and metric, across interrupts and ``--resume``: an epoch is
logged only once its training checkpoint is written (an epoch that a resume trains again is
never logged twice), and ``RUN/tracking.json`` records the MLflow run (resumed, not started
anew) and how many epochs TensorBoard holds. On resume every epoch of the checkpoint's
history that a backend has not seen is logged: MLflow is asked which (metric, step) pairs it
holds; TensorBoard opens with ``purge_step`` at the epochs it is known to hold, so anything
written after that (a kill between logging and recording it) is discarded by its readers
and written once more.

A tracking server is the run's guest, never its master: before anything is written, an
``http(s)`` tracking URI is probed (:mod:`recipec.tracking.probe`: one request, a few seconds)
and a server that does not answer as MLflow is an exit-2 error; every later call runs with
short timeouts (:mod:`recipec.tracking.mlflow`), and one that fails during the run prints one
warning on stderr, stops MLflow for the rest of the build and records ``"stopped"`` (the first
epoch MLflow lacks, what failed and why) in ``tracking.json``; the run itself finishes. A
TensorBoard write that fails (a full disk) is an ``OSError`` like any other write of the run:
the build fails (exit 1) and keeps its last checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recipec import _json as clean_json
from recipec._atomic import atomic_write_text
from recipec._files import read_regular
from recipec.errors import RecipecError, RecipeError, RunDirectoryError
from recipec.recipe.load import dump_recipe
from recipec.recipe.spec import Recipe
from recipec.tracking.metrics import failure_reason, flatten, scalars
from recipec.tracking.mlflow import MlflowRun, store_uri
from recipec.tracking.probe import check_store

__all__ = ["Tracking", "open_tracking"]

STATE = "tracking.json"
INSTALL = {"tensorboard": "pip install 'recipec[tensorboard]'", "mlflow": "pip install 'recipec[mlflow]'"}
_ARTIFACTS = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", "model.pt",
              "model.onnx", "model.onnx.data", "README.md", "plan.json", "metrics.jsonl", "recipe.yaml", "curves.png")


def open_tracking(recipe: Recipe, run: Path, *, main: bool = True, plan: Any = None, smoke: bool = False,
                  resume: bool = False) -> Tracking | None:
    """The trackers ``recipe.log`` turns on for the build into ``run``; None when none is, on ranks but 0,
    and in a smoke run (a quick check logs nowhere).

    Checks that the backends are installed and that MLflow's store can be used
    (:func:`recipec.tracking.probe.check_store`: an ``http(s)`` server is asked once, with a
    timeout of a few seconds); nothing is written. ``plan``: the compiled plan (its ``text()``
    goes to TensorBoard). ``resume``: continue what ``RUN/tracking.json`` records (a fresh build
    starts new runs).

    Raises:
        RecipeError: a backend is on but its package is missing (located at ``log.tensorboard`` / ``log.mlflow``).
        TrackingError: the MLflow server cannot be reached or is not one, or a SQLite store's directory
            cannot be created (located at ``log.mlflow.tracking_uri``).
    """
    spec = recipe.log
    if not main or smoke or not (spec.tensorboard or spec.mlflow is not None):
        return None
    wanted = [("tensorboard", spec.tensorboard), ("mlflow", spec.mlflow is not None)]
    missing = [name for name, on in wanted if on and importlib.util.find_spec(name) is None]
    if missing:
        raise RecipeError([(("log", name), f"needs the {name} extra, which is not installed: {INSTALL[name]} "
                                           f"(or turn it off)") for name in missing])
    if spec.mlflow is not None:
        check_store(store_uri(recipe, run), spec.mlflow.experiment or recipe.name)
    return Tracking(recipe, run, plan=plan, resume=resume)


class Tracking:
    """The trackers of one build: :meth:`log_epochs` after each checkpoint, :meth:`finish` after the exports."""

    def __init__(self, recipe: Recipe, run: Path, *, plan: Any = None, resume: bool = True) -> None:
        self.recipe, self.run, self.plan, self.resume = recipe, Path(run), plan, resume
        self._state: dict[str, Any] = {}
        self._tb: Any = None  # the SummaryWriter, opened at the first log
        self._tb_epochs = 0  # epochs TensorBoard holds
        self._ml: MlflowRun | None = None
        self._opened = False

    # ---------------------------------------------------------------- the build's hooks

    def start(self, plan: Any, history: Sequence[Mapping[str, Any]]) -> None:
        """Before training: open the writers, make or resume the MLflow run (a bad store fails now, not after an
        epoch). ``plan``: the compiled plan; ``history``: the epochs a resumed checkpoint holds."""
        self.plan = plan
        if not self._opened:
            self._open(history)

    def log_epochs(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Log every epoch of ``history`` a backend has not seen yet; call it after the checkpoint is written."""
        if not self._opened:
            self._open(history)
        if self._tb is not None and self._tb_epochs < len(history):
            if self._tb_epochs == 0:
                self._tb_header(history[0])
            for metrics in history[self._tb_epochs:]:
                for tag, value in scalars(metrics):
                    self._tb.add_scalar(tag, value, global_step=int(metrics["epoch"]))
            self._tb.flush()
            self._tb_epochs = len(history)
            self._state["tensorboard"] = {"epochs": self._tb_epochs}
        if self._ml is not None:
            try:
                self._ml.log_epochs(history)
                self._state["mlflow"] = self._ml.record()
            except Exception as exc:  # a server gone, a database locked: the run goes on without MLflow
                self._stop_mlflow(exc, f"logging epoch {self._ml.epochs}")
        self._save_state()

    def finish(self, history: Sequence[Mapping[str, Any]]) -> None:
        """After the exports and the card: any epoch not logged yet (a resume with nothing left to train), then
        MLflow gets the files as artifacts and its run ends; writers are closed."""
        self.log_epochs(history)
        if self._ml is not None:
            try:
                self._ml.finish([p for pattern in _ARTIFACTS for p in sorted(self.run.glob(pattern)) if p.is_file()])
            except Exception as exc:
                self._stop_mlflow(exc, "logging the run's files")
                self._save_state()
        self.close()

    def close(self) -> None:
        """Flush and close the writers (the MLflow run stays open for a resume)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _stop_mlflow(self, exc: Exception, doing: str) -> None:
        """One warning on stderr; MLflow is left alone for the rest of the build, and tracking.json says so."""
        assert self._ml is not None
        reason = failure_reason(exc)
        sys.stderr.write(f"warning: mlflow: {self._ml.uri} failed while {doing}: {reason}; tracking stopped, the "
                         "run's own files are complete\n")
        sys.stderr.flush()
        # at_epoch: the first epoch MLflow lacks (it holds every epoch before it)
        self._state["mlflow"] = self._ml.record() | {"stopped": {"at_epoch": self._ml.epochs, "while": doing,
                                                                   "reason": reason}}
        self._ml = None

    # ---------------------------------------------------------------- opening

    def _open(self, history: Sequence[Mapping[str, Any]]) -> None:
        self._opened = True
        self._state = _read_state(self.run / STATE) if self.resume else {}
        spec = self.recipe.log
        if spec.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (the tensorboard extra: only with log.tensorboard)

            folder = self.run / "tensorboard"
            saved = self._state.get("tensorboard")
            held = saved.get("epochs", 0) if isinstance(saved, dict) else 0
            self._tb_epochs = min(held if isinstance(held, int) and held >= 0 else 0, len(history))
            # anything at or after the epochs known to be held (a kill before tracking.json said so, a resume
            # from an older checkpoint) is hidden by TensorBoard's readers, then written once more
            purge = self._tb_epochs if folder.is_dir() and any(folder.glob("events.out.tfevents.*")) else None
            self._tb = SummaryWriter(log_dir=str(folder), purge_step=purge)
        if spec.mlflow is not None:
            self._ml = MlflowRun(self.recipe, self.run, self._state.get("mlflow"))

    def _tb_header(self, first: Mapping[str, Any]) -> None:
        """Step 0: the plan and the recipe as text, the flattened recipe as hyperparameters."""
        from torch.utils.tensorboard.summary import hparams  # noqa: PLC0415 (the tensorboard extra: only with log.tensorboard)

        if self.plan is not None:
            self._tb.add_text("plan", _preformatted(self.plan.text()), global_step=0)
        self._tb.add_text("recipe", _preformatted(dump_recipe(self.recipe)), global_step=0)
        values = {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in flatten(self.recipe).items()}
        # the metric names the HPARAMS dashboard shows for this run: the epoch scalars themselves
        for summary in hparams(values, {tag: 0.0 for tag, _ in scalars(first)}):
            self._tb.file_writer.add_summary(summary)

    def _save_state(self) -> None:
        atomic_write_text(self.run / STATE, clean_json.dumps(self._state, indent=2) + "\n")


def _preformatted(text: str) -> str:
    # TensorBoard renders text as Markdown: four spaces keep the plan's columns
    return "\n".join("    " + line for line in text.splitlines())


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(read_regular(path, what="tracking record", error=RunDirectoryError, max_bytes=1 << 20))
    except (OSError, ValueError, RecipecError):
        return {}  # unreadable: the backends start afresh (TensorBoard purges and rewrites what it held)
    return data if isinstance(data, dict) else {}
