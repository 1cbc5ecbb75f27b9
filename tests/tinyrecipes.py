"""Tiny recipes over `tests.tinynets:tiny_cnn` and the digits data, and the helpers the end-to-end tests share.

``tiny_yaml()`` is the recipe the resume tests train (three layer groups, block2 unfrozen at epoch 1,
3 epochs); a test module that needs another variant replaces whole sections by their YAML flow text
(``tiny_yaml(train="{epochs: 2}")``) or leaves one out (``None``); an unknown section is appended. The
text keeps the line layout of the recipe the tests used to write out by hand, so error locations
(``tiny.yaml:8:...``) stay where they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from recipec.cli import main
from recipec.recipe.load import load_recipe

ROOT = Path(__file__).resolve().parents[1]

GROUPS3 = """
  - {name: block1, match: ['^[01]\\.']}
  - {name: block2, match: ['^[34]\\.']}
  - {name: head, match: ['^8\\.']}"""
GROUPS2 = """
  - {name: body, match: ['^[0-4]\\.']}
  - {name: head, match: ['^8\\.']}"""

_SECTIONS: dict[str, str] = {
    "name": "tiny",
    "seed": "3",
    "device": "cpu",
    "model": '{arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}',
    "groups": GROUPS3,
    "freeze": "{trainable: [head], unfreeze: {1: [block2]}}",
    "optimizer": "{name: adamw, lr: 1.0e-2, lr_decay: 2, weight_decay: 0.01, scheduler: {name: cosine}}",
    "data": "{dataset: digits, image_size: 8, per_class: 20, batch_size: 32}",
    "train": "{epochs: 3, keep_last: 3}",
    "export": "{formats: [safetensors]}",
}


def tiny_yaml(**sections: str | None) -> str:
    """The tiny recipe as YAML text, with ``sections`` replaced (flow text; a block starts with a newline)
    or left out (None); sections it does not have are appended in the order given."""
    merged = {**_SECTIONS, **sections}
    return "".join(f"{key}:{value if value.startswith(chr(10)) else ' ' + value}\n"
                   for key, value in merged.items() if value is not None)


TINY = tiny_yaml()


def write_recipe(tmp_path: Path, body: str = TINY, name: str = "tiny.yaml") -> Path:
    """``body`` written as ``tmp_path / name`` (dedented: an indented triple-quoted recipe is fine)."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def write_chain(folder: Path, *, upstream_epochs: int = 1, export: str | None = None) -> Path:
    """``up.yaml`` (tiny_cnn on all ten digits) and ``down.yaml`` (``source: {recipe: up.yaml}``, a new 3-class
    head, the only group that trains) in ``folder``; returns the path of ``down.yaml``."""
    model = '{arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: %d}}'
    up = tiny_yaml(name="upstream", seed="1", model=model % 10, groups=None, freeze=None, optimizer=None,
                   data="{dataset: digits, image_size: 8, per_class: 10}", train=f"{{epochs: {upstream_epochs}}}",
                   export=export)
    down = tiny_yaml(name="downstream", seed=None, model=model % 3, groups=None, freeze="{trainable: [head]}",
                     optimizer=None, data="{dataset: digits, image_size: 8, per_class: 10, classes: ['1', '7', '9']}",
                     train="{epochs: 1}", export=export, source="{recipe: up.yaml, exclude: ['^8\\.']}")
    write_recipe(folder, up, "up.yaml")
    return write_recipe(folder, down, "down.yaml")


def load_tiny(tmp_path: Path, *overrides: str, body: str = TINY, name: str = "tiny.yaml") -> Any:
    """The recipe ``body`` (written into ``tmp_path``), loaded with ``--set`` style ``overrides``."""
    return load_recipe(write_recipe(tmp_path, body, name), list(overrides))


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """A run's ``metrics.jsonl``, an object per epoch."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    """Whether two runs exported exactly the same ``model.safetensors`` (same keys, ``torch.equal`` tensors)."""
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def run_cli(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``recipec ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


# a process that dies mid-run with no chance to clean up: SIGKILL at the KILL_AT-th call of KILL_IN
_KILLER = """
import importlib, os, signal, sys
module_name, name = os.environ["KILL_IN"].split(":")
module = importlib.import_module(module_name)
real, calls = getattr(module, name), {"n": 0}
def killing(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(module, name, killing)
from recipec.cli import main
main(sys.argv[1:])
"""


def killed_build(*args: str, at: int, target: str = "recipec.train.loop:evaluate",
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``recipec ARGS`` in a subprocess SIGKILLed at the ``at``-th call of ``target`` (``module:function``;
    by default the ``at``-th validation)."""
    env = {**os.environ, "KILL_AT": str(at), "KILL_IN": target, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", _KILLER, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
