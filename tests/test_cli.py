"""The command line contract: exit codes, located `error:` lines, no traceback, lazy torch."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recipec.cli import main
from recipec.recipe.schema import schema_text

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_validate_ok(capsys):
    code, out, err = run(capsys, "validate", str(QUICKSTART))
    assert (code, err) == (0, "")
    assert out.strip() == f"{QUICKSTART}: ok"


def test_three_mistakes_three_located_lines(tmp_path, capsys):
    path = _write(tmp_path, "bad.yaml", """\
        name: bad
        model: {arch: resnet18}
        optimizer:
          lrr: 0.1
          lr_decay: 0.5
        train:
          epochs: ten
    """)
    code, _out, err = run(capsys, "validate", str(path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 3, err
    assert all(line.startswith(f"error: {path}:") for line in lines)
    joined = "\n".join(lines)
    assert f"{path}:4:3: optimizer.lrr: unknown key" in joined and "did you mean 'lr'" in joined
    assert f"{path}:5:13: optimizer.lr_decay:" in joined and "0.5" in joined
    assert f"{path}:7:11: train.epochs:" in joined
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["cycle", "syntax", "missing", "duplicate"])
def test_file_level_errors_one_line(case, tmp_path, capsys):
    if case == "cycle":
        _write(tmp_path, "b.yaml", "extends: a.yaml\n")
        path = _write(tmp_path, "a.yaml", "extends: b.yaml\nmodel: {arch: resnet18}\n")
    elif case == "syntax":
        path = _write(tmp_path, "a.yaml", "model: {arch: resnet18\nname: [x\n")
    elif case == "missing":
        path = tmp_path / "absent.yaml"
    else:
        path = _write(tmp_path, "a.yaml", "model: {arch: resnet18}\nseed: 1\nseed: 2\n")
    code, _out, err = run(capsys, "validate", str(path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and str(path.name) in lines[0]
    if case in ("syntax", "duplicate"):
        assert f"{path}:" in lines[0] and lines[0].split(f"{path}:")[1][0].isdigit()
    if case == "duplicate":
        assert "seed" in lines[0]


def test_debug_shows_the_traceback(tmp_path):
    path = _write(tmp_path, "a.yaml", "model: {arch: resnet18}\nseed: -1\n")
    quiet = subprocess.run([sys.executable, "-m", "recipec", "validate", str(path)], capture_output=True, text=True)
    loud = subprocess.run([sys.executable, "-m", "recipec", "--debug", "validate", str(path)],
                          capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr


def test_usage_errors_exit_2(capsys):
    code, _, err = run(capsys, "plan")
    assert code == 2 and err.startswith("error: ")
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and err.startswith("error: ")


@pytest.mark.parametrize("argv", [["validate", "recipes/quickstart.yaml"], ["--help"], ["schema"]])
def test_no_torch_import(argv):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "recipec", *argv],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert imported, "importtime printed nothing"
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]


def test_schema_stdout_and_out(tmp_path, capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0 and out == schema_text()
    target = tmp_path / "s.json"
    code, _, _ = run(capsys, "schema", "--out", str(target))
    assert code == 0 and target.read_text() == schema_text()


def test_plan_text_and_json(capsys):
    code, out, err = run(capsys, "plan", str(QUICKSTART), "--device", "cpu")
    assert code == 0, err
    assert "layer4" in out and "head" in out
    code, out, err = run(capsys, "plan", str(QUICKSTART), "--json", "--set", "train.epochs=3", "--device", "cpu")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["epochs"] == 3
    assert [g["name"] for g in plan["groups"]][-1] == "head"
    assert all(len(g["trainable"]) == 3 and len(g["lr"]) == 3 for g in plan["groups"])


def test_plan_compile_error_is_located(tmp_path, capsys):
    path = _write(tmp_path, "a.yaml", """\
        name: a
        device: cpu
        model:
          arch: resnet181
    """)
    code, _, err = run(capsys, "plan", str(path))
    assert code == 2
    assert f"error: {path}:4:9: model.arch:" in err and "resnet18" in err


def test_plan_absent_device_exit_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(capsys, "plan", str(QUICKSTART), "--device", "cuda:3")
    assert code == 2 and "cuda" in err


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_malicious_pickle_refused_by_plan_and_inspect(tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, evil)
    assert not marker.exists()
    code, _, err = run(capsys, "inspect", str(evil))
    assert code == 2 and "error:" in err and "Traceback" not in err
    recipe = _write(tmp_path, "r.yaml", f"""\
        name: r
        device: cpu
        model: {{arch: resnet18}}
        source: {{checkpoint: {evil}}}
    """)
    code, _, err = run(capsys, "plan", str(recipe))
    assert code == 2 and "error:" in err
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    code, _, err = run(capsys, "inspect", str(raw))
    assert code == 2 and not marker.exists()


def test_inspect_safetensors(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(2, dtype=torch.float16)}, path, metadata={"k": "v"})
    code, out, err = run(capsys, "inspect", str(path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["tensors"] == 2 and report["total_bytes"] == 3 * 4 * 4 + 2 * 2
    assert report["metadata"]["k"] == "v"
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0 and "float16" in out


TINY_RECIPE = """\
    name: tiny
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
    data: {dataset: digits, image_size: 8, per_class: 10}
    train: {epochs: 2}
