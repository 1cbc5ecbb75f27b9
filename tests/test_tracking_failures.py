"""A tracking server that is down, silent, not MLflow, or gone mid-run: seconds lost, never the run."""

from __future__ import annotations

import errno
import importlib
import json
import os
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from recipec.cli import main
from recipec.errors import TrackingError

pytest.importorskip("mlflow")

TINY = """\
    name: tiny
    seed: 3
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 2}, head: {num_classes: 10}}
    optimizer: {name: adamw, lr: 1.0e-2}
    data: {dataset: digits, image_size: 8, per_class: 4, batch_size: 20}
    train: {epochs: 2, keep_last: 2}
    export: {formats: [safetensors]}
"""


def _recipe(tmp_path: Path, log: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY) + log)
    return path


def _mlflow_at(tmp_path: Path, uri: str) -> Path:
    return _recipe(tmp_path, f"log:\n  mlflow: {{tracking_uri: '{uri}', experiment: failures}}\n")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- a stub MLflow server


class _Handler(BaseHTTPRequestHandler):
    """The REST calls MlflowClient makes for one run; ``server.mode`` says how it fails."""

    server: _Stub

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        stub = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        path = self.path.split("?")[0].removeprefix("/api/2.0/mlflow/")
        stub.calls.append(path)
        if stub.mode == "html":
            return self._answer(404, "<html>not here</html>", "text/html")
        if stub.mode == "login":
            return self._answer(401, "credentials, please", "text/plain")
        if stub.mode == "deleted" and path == "experiments/get-by-name":
            return self._answer(200, {"experiment": {"experiment_id": "7", "name": "e", "lifecycle_stage": "deleted"}})
        later_epoch = path == "runs/log-batch" and any(m.get("step", 0) >= 1 for m in body.get("metrics", []))
        if stub.mode == "500" or (later_epoch and stub.mode == "500-after-epoch-0"):
            stub.mode = "500"
            return self._answer(500, {"error_code": "INTERNAL_ERROR", "message": "database is down"})
        if later_epoch and stub.mode == "gone-after-epoch-0":
            stub.mode = "gone"
            stub.gone_at = time.monotonic()
            stub.socket.close()  # the next connections are refused
            self.close_connection = True  # and this one ends without an answer
            return None
        info = {"run_id": "r1", "run_uuid": "r1", "experiment_id": "1", "status": "RUNNING", "run_name": "tiny",
                "lifecycle_stage": "active", "artifact_uri": "mlflow-artifacts:/1/r1/artifacts", "start_time": 1}
        answers = {"experiments/get-by-name": (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "none"}),
                   "experiments/create": (200, {"experiment_id": "1"}),
                   "runs/create": (200, {"run": {"info": info, "data": {}}}),
                   "runs/log-batch": (200, {}), "runs/update": (200, {"run_info": info})}
        return self._answer(*answers.get(path, (404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path})))


class _Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.calls: list[str] = []
        self.gone_at = 0.0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def stub(request: pytest.FixtureRequest) -> Iterator[_Stub]:
    server = _Stub(request.param)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- refused before anything is written


