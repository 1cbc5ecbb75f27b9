"""The tracking store checked before training: an MLflow server that is down, silent or not MLflow is refused.

:func:`check_store` runs with the other checks before anything is written (``recipec build``
through :func:`recipec.tracking.tracker.open_tracking`). An ``http(s)`` URI is asked for the experiment
through MLflow's REST API (``GET /api/2.0/mlflow/experiments/get-by-name``): one request, at
most :data:`PROBE_TIMEOUT` seconds per socket operation, no retry, so a dead server costs
seconds, not the minutes of MLflow's own retries. A refused or silent connection, an HTTP
error or an answer that is not MLflow's JSON is an exit-2 error located at
``log.mlflow.tracking_uri``; a server asking for credentials (401, 403) passes, as MLflow's
client sends them. A ``sqlite:///FILE`` URI is refused when FILE's directory cannot be created
(MLflow creates it, and the database, when the run starts). Never imports MLflow.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from recipec.errors import TrackingError
from recipec.tracking.metrics import first_line

__all__ = ["PROBE_TIMEOUT", "check_store"]

PROBE_TIMEOUT = 3.0  # seconds per socket operation of the one probe request
_AT = ("log", "mlflow", "tracking_uri")
_FIX = "start the server or fix log.mlflow.tracking_uri (or turn log.mlflow off)"


def check_store(uri: str, experiment: str, *, timeout: float = PROBE_TIMEOUT) -> None:
    """Refuse a tracking store the run could not log to; writes nothing (a SQLite file is not created).

    Args:
        uri: the tracking URI (:func:`store_uri`).
        experiment: the experiment the run logs to (asked for, not created).
        timeout: seconds per socket operation of the probe request.

    Raises:
        TrackingError: an ``http(s)`` server that does not answer as MLflow does, or a ``sqlite``
            file whose directory cannot be created (located at ``log.mlflow.tracking_uri``); an
            experiment deleted on the server (at ``log.mlflow.experiment``).
    """
    scheme = uri.partition(":")[0].lower()
    problem: str | tuple[tuple[str, ...], str] | None
    if scheme in ("http", "https"):
        problem = _server_problem(uri, experiment, timeout)
    elif scheme == "sqlite":
        problem = _sqlite_problem(uri)
    else:  # postgresql, mysql, databricks ...: MLflow's own client reports them when the run starts
        return
    if problem is not None:
        raise TrackingError(problem if isinstance(problem, tuple) else (_AT, problem))


def _server_problem(uri: str, experiment: str, timeout: float) -> str | tuple[tuple[str, ...], str] | None:
    query = urllib.parse.urlencode({"experiment_name": experiment})
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "recipec"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls_context(uri)) as answer:
            status, body = answer.status, answer.read(1 << 16)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(1 << 16)
        if status in (401, 403):
            return None  # a server that wants credentials: MLflow's client sends them (MLFLOW_TRACKING_*)
        if status == 404 and _mlflow_json(body).get("error_code") == "RESOURCE_DOES_NOT_EXIST":
            return None  # no such experiment yet: the run creates it
        if status == 404:
            return (f"{uri} is not an MLflow tracking server (HTTP 404 for {url}: no MLflow REST API there); "
                    f"check log.mlflow.tracking_uri (the server's address, without /api/...)")
        return f"cannot reach {uri}: HTTP {status} {exc.reason} from {url}{_said(body)}; {_FIX}"
    except TimeoutError:
        return f"cannot reach {uri}: no answer within {timeout:g} s; {_FIX}"
    except urllib.error.URLError as exc:
        return f"cannot reach {uri}: {_reason(exc.reason)}; {_FIX}"
    except (OSError, ValueError) as exc:  # a reset connection, a malformed address (http://host:port99)
        return f"cannot reach {uri}: {_reason(exc)}; {_FIX}"
    found = _mlflow_json(body).get("experiment")
    if status == 200 and isinstance(found, dict):
        if found.get("lifecycle_stage") == "deleted":  # MLflow refuses runs in it
            return (("log", "mlflow", "experiment"), f"the experiment {experiment!r} is deleted on {uri}; restore it "
                    f"(mlflow experiments restore --experiment-id {found.get('experiment_id')}) or name another")
        return None
    return (f"{uri} is not an MLflow tracking server (HTTP {status} for {url}, without MLflow's JSON); "
            "check log.mlflow.tracking_uri")


def _tls_context(uri: str) -> ssl.SSLContext | None:
    """The TLS settings MLflow's client would use: MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH,
    then requests' REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE."""
    if not uri.lower().startswith("https:"):
        return None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return ssl._create_unverified_context()  # the user asked MLflow not to verify
    cafile = next((os.environ[k] for k in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
                   if os.environ.get(k)), None)
    return ssl.create_default_context(cafile=cafile)


def _mlflow_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _said(body: bytes) -> str:
    message = _mlflow_json(body).get("message")
    return f" ({first_line(str(message))[:200]})" if message else ""


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror or reason})"
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[0].lower() + reason.strerror[1:]
    return first_line(str(reason)) if str(reason) else type(reason).__name__


def _sqlite_problem(uri: str) -> str | None:
    path = uri[len("sqlite:///"):].partition("?")[0] if uri.startswith("sqlite:///") else ""
    if path in ("", ":memory:"):
        return None
    file = Path(path)  # relative to the working directory, as SQLAlchemy reads it
    if file.is_dir():
        return f"{uri}: {file} is a directory; name the database file (e.g. sqlite:///{file}/mlflow.db)"
    existing = file.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return (f"{uri}: the directory {file.parent} cannot be created, {existing} is not a directory; "
                "name a database file in a directory")
    if not os.access(existing, os.W_OK | os.X_OK) and not file.exists():
        what = "created in" if existing == file.parent else "created under"
        return f"{uri}: the database cannot be {what} {existing} (permission denied); name a writable place"
    return None
