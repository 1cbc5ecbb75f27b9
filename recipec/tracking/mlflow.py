"""MLflow for :mod:`recipec.tracking.tracker`: one run, every call with short timeouts.

A tracking server that is down must cost seconds, not the minutes MLflow's client spends
retrying (7 retries, exponential backoff from 2 s, 120 s per request by default). So:

- :func:`recipec.tracking.probe.check_store`, before anything is written, refuses a server
  that does not answer as MLflow (one request, a few seconds).
- :func:`short_timeouts` around every MLflow call recipec makes: MLflow's own environment
  variables (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``_BACKOFF_FACTOR``, ``_BACKOFF_JITTER``,
  ``_TIMEOUT``; read at each request) set to :data:`RUN_LIMITS` for the call, unless the user
  set them.

What a failure during training does is :class:`recipec.tracking.tracker.Tracking`'s business: it stops
MLflow, warns once and lets the run finish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from recipec.errors import RecipecError, RunDirectoryError
from recipec.provenance import file_digest, versions
from recipec.recipe.spec import Recipe
from recipec.tracking.metrics import first_line, flatten, mlflow_scalars

__all__ = ["RUN_LIMITS", "MlflowRun", "short_timeouts", "store_uri"]

# MLflow's env vars during a run: a refused connection fails in ~2 s, a silent server in ~3 x 5 s
RUN_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_AT = ("log", "mlflow", "tracking_uri")


def store_uri(recipe: Recipe, run: Path) -> str:
    """``log.mlflow.tracking_uri``, or its default: ``sqlite:///mlflow.db`` in the directory that holds ``run``."""
    spec = recipe.log.mlflow
    assert spec is not None
    return spec.tracking_uri or f"sqlite:///{(Path(run).resolve().parent / 'mlflow.db').as_posix()}"


@contextlib.contextmanager
def short_timeouts(limits: Mapping[str, str] = RUN_LIMITS) -> Iterator[None]:
    """MLflow's HTTP retry and timeout settings set to ``limits`` for the block; the user's own settings win.

    urllib3's WARNING per retry is silenced meanwhile: a failure is reported once, by the caller."""
    added = {key: value for key, value in limits.items() if key not in os.environ}
    os.environ.update(added)
    retries = logging.getLogger("urllib3.connectionpool")
    level = retries.level
    retries.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries.setLevel(level)
        for key in added:
            os.environ.pop(key, None)


class MlflowRun:
    """One MLflow run through ``MlflowClient`` (no global active run), resumed from ``tracking.json``.

    Every call goes through :func:`short_timeouts`; what a failure means is the caller's to decide.
    """

    def __init__(self, recipe: Recipe, run: Path, saved: Any) -> None:
        from mlflow import MlflowClient  # noqa: PLC0415 (the mlflow extra: only with log.mlflow)

        _quiet_mlflow_loggers()  # after the import: importing mlflow sets its loggers up

        spec = recipe.log.mlflow
        assert spec is not None
        self.flat, self.run = flatten(recipe), run
        self.params: set[str] = set()
        self.epochs = 0
        self.uri = store_uri(recipe, run)
        self.client = MlflowClient(tracking_uri=self.uri)
        saved = saved if isinstance(saved, dict) else {}
        self.run_id: str | None = None
        self.logged: set[tuple[str, int]] = set()
        try:
            with short_timeouts():
                if saved.get("tracking_uri") == self.uri and isinstance(saved.get("run_id"), str):
                    self._resume(saved["run_id"])
                if self.run_id is None:
                    self._start(recipe, spec.experiment or recipe.name)
        except RecipecError:
            raise
        except Exception as exc:  # MlflowException, a database or server error: the tracking store is unusable
            raise RunDirectoryError((_AT, (
                f"MLflow at {self.uri} failed: {first_line(exc)}; check the URI (or turn log.mlflow off)"))) from exc

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
        """Every (metric, epoch) of ``history`` the run lacks, and the flattened recipe's params it lacks."""
        from mlflow.entities import Metric, Param  # noqa: PLC0415 (the mlflow extra: only with log.mlflow)

        assert self.run_id is not None
        # the flattened recipe, once; a resumed run gets only the params it lacks (a value that changed since,
        # train.epochs grown, stays as first logged: MLflow refuses to change a param)
        lacking = [Param(k, v) for k, v in _param_values(self.flat).items() if k not in self.params]
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, int(m["epoch"])) for m in history for key, value in mlflow_scalars(m)
                   if (key, int(m["epoch"])) not in self.logged]
        with short_timeouts():
            for chunk in _chunks(lacking, 100):  # MLflow takes at most 100 params per call
                self.client.log_batch(self.run_id, params=chunk)
            self.params |= {p.key for p in lacking}
            for chunk in _chunks(metrics, 1000):
                self.client.log_batch(self.run_id, metrics=chunk)
        self.logged |= {(m.key, m.step) for m in metrics}
        self.epochs = len(history)

    def finish(self, files: list[Path]) -> None:
        """The run's files as artifacts, then the run ends (FINISHED)."""
        assert self.run_id is not None
        with short_timeouts():
            for path in files:
                self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, "FINISHED")

    def record(self) -> dict[str, Any]:
        """What ``tracking.json`` keeps of the run: the store, the run and the epochs it holds."""
        return {"tracking_uri": self.uri, "run_id": self.run_id, "epochs": self.epochs}


def _param_values(flat: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params: text, cut at its length limit (6000 characters in MLflow 3; 500 before)."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit  # noqa: PLC0415 (the mlflow extra: only with log.mlflow)
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


def _quiet_mlflow_loggers() -> None:
    # MLflow's SQL store migrates a new database through alembic, which logs INFO lines to stderr; its HTTP client
    # warns of each retry (a dead server is reported once, by recipec)
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow.utils.rest_utils").setLevel(logging.ERROR)