def test_nothing_listening_is_exit_2_at_once_with_nothing_written(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for module in ("recipec.pipeline.build", "recipec.train"):  # timed below: the build, not the first import of torchvision
        importlib.import_module(module)

    uri = f"http://127.0.0.1:{_free_port()}"
    path = _mlflow_at(tmp_path, uri)
    started = time.monotonic()
    code, _, err = _cli(capsys, "build", str(path), "--out", str(tmp_path / "run"))
    seconds = time.monotonic() - started
    line = len(textwrap.dedent(TINY).splitlines()) + 2
    assert code == 2 and seconds < 10, (code, seconds, err)
    assert err.startswith(f"error: {path}:{line}:"), err
    assert f"log.mlflow.tracking_uri: cannot reach {uri}: connection refused" in err
    assert "start the server or fix log.mlflow.tracking_uri" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_server_that_never_answers_costs_the_probe_timeout_only(tmp_path: Path) -> None:
    from recipec.tracking.probe import check_store

    with socket.socket() as listening:  # accepts connections in the kernel, never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        uri = f"http://127.0.0.1:{listening.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingError, match=r"cannot reach .*: no answer within 0.5 s; start the server"):
            check_store(uri, "e", timeout=0.5)
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("stub", ["500", "html"], indirect=True)
def test_a_failing_server_or_another_kind_of_server_is_refused(tmp_path: Path, stub: _Stub,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "build", str(_mlflow_at(tmp_path, stub.uri)), "--out", str(tmp_path / "run"))
    assert code == 2, err
    if stub.mode == "500":
        assert f"cannot reach {stub.uri}: HTTP 500 " in err and "(database is down)" in err, err
    else:
        assert f"log.mlflow.tracking_uri: {stub.uri} is not an MLflow tracking server (HTTP 404" in err, err
    assert stub.calls == ["experiments/get-by-name"]  # asked once, no retry
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stub", ["login", "deleted", "500-after-epoch-0"], indirect=True)
def test_what_the_probe_lets_through(stub: _Stub) -> None:
    from recipec.tracking.probe import check_store

    if stub.mode == "deleted":  # MLflow would refuse the run later: said now, at the experiment
        with pytest.raises(TrackingError) as info:
            check_store(stub.uri, "e")
        assert info.value.paths == [("log", "mlflow", "experiment")]
        assert "the experiment 'e' is deleted on" in str(info.value) and "--experiment-id 7" in str(info.value)
    else:  # a server that wants credentials (MLflow's client sends them), or no such experiment yet
        check_store(stub.uri, "e")
    assert stub.calls == ["experiments/get-by-name"]


def test_a_sqlite_store_whose_directory_cannot_be_made_is_refused(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    code, _, err = _cli(capsys, "build", str(_mlflow_at(tmp_path, f"sqlite:///{tmp_path}/afile/db/mlflow.db")),
                        "--out", str(tmp_path / "run"))
    assert code == 2 and "log.mlflow.tracking_uri: sqlite:///" in err, err
    assert f"{tmp_path / 'afile'} is not a directory" in err
    assert not (tmp_path / "run").exists()


def test_short_timeouts_yield_to_the_users_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from recipec.tracking.mlflow import RUN_LIMITS, short_timeouts

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with short_timeouts():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == RUN_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"


# --------------------------------------------------------------------------- gone during the run


@pytest.mark.parametrize("stub", ["500-after-epoch-0"], indirect=True)
def test_a_server_failing_mid_run_costs_seconds_one_warning_and_is_recorded(
        tmp_path: Path, stub: _Stub, capsys: pytest.CaptureFixture[str]) -> None:
    from recipec.recipe.load import load_recipe
    from recipec.tracking.tracker import open_tracking

    run = tmp_path / "run"
    run.mkdir()
    tracking = open_tracking(load_recipe(_mlflow_at(tmp_path, stub.uri)), run)
    assert tracking is not None
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_acc": 0.25 * e} for e in range(3)]
    tracking.start(None, [])
    tracking.log_epochs(history[:1])
    asked = len(stub.calls)
    started = time.monotonic()
    tracking.log_epochs(history[:2])  # the server answers 500 from now on
    seconds = time.monotonic() - started
    tracking.log_epochs(history)
    tracking.finish(history)
    _, err = capsys.readouterr()
    assert err == (f"warning: mlflow: {stub.uri} failed while logging epoch 1: HTTP 500, also on retrying; tracking "
                   "stopped, the run's own files are complete\n")
    # MLflow's defaults would retry 7 times from 2 s doubling (minutes); recipec's: 2 retries, ~2.5 s
    assert stub.calls[asked:] == ["runs/log-batch"] * 3 and seconds < 10, (stub.calls[asked:], seconds)
    recorded = json.loads((run / "tracking.json").read_text())["mlflow"]
    assert recorded == {"tracking_uri": stub.uri, "run_id": "r1", "epochs": 1,
                        "stopped": {"at_epoch": 1, "while": "logging epoch 1", "reason": "HTTP 500, also on retrying"}}


@pytest.mark.slow
@pytest.mark.parametrize("stub", ["gone-after-epoch-0"], indirect=True)
def test_a_server_lost_mid_run_stops_tracking_not_the_run(tmp_path: Path, stub: _Stub,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from recipec.tracking.tracker import Tracking

    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        assert key not in os.environ  # MLflow's defaults (7 retries, 120 s) unless recipec shortens them
    stopped_at = []
    real = Tracking._stop_mlflow
    monkeypatch.setattr(Tracking, "_stop_mlflow", lambda self, *a: (stopped_at.append(time.monotonic()),
                                                                   real(self, *a))[1])
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "build", str(_mlflow_at(tmp_path, stub.uri)), "--out", str(run), "--quiet")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and err.strip() == warnings[0], err
    # the first try loses its connection, the retries find nothing listening
    assert warnings[0].startswith(f"warning: mlflow: {stub.uri} failed while logging epoch 1: connection refused; ")
    assert warnings[0].endswith("; tracking stopped, the run's own files are complete")
    recorded = json.loads((run / "tracking.json").read_text())["mlflow"]
    assert recorded["run_id"] == "r1" and recorded["epochs"] == 1
    assert recorded["stopped"]["at_epoch"] == 1 and recorded["stopped"]["while"] == "logging epoch 1"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and (run / "model.safetensors").is_file()
    assert "runs/update" not in stub.calls  # the run's end is not reported to a server that is gone
    # from the server's end to tracking stopped: seconds (MLflow's own retries: minutes, 7 from 2 s doubling)
    assert len(stopped_at) == 1 and stopped_at[0] - stub.gone_at < 15, stopped_at[0] - stub.gone_at


# --------------------------------------------------------------------------- TensorBoard: a full disk


@pytest.mark.slow
def test_a_full_disk_under_tensorboard_fails_the_run_and_keeps_the_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from recipec.train.state import load_state

    real = SummaryWriter.add_scalar

    def full(self: Any, tag: str, value: float, global_step: int | None = None, **kwargs: Any) -> Any:
        if global_step == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "tensorboard"))
        return real(self, tag, value, global_step=global_step, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "build", str(_recipe(tmp_path, "log: {tensorboard: true}\n")), "--out", str(run),
                        "--quiet")
    assert code == 1 and "No space left on device" in err and "Traceback" not in err, err
    state = load_state(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2  # epoch 1's training state was written before TensorBoard was
