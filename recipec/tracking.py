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
"""

from __future__ import annotations

import importlib.util
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from recipec import _json as clean_json
from recipec._atomic import atomic_write_text
from recipec.errors import RecipecError, RecipeError, RunDirectoryError, RunError
from recipec.recipe.spec import Recipe

__all__ = ["Tracking", "flatten", "open_tracking", "scalars"]

STATE = "tracking.json"
INSTALL = {"tensorboard": "pip install 'recipec[tensorboard]'", "mlflow": "pip install 'recipec[mlflow]'"}
_ARTIFACTS = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", "model.pt",
              "model.onnx", "model.onnx.data", "README.md", "plan.json", "metrics.jsonl", "recipe.yaml", "curves.png")


def open_tracking(recipe: Recipe, run: Path, *, main: bool = True, plan: Any = None, smoke: bool = False,
                  resume: bool = False) -> Tracking | None:
    """The trackers ``recipe.log`` turns on for the build into ``run``; None when none is, on ranks but 0,
    and in a smoke run (a quick check logs nowhere).

    Only checks that the backends are installed: nothing is written or contacted before the
    first :meth:`Tracking.log_epochs`. ``plan``: the compiled plan (its ``text()`` goes to TensorBoard).
    ``resume``: continue what ``RUN/tracking.json`` records (a fresh build starts new runs).

    Raises:
        RecipeError: a backend is on but its package is missing (located at ``log.tensorboard`` / ``log.mlflow``).
    """
    spec = recipe.log
    if not main or smoke or not (spec.tensorboard or spec.mlflow is not None):
        return None
    wanted = [("tensorboard", spec.tensorboard), ("mlflow", spec.mlflow is not None)]
    missing = [name for name, on in wanted if on and importlib.util.find_spec(name) is None]
    if missing:
        raise RecipeError([(("log", name), f"needs the {name} extra, which is not installed: {INSTALL[name]} "
                                           f"(or turn it off)") for name in missing])
    return Tracking(recipe, run, plan=plan, resume=resume)


class Tracking:
    """The trackers of one build: :meth:`log_epochs` after each checkpoint, :meth:`finish` after the exports."""

    def __init__(self, recipe: Recipe, run: Path, *, plan: Any = None, resume: bool = True) -> None:
        self.recipe, self.run, self.plan, self.resume = recipe, Path(run), plan, resume
        self._state: dict[str, Any] = {}
        self._tb: Any = None  # the SummaryWriter, opened at the first log
        self._tb_epochs = 0  # epochs TensorBoard holds
        self._ml: _Mlflow | None = None
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
            with self._ml.failing("logging metrics"):
                self._ml.log_epochs(history)
            self._state["mlflow"] = self._ml.record()
        self._save_state()

    def finish(self, history: Sequence[Mapping[str, Any]]) -> None:
        """After the exports and the card: any epoch not logged yet (a resume with nothing left to train), then
        MLflow gets the files as artifacts and its run ends; writers are closed."""
        self.log_epochs(history)
        if self._ml is not None:
            with self._ml.failing("logging the run's files"):
                self._ml.finish([p for pattern in _ARTIFACTS for p in sorted(self.run.glob(pattern)) if p.is_file()])
        self.close()

    def close(self) -> None:
        """Flush and close the writers (the MLflow run stays open for a resume)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ---------------------------------------------------------------- opening

    def _open(self, history: Sequence[Mapping[str, Any]]) -> None:
        self._opened = True
        self._state = _read_state(self.run / STATE) if self.resume else {}
        spec = self.recipe.log
        if spec.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            folder = self.run / "tensorboard"
            saved = self._state.get("tensorboard")
            held = saved.get("epochs", 0) if isinstance(saved, dict) else 0
            self._tb_epochs = min(held if isinstance(held, int) and held >= 0 else 0, len(history))
            # anything at or after the epochs known to be held (a kill before tracking.json said so, a resume
            # from an older checkpoint) is hidden by TensorBoard's readers, then written once more
            purge = self._tb_epochs if folder.is_dir() and any(folder.glob("events.out.tfevents.*")) else None
            self._tb = SummaryWriter(log_dir=str(folder), purge_step=purge)
        if spec.mlflow is not None:
            self._ml = _Mlflow(self.recipe, self.run, self._state.get("mlflow"))

    def _tb_header(self, first: Mapping[str, Any]) -> None:
        """Step 0: the plan and the recipe as text, the flattened recipe as hyperparameters."""
        from torch.utils.tensorboard.summary import hparams

        if self.plan is not None:
            self._tb.add_text("plan", _preformatted(self.plan.text()), global_step=0)
        from recipec.recipe.load import dump_recipe

        self._tb.add_text("recipe", _preformatted(dump_recipe(self.recipe)), global_step=0)
        values = {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in flatten(self.recipe).items()}
        # the metric names the HPARAMS dashboard shows for this run: the epoch scalars themselves
        for summary in hparams(values, {tag: 0.0 for tag, _ in scalars(first)}):
            self._tb.file_writer.add_summary(summary)

    def _save_state(self) -> None:
        atomic_write_text(self.run / STATE, clean_json.dumps(self._state, indent=2) + "\n")