"""


def test_build_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the tiny architecture is imported from the working directory
    recipe = _write(tmp_path, "tiny.yaml", TINY_RECIPE)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "build", str(recipe), "--out", str(out))
    assert code == 0, err
    assert "epoch 1 (2 of 2)" in stdout and (out / "model.safetensors").exists()
    code, _, err = run(capsys, "build", str(recipe), "--out", str(out))
    assert code == 2 and "--resume" in err and "--overwrite to start it over" in err
    code, stdout, err = run(capsys, "build", str(recipe), "--out", str(out), "--overwrite")  # the way to start over
    assert code == 0, err
    assert stdout.splitlines()[0] == f"removed the earlier run in {out} (--overwrite)"
    code, _, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / "x"),
                       "--set", "data={dataset: imagefolder, root: /nonexistent/flowers}")
    assert code == 2 and "data.root" in err and "/nonexistent/flowers" in err
    assert not (tmp_path / "x").exists()
    code, _, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / "y"), "--nproc", "0")
    assert code == 2 and "--nproc" in err
    # a diverging run is a failed run (exit 1), not bad input
    code, _, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / "z"),
                       "--set", "optimizer={name: sgd, lr: 100, weight_decay: 10}", "--set", "train.epochs=8")
    assert code == 1 and "loss" in err, err


def test_plan_with_an_unbuilt_upstream_recipe_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "up.yaml", TINY_RECIPE)
    down = _write(tmp_path, "down.yaml", """\
        name: down
        device: cpu
        model: {arch: resnet18}
        source: {recipe: up.yaml}
    """)
    code, _, err = run(capsys, "plan", str(down))
    assert code == 2 and f"{down}:4:" in err and "recipec build" in err


def test_features_command(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(ROOT)
    recipe = _write(tmp_path, "tiny.yaml", TINY_RECIPE)
    code, _, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    out = tmp_path / "f.safetensors"
    code, _stdout, err = run(capsys, "features", str(tmp_path / "run" / "model.safetensors"), "--layers", "3,8",
                            "--out", str(out), "--split", "val", "--trust-factory", "tests.tinynets:tiny_cnn")
    assert code == 0, err
    tensors = load_file(out)
    assert tensors["3"].shape[1] == 8 and tensors["8"].shape[1] == 10 and tensors["labels"].ndim == 1
    code, _, err = run(capsys, "features", str(recipe), "--layers", "nope", "--out", str(tmp_path / "g.safetensors"))
    assert code == 2 and "unknown layer 'nope'" in err and not (tmp_path / "g.safetensors").exists()


def test_convert_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = _write(tmp_path, "tiny.yaml", TINY_RECIPE)
    code, _, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    src = tmp_path / "run" / "model.safetensors"
    code, out, err = run(capsys, "convert", str(src), str(tmp_path / "m.onnx"), "--trust-factory", "tests.tinynets:tiny_cnn")
    assert code == 0, err
    assert (tmp_path / "m.onnx").exists() and "wrote" in out
    code, _, err = run(capsys, "convert", str(src), str(tmp_path / "m.xyz"))
    assert code == 2 and "--to" in err
    code, _, err = run(capsys, "convert", str(tmp_path / "absent.pt"), str(tmp_path / "n.safetensors"))
    assert code == 2 and not (tmp_path / "n.safetensors").exists()


def test_an_unusable_output_path_is_a_clean_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run(capsys, "schema", "--out", str(blocker / "schema.json"))
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
