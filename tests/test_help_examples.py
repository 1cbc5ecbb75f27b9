"""Every example in every command's --help and in the README runs (issue 8.13).

The examples run in order in one scratch directory that has the shipped recipes, so an
example that needs a finished run (``runs/quickstart``) finds the one the first build
example made. To stay fast, builds and recipe-reading commands get tiny overrides (a few
8x8 images, 3 epochs); ONNX examples are slow and run with ``-m slow``. Examples whose
files are illustrative and cannot exist here are listed in ``NOT_RUN`` with the reason.
"""

from __future__ import annotations

import glob
import os
import shlex
import textwrap
from pathlib import Path

import pytest

from recipec.cli import cli, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TINY = ["--set", "data.per_class=2", "--set", "data.image_size=8", "--set", "data.val_fraction=0.02",
        "--set", "train.epochs=3"]
NOT_RUN = {
    **dict.fromkeys(["recipec push runs/quickstart me/quickstart-resnet18",
                     'recipec push runs/quickstart me/quickstart-resnet18 --revision v2 --commit-message "Two more epochs"',
                     "recipec push runs/shared me/digits-resnet18"],
                    "uploads to the Hugging Face Hub, which cannot be reached here (tests/test_hub.py pushes to a "
                    "local stand-in of its API)"),
    **dict.fromkeys(["recipec sweep recipes/quickstart.yaml --space space.yaml --trials 20",
                     "recipec sweep recipes/quickstart.yaml --space space.yaml --trials 20 --storage "
                     "journal:/shared/study.log"],
                    "twenty full builds (and a shared filesystem); tests/test_sweep.py runs sweeps of the tiny recipe "
                    "through the same command"),
    "recipec convert runs/quickstart/model.pt2 model.safetensors":
        "the quickstart exports no pt2; tests/test_deploy.py converts a run's .pt2 through the same command",
    "recipec plan r.yaml": "the README shows the plan of a DDP checkpoint whose recipe it does not list",
    "recipec convert runs/mine/model.safetensors model.onnx --trust-factory mynets.zoo:small_cnn":
        "illustrates a user's own factory module (mynets), which does not exist here",
    "recipec features runs/mine/model.safetensors --layers body --out f.safetensors --trust-factory mynets.zoo:small_cnn":
        "illustrates a user's own factory module (mynets), which does not exist here",
}


def help_examples() -> list[str]:
    """The ``recipec ...`` lines after ``Examples:`` in the group's and every command's help."""
    found = []
    for command in [cli, *cli.commands.values()]:
        doc = command.help or ""
        if "Examples:" in doc:
            found += [line.strip() for line in doc.split("Examples:", 1)[1].splitlines()
                      if line.strip().startswith("recipec ")]
    return found


def readme_examples() -> list[str]:
    """``recipec ...`` command lines inside the README's code blocks (``$ `` prompts removed)."""
    found = []
    inside = False
    for line in README.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        line = line.strip().removeprefix("$ ")
        if inside and line.startswith("recipec "):
            found.append(line)
    return found


def _is_slow(example: str) -> bool:
    # ONNX export and verification; a resume needs a real (non-smoke) run before it
    return ".onnx" in example or "--resume" in example


EXAMPLES = list(dict.fromkeys(help_examples() + readme_examples()))


def test_examples_are_found():
    assert len(help_examples()) >= 15
    assert "recipec validate bad.yaml" in readme_examples()
    for example in EXAMPLES:
        assert example in NOT_RUN or "placeholder" not in example