class _Mlflow:
    """One MLflow run through ``MlflowClient`` (no global active run), resumed from ``tracking.json``."""

    def __init__(self, recipe: Recipe, run: Path, saved: Any) -> None:
        from mlflow import MlflowClient

        _quiet_mlflow_loggers()  # after the import: importing mlflow sets its loggers up

        spec = recipe.log.mlflow
        assert spec is not None
        self.flat, self.run = flatten(recipe), run
        self.params: set[str] = set()
        self.epochs = 0
        self.uri = spec.tracking_uri or f"sqlite:///{(run.resolve().parent / 'mlflow.db').as_posix()}"
        self.client = MlflowClient(tracking_uri=self.uri)
        saved = saved if isinstance(saved, dict) else {}
        self.run_id: str | None = None
        self.logged: set[tuple[str, int]] = set()
        try:
            if saved.get("tracking_uri") == self.uri and isinstance(saved.get("run_id"), str):
                self._resume(saved["run_id"])
            if self.run_id is None:
                self._start(recipe, spec.experiment or recipe.name)
        except RecipecError:
            raise
        except Exception as exc:  # MlflowException, a database or server error: the tracking store is unusable
            raise RunDirectoryError((("log", "mlflow", "tracking_uri"), (
                f"MLflow at {self.uri} failed: {_first_line(exc)}; check the URI (or turn log.mlflow off)"))) from exc

    def _resume(self, run_id: str) -> None:
        try:
            found = self.client.get_run(run_id)
        except Exception:  # deleted, or another store: a new run, with every epoch of the history
            return
        self.run_id = run_id
        self.params = set(found.data.params)
        for key in found.data.metrics:
            self.logged |= {(key, int(m.step)) for m in self.client.get_metric_history(run_id, key)}
        self.client.update_run(run_id, status="RUNNING")

    def _start(self, recipe: Recipe, experiment: str) -> None:
        from recipec.card.provenance import file_digest, versions

        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            # a SQLite store keeps artifacts beside its database, not in ./mlruns of whatever directory the build ran in
            where = None
            if self.uri.startswith("sqlite:///"):
                where = (Path(self.uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
            experiment_id = self.client.create_experiment(experiment, artifact_location=where)
        source = recipe.source.checkpoint if recipe.source is not None else None
        tags = {"recipec.base_model": f"{recipe.model.arch} ({recipe.model.weights or 'random init'})",
                "recipec.version": versions().get("recipec", "unknown"),
                "recipec.run_directory": str(self.run.resolve())}
        if source and Path(source).is_file():
            tags["recipec.source_sha256"] = file_digest(source)
        self.run_id = self.client.create_run(experiment_id, run_name=recipe.name, tags=tags).info.run_id

    def log_epochs(self, history: Sequence[Mapping[str, Any]]) -> None:
        from mlflow.entities import Metric, Param

        assert self.run_id is not None
        # the flattened recipe, once; a resumed run gets only the params it lacks (a value that changed since,
        # train.epochs grown, stays as first logged: MLflow refuses to change a param)
        lacking = [Param(k, v) for k, v in _param_values(self.flat).items() if k not in self.params]
        for chunk in _chunks(lacking, 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=chunk)
        self.params |= {p.key for p in lacking}
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, int(m["epoch"])) for m in history for key, value in _mlflow_scalars(m)
                   if (key, int(m["epoch"])) not in self.logged]
        for chunk in _chunks(metrics, 1000):
            self.client.log_batch(self.run_id, metrics=chunk)
        self.logged |= {(m.key, m.step) for m in metrics}
        self.epochs = len(history)

    @contextlib.contextmanager
    def failing(self, doing: str) -> Iterator[None]:
        """An MLflow failure during training (a server gone) ends the build with exit 1; the checkpoint stays."""
        try:
            yield
        except Exception as exc:
            raise RunError(f"MLflow at {self.uri} failed while {doing}: {_first_line(exc)}; the training checkpoint "
                           "is kept: fix the store, then continue with --resume") from exc

    def finish(self, files: list[Path]) -> None:
        assert self.run_id is not None
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def record(self) -> dict[str, Any]:
        return {"tracking_uri": self.uri, "run_id": self.run_id, "epochs": self.epochs}


