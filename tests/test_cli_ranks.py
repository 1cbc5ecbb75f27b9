"""Error output under torchrun: ranks above 0 keep quiet about input errors (exit 2, the same on every
rank) and name themselves, ``[rank N] ``, on what may be theirs alone (exit 1, a bug, an interrupt).

The ranks are simulated by torchrun's environment variables (``RANK``, ``WORLD_SIZE``); one slow test
runs the real ``torchrun`` with two processes.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import recipec.recipe.schema
from recipec.cli import main
from recipec.commands._common import Interrupted, other_rank, rank_prefix
from recipec.errors import RunError

ROOT = Path(__file__).resolve().parents[1]

BAD = """\
    name: bad
    model: {arch: resnet18}
    optimizer: {lrr: 0.1}
"""


def _rank(monkeypatch: pytest.MonkeyPatch, rank: int | None, world: int = 2, quiet: bool = False) -> None:
    for name in ("RANK", "WORLD_SIZE", "RECIPEC_QUIET_RANK"):
        monkeypatch.delenv(name, raising=False)
    if rank is not None:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
    if quiet:
        monkeypatch.setenv("RECIPEC_QUIET_RANK", "1")


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    _out, err = capsys.readouterr()
    return int(info.value.code or 0), err


def _schema_raises(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def boom() -> str:
        raise exc

    monkeypatch.setattr(recipec.recipe.schema, "schema_text", boom)


@pytest.fixture(autouse=True)
def _sigint_handler():
    """main leaves its SIGINT handler in place after an interrupt (for the shutdown): put pytest's back."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def bad_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(BAD))
    return path


@pytest.mark.parametrize("rank, world", [(None, 2), (0, 2), (1, 1)])
def test_rank_0_or_a_single_process_prints_input_errors(monkeypatch, capsys, bad_recipe, rank, world):
    _rank(monkeypatch, rank, world)
    code, err = _run(capsys, "validate", str(bad_recipe))
    assert code == 2
    assert err.startswith(f"error: {bad_recipe}:3:") and "optimizer.lrr: unknown key" in err, err


@pytest.mark.parametrize("command", ["validate", "build", "plan"])
def test_other_ranks_keep_quiet_about_input_errors(monkeypatch, capsys, bad_recipe, command):
    _rank(monkeypatch, 1, world=2)
    code, err = _run(capsys, command, str(bad_recipe))
    assert (code, err) == (2, "")


def test_other_ranks_keep_quiet_about_usage_errors_and_missing_files(monkeypatch, capsys, tmp_path):
    _rank(monkeypatch, 3, world=4)
    assert _run(capsys, "build", str(tmp_path / "x.yaml"), "--no-such-option") == (2, "")  # no "Try ... --help"
    assert _run(capsys, "validate", str(tmp_path / "missing.yaml")) == (2, "")
    # the file system refuses a path the user gave (exit 2): every rank was given the same
    _schema_raises(monkeypatch, PermissionError(errno.EACCES, "Permission denied", "/data/x"))
    assert _run(capsys, "schema") == (2, "")
    _rank(monkeypatch, 0, world=4)
    code, err = _run(capsys, "build", str(tmp_path / "x.yaml"), "--no-such-option")
    assert code == 2 and err.startswith("error: No such option") and "recipec build --help' for help" in err


def test_a_failed_run_on_another_rank_is_printed_with_its_rank(monkeypatch, capsys):
    _schema_raises(monkeypatch, RunError(["the loss diverged", "nothing was exported"]))
    _rank(monkeypatch, 1, world=2)
    assert _run(capsys, "schema") == (1, "[rank 1] error: the loss diverged\n[rank 1] error: nothing was exported\n")
    _rank(monkeypatch, 0, world=2)  # rank 0 and a lone process: as always, no prefix
    assert _run(capsys, "schema") == (1, "error: the loss diverged\nerror: nothing was exported\n")


def test_an_internal_error_and_a_failing_disk_on_another_rank_are_printed_with_its_rank(monkeypatch, capsys):
    _rank(monkeypatch, 2, world=3)
    _schema_raises(monkeypatch, ValueError("bad\x1b[2J state"))
    code, err = _run(capsys, "schema")
    assert code == 1
    assert err == ("[rank 2] error: internal error: ValueError: bad\\x1b[2J state (rerun with --debug for the "
                   "traceback, and please report it)\n")
    _schema_raises(monkeypatch, OSError(errno.EIO, "Input/output error", "/data/x"))
    assert _run(capsys, "schema") == (1, "[rank 2] error: /data/x: Input/output error\n")


def test_an_interrupt_on_another_rank_is_printed_with_its_rank(monkeypatch, capsys):
    _rank(monkeypatch, 1, world=2)
    _schema_raises(monkeypatch, KeyboardInterrupt())
    code, err = _run(capsys, "schema")
    assert (code, err.lstrip("\n")) == (130, "[rank 1] error: interrupted\n")  # click's Abort adds a blank line
    _schema_raises(monkeypatch, Interrupted(["kept run/checkpoints/last.pt; continue with:", "  recipec build r.yaml"]))
    assert _run(capsys, "schema") == (130, "[rank 1] error: interrupted\n[rank 1] kept run/checkpoints/last.pt; "
                                           "continue with:\n[rank 1]   recipec build r.yaml\n")