def _run(example: str, capsys, slow: bool) -> tuple[int, str, str]:
    words = shlex.split(example)
    redirect = None
    if ">" in words:
        at = words.index(">")
        words, redirect = words[:at], words[at + 1]
    args: list[str] = []
    for word in words[1:]:
        args += sorted(glob.glob(word)) if "*" in word else [word]
    verb = args[0]
    if verb in ("build", "lr-find") or (verb == "features" and args[1].endswith(".yaml")):
        args += [*TINY, "--device", "cpu"]
    if verb == "lr-find":  # a short sweep: the curve itself is tested in tests/test_lrfind.py
        args += ["--steps", "20"]
    if verb == "build" and not slow:  # a smoke run of the same command: every phase, one batch each
        args += ["--smoke-batches", "1"] + ([] if "--smoke" in args else ["--smoke"])
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    if redirect:
        Path(redirect).write_text(out)
    return int(info.value.code or 0), out, err


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A working directory with the shipped recipes and the small files the examples name."""
    import torch

    from tests.tinynets import tiny_cnn

    work = tmp_path_factory.mktemp("examples")
    (work / "recipes").symlink_to(ROOT / "recipes")
    (work / "schemas").mkdir()
    torch.save(tiny_cnn().state_dict(), work / "backbone.pth")
    (work / "my-card.md.j2").write_text("# {{ name }}\n\n{{ recipe_yaml }}\n")
    from tests.imagedata import make_imagefolder

    make_imagefolder(work / "data" / "pets", ["cat", "dog"], {"": 2})  # the class folders `recipec init` examples read
    # the run that examples reading runs/quickstart use
    args = ["build", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(work / "runs" / "quickstart"), *TINY,
            "--device", "cpu", "--smoke", "--smoke-batches", "1", "--quiet"]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0
    # the images `recipec predict` examples name: the README's one-liner writes the same
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    (work / "digits").mkdir()
    for i in range(10):
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(work / "digits" / f"{i}.png")
    return work


def _check(example: str, scratch: Path, capsys, monkeypatch) -> None:
    import tempfile

    monkeypatch.chdir(scratch)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    if example == "recipec validate bad.yaml":
        return _check_validate_bad(capsys)
    if example.startswith("recipec convert foreign.pth"):
        import torch

        from recipec.inference.restore import load

        torch.save(load("runs/quickstart/model.safetensors").state_dict(), "foreign.pth")
    code, _, err = _run(example, capsys, slow=_is_slow(example))
    assert code == 0, f"{example}\n{err}"


def _check_validate_bad(capsys) -> None:
    """The README's `recipec validate bad.yaml` example prints exactly what the README shows."""
    block = README.split("$ cat bad.yaml\n", 1)[1].split("```", 1)[0]
    recipe, shown = block.split("$ recipec validate bad.yaml\n")
    Path("bad.yaml").write_text(recipe)
    code, _, err = _run("recipec validate bad.yaml", capsys, slow=False)
    assert code == 2 and err.strip().splitlines() == shown.strip().splitlines()


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e not in NOT_RUN and not _is_slow(e)])
def test_example_runs(example, scratch, capsys, monkeypatch):
    _check(example, scratch, capsys, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("example", [e for e in EXAMPLES if e not in NOT_RUN and _is_slow(e)])
def test_slow_example_runs(example, scratch, tmp_path, capsys, monkeypatch):
    if "--resume" in example:  # resume a real build of the same command, in a directory of its own
        (tmp_path / "recipes").symlink_to(ROOT / "recipes")
        monkeypatch.chdir(tmp_path)
        assert _run(example.replace(" --resume", ""), capsys, slow=True)[0] == 0
        scratch = tmp_path
    _check(example, scratch, capsys, monkeypatch)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python block, with tiny overrides added to its load_recipe call and build made a smoke run."""
    import types

    import recipec

    code = README.split("From Python, the same verbs:\n\n```python\n", 1)[1].split("```", 1)[0]
    tiny = [f"{k}={v}" for k, v in (s.split("=") for s in TINY[1::2])] + ["device=cpu"]
    import importlib

    # not getattr(recipec, "build"): once the submodule recipec.pipeline.build is imported, that is the module
    shim = types.SimpleNamespace(**{name: getattr(importlib.import_module(module), name)
                                    for name, module in recipec._LAZY.items()})
    shim.load_recipe = lambda path, overrides=(): recipec.load_recipe(ROOT / path, [*overrides, *tiny])
    build = shim.build
    shim.build = lambda recipe, **kwargs: build(recipe, smoke=1, **kwargs)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(textwrap.dedent(code).replace("import recipec\n", ""), "README.md", "exec"),
         {"recipec": shim, "print": lambda *a, **k: None} | namespace)
    assert (tmp_path / "runs" / "qs" / "model.safetensors").exists()


def test_no_example_uses_a_placeholder_file():
    """An example names real files (made by an earlier example or the fixture), or is listed in NOT_RUN."""
    for example in EXAMPLES:
        if example in NOT_RUN:
            continue
        assert "resnet18-f37072fd" not in example and "flowers" not in example, example
        assert os.sep + "mine" + os.sep not in example, example
