"""MLflow parent/child runs of a sweep: each trial's run (its build's, ``RUN/tracking.json``) becomes a child of
one parent run per study, in the same store and experiment.

The parent is found by its tag ``recipec.sweep.parent`` (the study's name), so every process of a shared
study links its trials to the same one (two processes that start together may each make one). The
parent holds the study's name and direction as params, and each complete trial's objective as a metric at
step = trial number. A tracking store that fails here costs a warning, never the sweep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipec.errors import warn
from recipec.tracking.mlflow import short_timeouts
from recipec.tracking.tracker import STATE

__all__ = ["PARENT_TAG", "link_trial"]

PARENT_TAG = "recipec.sweep.parent"


def link_trial(run: Path, *, study: str, number: int, state: str, objective: tuple[str, float | None]) -> str | None:
    """Tag the MLflow run of the trial built in ``run`` as a child of the study's parent run.

    Args:
        run: the trial's run directory (nothing is done unless its ``tracking.json`` names an MLflow run).
        study: the study's name.
        number: the trial's number.
        state: complete, pruned or failed.
        objective: (metric name, the trial's value or None).

    Returns:
        The parent run's id, or None when the trial has no MLflow run (or MLflow failed: a warning says why).
    """
    try:
        record = json.loads((run / STATE).read_text()).get("mlflow") or {}
    except (OSError, ValueError):
        return None
    if not record.get("run_id") or not record.get("tracking_uri"):
        return None
    try:
        with short_timeouts():
            return _link(record["tracking_uri"], record["run_id"], study, number, state, objective)
    except Exception as exc:  # the store is the sweep's guest: say it, carry on
        warn(f"MLflow: trial {number} was not linked to the sweep's parent run: {type(exc).__name__}: {exc}")
        return None


def _link(uri: str, child: str, study: str, number: int, state: str, objective: tuple[str, float | None]) -> str:
    from mlflow import MlflowClient  # noqa: PLC0415 (the mlflow extra: only with log.mlflow)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(child).info.experiment_id
    parent = _parent(client, experiment, study)
    client.set_tag(child, "mlflow.parentRunId", parent)
    client.set_tag(child, "recipec.sweep.trial", str(number))
    client.set_tag(child, "recipec.sweep.state", state)
    metric, value = objective
    if value is not None:
        client.log_metric(parent, metric, value, step=number)
    return parent


def _parent(client: Any, experiment: str, study: str) -> str:
    for found in client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` != ''", max_results=1000):
        if found.data.tags.get(PARENT_TAG) == study:
            return str(found.info.run_id)
    parent = client.create_run(experiment, run_name=f"sweep {study}", tags={PARENT_TAG: study}).info.run_id
    client.log_param(parent, "study", study)
    client.set_terminated(parent)  # a record, not a process: the trials are the runs that run
    return str(parent)