def test_nproc_ranks_still_leave_reports_to_rank_0_but_not_bugs(monkeypatch, capsys, bad_recipe):
    """--nproc quiets its ranks above 0 (RECIPEC_QUIET_RANK=1); an internal error is still theirs to print."""
    _rank(monkeypatch, 1, world=2, quiet=True)
    assert _run(capsys, "validate", str(bad_recipe)) == (2, "")
    _schema_raises(monkeypatch, RunError("the loss diverged"))
    assert _run(capsys, "schema") == (1, "")
    _schema_raises(monkeypatch, KeyboardInterrupt())
    code, err = _run(capsys, "schema")
    assert (code, err.strip()) == (130, "")
    _schema_raises(monkeypatch, ValueError("bad state"))
    code, err = _run(capsys, "schema")
    assert code == 1 and err.startswith("[rank 1] error: internal error: ValueError: bad state"), err


@pytest.mark.parametrize("env, rank", [({"RANK": "1", "WORLD_SIZE": "2"}, 1), ({"RANK": "0", "WORLD_SIZE": "2"}, None),
                                       ({"RANK": "1", "WORLD_SIZE": "1"}, None), ({"RANK": "1"}, None),
                                       ({"RANK": "one", "WORLD_SIZE": "2"}, None), ({}, None)])
def test_other_rank_reads_torchruns_variables(monkeypatch, env, rank):
    _rank(monkeypatch, None)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert other_rank() == rank
    assert rank_prefix(2) == ("" if rank is None else None)
    assert rank_prefix(1) == ("" if rank is None else f"[rank {rank}] ")


def test_the_console_entry_point_is_quiet_on_other_ranks(bad_recipe):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "RECIPEC_QUIET_RANK")}
    quiet = subprocess.run([sys.executable, "-m", "recipec", "validate", str(bad_recipe)], capture_output=True,
                           text=True, env=env | {"RANK": "1", "WORLD_SIZE": "2"}, timeout=60)
    assert (quiet.returncode, quiet.stderr) == (2, "")
    loud = subprocess.run([sys.executable, "-m", "recipec", "validate", str(bad_recipe)], capture_output=True,
                          text=True, env=env | {"RANK": "0", "WORLD_SIZE": "2"}, timeout=60)
    assert loud.returncode == 2 and loud.stderr.startswith("error: ") and "optimizer.lrr" in loud.stderr


ENTRY = """\
import os, sys, time
import recipec.recipe.schema
from recipec.cli import main
from recipec.errors import RunError

def schema_text():
    raise RunError("rank 1 alone failed")

if os.environ["RANK"] == "1" and sys.argv[1] == "schema":
    recipec.recipe.schema.schema_text = schema_text
try:
    main(sys.argv[1:])
finally:  # rank 1 ends first, so what it printed (or not) is all there: torchrun then stops rank 0 here
    if os.environ["RANK"] == "0":
        sys.stderr.flush()
        time.sleep(10)
"""


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 entry.py ARGS``; the ranks import no torch (the input is refused first)."""
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "RECIPEC_QUIET_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "0", "--monitor-interval", "0.2", str(entry), *args]
    return subprocess.run(command, cwd=tmp_path, env=env | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)


def _lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """recipec's error lines (torchrun's own report aside)."""
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("error:", "[rank"))]


@pytest.mark.slow
def test_under_real_torchrun_an_input_error_is_printed_once_and_a_rank_failure_names_its_rank(tmp_path, bad_recipe):
    done = _torchrun(tmp_path, "build", str(bad_recipe), "--out", str(tmp_path / "run"))
    assert done.returncode != 0
    assert re.search(r"rank\s*: 1 .*\n\s*exitcode\s*: 2 ", done.stderr), done.stderr  # rank 1 was refused too
    lines = _lines(done)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad_recipe}:3:"), done.stderr  # by rank 0 alone

    done = _torchrun(tmp_path, "schema")
    assert done.returncode != 0
    assert _lines(done) == ["[rank 1] error: rank 1 alone failed"], done.stderr


def test_the_command_line_and_the_build_pipeline_stay_one_concept_per_module() -> None:
    """DESIGN: "a module that passes ~300 lines is two concepts"; cli.py and build.py were split along their seams."""
    package = ROOT / "recipec"
    modules = [package / "cli.py", *package.glob("pipeline/*.py"), *package.glob("commands/*.py")]
    sizes = {str(m.relative_to(package)): len(m.read_text().splitlines()) for m in modules}
    assert len(sizes) >= 8 and all(n <= 320 for n in sizes.values()), sizes
