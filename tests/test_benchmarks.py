"""The README's benchmark table: every row names a script that exists, and every script runs.

Each command runs as the README gives it plus ``--quick`` (tiny sizes, one repeat: the same code
paths in seconds); nothing is timed here. The figures themselves are measured by hand, with the
date in the table.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLOW = {"bench_adapters.py", "bench_buildstart.py", "bench_feature_cache.py", "bench_imbalance.py"}  # 15-45 s each with --quick


def _commands() -> list[list[str]]:
    """The command of each row of the README's Benchmarks table, as argv."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and "benchmarks/" in line]
    commands = []
    for row in rows:
        cell = row.split("|")[2]
        found = re.search(r"`(python benchmarks/[^`]+)`", cell)
        assert found, f"a Benchmarks row without a `python benchmarks/...` command: {row[:80]}"
        commands.append(shlex.split(found.group(1)))
    return commands


COMMANDS = _commands()


def test_every_script_is_in_the_table_and_every_row_names_a_script() -> None:
    named = [argv[1] for argv in COMMANDS]
    assert all((ROOT / path).is_file() for path in named), named
    scripts = sorted(f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("bench_*.py"))
    assert sorted(set(named)) == scripts


@pytest.mark.parametrize("argv", [pytest.param(a, id=Path(a[1]).stem, marks=[pytest.mark.slow] if Path(a[1]).name in SLOW else [])
                                  for a in COMMANDS])
def test_the_command_runs_quick(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, *argv[1:], "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the benchmark printed no figures"
