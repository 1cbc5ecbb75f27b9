"""The README stays true: CI runs its test command, and its tables match the code."""

from __future__ import annotations

import re
from pathlib import Path

from recipec.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    setup = README.split("## Set up and run", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    test_command = [line for line in setup.strip().splitlines() if "pytest" in line]
    assert len(test_command) == 1
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command[0].strip() in [line.strip() for line in ci.splitlines()]


def test_cli_table_lists_every_built_command():
    built = set(re.findall(r"^\| `recipec ([\w-]+)[^|]*\|[^|]*\| built[^|]*\|$", README, flags=re.M))
    assert built == set(cli.commands)


def test_every_shipped_recipe_is_in_the_readme():
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        assert f"recipes/{recipe.name}" in README, recipe.name
