"""The trials of a sweep as the storage sees them: what each left (``sweep.json``), and whether its process lives.

A sweep process renews a heartbeat (the trial's ``alive_at`` user attribute) every
:data:`HEARTBEAT_S` seconds while a trial runs, in any storage: Optuna's own ``heartbeat_interval``
exists only for RDB storages, and a journal file shared between machines needs it as much.
:func:`reap_stale` takes a RUNNING trial as dead when its process is gone from this machine (the
host name and boot id it recorded are this machine's), or when its heartbeat is older than
:data:`STALE_S`: it marks it failed, ``retried`` (not counted in ``--trials``), and enqueues its
parameters, which the next ``study.ask()`` takes first.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipec import _json as clean_json
from recipec._atomic import atomic_write_text

__all__ = ["HEARTBEAT_S", "STALE_S", "Heartbeat", "Trial", "reap_stale", "this_host", "write_trial_note"]

HEARTBEAT_S = 20.0
STALE_S = 300.0  # a RUNNING trial on another machine whose heartbeat is older than this is taken as dead


@dataclass
class Trial:
    """One finished trial as this process saw it (the progress line and sweep.json)."""

    number: int
    state: str  # complete | pruned | failed
    params: dict[str, Any]
    value: float | None = None
    epochs: int = 0
    seconds: float = 0.0
    reason: str | None = None
    run: str = ""


def write_trial_note(run: Path, number: int, study: str, result: Trial) -> None:
    """``run/sweep.json``: the trial's number, state (complete, pruned, failed), reason, parameters, value."""
    run.mkdir(parents=True, exist_ok=True)
    note = {"study": study, "trial": number, "state": result.state, "reason": result.reason,
            "params": result.params, "objective": result.value, "epochs": result.epochs,
            "seconds": round(result.seconds, 3)}
    atomic_write_text(run / "sweep.json", clean_json.dumps(note, indent=2) + "\n")


class Heartbeat:
    """Renews the trial's ``alive_at`` user attribute every :data:`HEARTBEAT_S` seconds, in a thread."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="recipec-sweep-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                self.trial.set_user_attr("alive_at", time.time())
            except Exception:  # the trial finished meanwhile, or the storage blinked: the next beat tries again
                continue

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def reap_stale(study: Any, storage: Any, optuna: Any) -> None:
    """Mark failed (``retried``) each RUNNING trial whose process is gone, and enqueue its parameters again
    (``optuna``: the module, imported by the caller where the sweep extra is checked)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        gone = _gone(t.user_attrs)
        if gone is None:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_user_attr(trial_id, "retried", True)
            storage.set_trial_user_attr(trial_id, "reason", f"interrupted: {gone}; its parameters run again")
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another sweep process reaped it first
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        run = t.user_attrs.get("run")
        if run and Path(run).is_dir():
            note = Trial(t.number, "failed", dict(t.params), reason=f"interrupted: {gone}; rerun as a new trial")
            write_trial_note(Path(run), t.number, study.study_name, note)


def _gone(attrs: dict[str, Any]) -> str | None:
    """Why a RUNNING trial's process is taken as dead (None: it may be alive)."""
    host, pid = attrs.get("host"), attrs.get("pid")
    if host == this_host() and isinstance(pid, int):
        if pid == os.getpid():
            return f"process {pid} (this one) left it running"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"process {pid} on {host} is gone"
        except PermissionError:
            return None
        return None
    alive_at = attrs.get("alive_at")
    if isinstance(alive_at, (int, float)) and time.time() - alive_at > STALE_S:
        return f"no heartbeat from {host} (pid {pid}) for {time.time() - alive_at:.0f} s"
    return None


def this_host() -> str:
    """This machine, as trials record it: the host name and, where Linux tells it, the boot id (containers on
    different machines may share a host name; the pid of a trial is only looked up on the machine that ran it)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()