# --------------------------------------------------------------------------- shared helpers


def scalars(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """The numbers of one metrics.jsonl line as (tag, value): every finite number under its own name, nested
    objects as ``outer/inner`` (``lr/head``); ``epoch`` is the step, booleans and text are not numbers."""
    for key, value in metrics.items():
        if key == "epoch":
            continue
        if isinstance(value, Mapping):
            for inner, number in value.items():
                if _number(number):
                    yield f"{key}/{inner}", float(number)
        elif _number(value):
            yield str(key), float(value)


def flatten(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as ``{"optimizer.lr": 0.001, ...}``: lists as JSON text, null as ``"null"``."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, (bool, int, float, str)):
            out[prefix] = node
        else:
            out[prefix] = json.dumps(node) if node is not None else "null"

    walk(recipe.model_dump(mode="json"), "")
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mlflow_scalars(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """:func:`scalars` under names MLflow accepts: letters, digits, ``_ - . /`` and spaces, no empty, ``.`` or
    ``..`` part (a class name such as ``a:b`` in ``val_per_class_acc/a:b`` becomes ``val_per_class_acc/a_b``)."""
    for tag, value in scalars(metrics):
        parts = [re.sub(r"[^\w.\- ]", "_", part) for part in tag.split("/")]
        yield "/".join(part if part.strip(".") else "_" * max(len(part), 1) for part in parts)[:250], value


def _param_values(flat: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params: text, cut at its length limit (6000 characters in MLflow 3; 500 before)."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
    except ImportError:  # pragma: no cover - older MLflow
        limit = 500
    out = {}
    for key, value in flat.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out[re.sub(r"[^/\w.\- ]", "_", key)[:250]] = text if len(text) <= limit else text[: limit - 3] + "..."
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _preformatted(text: str) -> str:
    # TensorBoard renders text as Markdown: four spaces keep the plan's columns
    return "\n".join("    " + line for line in text.splitlines())


def _read_state(path: Path) -> dict[str, Any]:
    from recipec._files import read_regular

    if not path.exists():
        return {}
    try:
        data = json.loads(read_regular(path, what="tracking record", error=RunDirectoryError, max_bytes=1 << 20))
    except (OSError, ValueError, RecipecError):
        return {}  # unreadable: the backends start afresh (TensorBoard purges and rewrites what it held)
    return data if isinstance(data, dict) else {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _quiet_mlflow_loggers() -> None:
    # MLflow's SQL store migrates a new database through alembic, which logs INFO lines to stderr
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)

