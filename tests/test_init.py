"""`recipec init`: the recipe it writes validates, plans and builds, for every data layout; bad input writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from recipec.cli import main
from recipec.recipe.schema import SCHEMA_FILE, schema_text
from tests.imagedata import make_imagefolder, make_manifest

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def digits_folder(root: Path, per_class: int = 6) -> Path:
    """The 8x8 digits scikit-learn ships, as PNG class folders root/<digit>/<n>.png."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for image, target in zip(digits.images, digits.target):
        n = counts.get(int(target), 0)
        if n < per_class:
            (root / str(target)).mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255 / 16).astype(np.uint8)).save(root / str(target) / f"{n:03d}.png")
            counts[int(target)] = n + 1
    return root


@pytest.fixture
def imagenet_standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet18's ImageNet weights (random tensors) where the torch hub cache keeps them: nothing is downloaded."""
    import torch
    import torchvision

    from recipec.model import pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RECIPEC_ALLOW_DOWNLOAD", raising=False)
    cached = pretrained.weights_cache_path(pretrained.resolve_weights("resnet18", "IMAGENET1K_V1"))
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), cached)


def _schema_of(recipe: Path) -> Path:
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    uri = first.split("$schema=", 1)[1]
    return Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else (recipe.parent / uri).resolve()


def test_digits_image_folder_validates_plans_and_builds(tmp_path, capsys, imagenet_standin):
    data = digits_folder(tmp_path / "digits")
    out = tmp_path / "recipes" / "digits.yaml"
    out.parent.mkdir()
    code, stdout, err = run(capsys, "init", str(data), "--out", str(out))
    assert (code, err) == (0, ""), err
    assert f"wrote {out}: resnet18, 10 classes (0, 1, 2, 3, 4, ...)" in stdout
    text = out.read_text()
    assert _schema_of(out) == SCHEMA_FILE and SCHEMA_FILE.read_text() == schema_text()  # the installed schema
    recipe = yaml.safe_load(text)
    assert recipe["model"] == {"arch": "resnet18", "weights": "DEFAULT",
                               "head": {"num_classes": 10, "type": "linear", "dropout": 0.1}}
    assert recipe["freeze"] == {"trainable": ["head"], "gradual": {"every": 2, "start": 2}, "batchnorm": "frozen"}
    assert recipe["data"]["dataset"] == "imagefolder" and recipe["data"]["root"] == "../digits"  # relative to out
    assert recipe["optimizer"]["lr_decay"] == 2.6 and recipe["name"] == "digits-resnet18"

    assert run(capsys, "validate", str(out))[:2] == (0, f"{out}: ok\n")
    code, stdout, err = run(capsys, "plan", str(out), "--device", "cpu", "--json")
    assert code == 0, err
    plan = json.loads(stdout)
    groups = {g["name"]: g["trainable"] for g in plan["groups"]}
    assert groups["head"] == [True] * 10 and groups["layer4"] == [False] * 2 + [True] * 8
    assert groups["layer1"] == [False] * 8 + [True] * 2 and not any(groups["stem"])
    code, _, err = run(capsys, "build", str(out), "--out", str(tmp_path / "run"), "--device", "cpu", "--smoke",
                       "--smoke-batches", "1", "--set", "data.image_size=32", "--quiet")
    assert code == 0, err
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_split_folders(tmp_path, capsys, imagenet_standin):
    make_imagefolder(tmp_path / "pets", ["cat", "dog", "fox"], {"train": 3, "val": 1, "test": 1})
    (tmp_path / "pets" / "test" / "dog").mkdir(exist_ok=True)
    out = tmp_path / "pets.yaml"
    code, stdout, err = run(capsys, "init", str(tmp_path / "pets"), "--out", str(out))
    assert code == 0, err
    assert "from the split folders train/, val/, test/" in stdout
    data = yaml.safe_load(out.read_text())["data"]
    assert data["root"] == "pets" and "val_fraction" not in data  # val/ is the validation split
    code, stdout, err = run(capsys, "plan", str(out), "--device", "cpu")
    assert code == 0, err
    assert "folder" in stdout and "pets/test" in stdout


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest(tmp_path, capsys, imagenet_standin, fmt):
    make_manifest(tmp_path / "m", ["a", "b"], {"train": 4, "val": 2, "test": 1}, fmt=fmt)
    manifest = tmp_path / "m" / f"manifest.{fmt}"
    out = tmp_path / "m.yaml"
    code, _stdout, err = run(capsys, "init", str(manifest), "--out", str(out))
    assert code == 0, err
    recipe = yaml.safe_load(out.read_text())
    assert recipe["data"]["dataset"] == "manifest" and recipe["data"]["root"] == f"m/manifest.{fmt}"
    assert recipe["model"]["head"]["num_classes"] == 2 and "task" not in recipe
    assert run(capsys, "plan", str(out), "--device", "cpu")[0] == 0


def test_multilabel_manifest(tmp_path, capsys):
    make_manifest(tmp_path / "m", ["a", "b", "c"], {"train": 20}, multilabel=True, fmt="jsonl")
    manifest = tmp_path / "m" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    labels = {label for row in rows for label in row["label"].split(";") if label}
    out = tmp_path / "m.yaml"
    assert run(capsys, "init", str(manifest), "--out", str(out))[0] == 0
    recipe = yaml.safe_load(out.read_text())
    assert recipe["task"] == "multilabel" and recipe["model"]["head"]["num_classes"] == len(labels)
    assert run(capsys, "validate", str(out))[0] == 0


def test_without_data_the_digits(tmp_path, capsys, monkeypatch, imagenet_standin):
    monkeypatch.chdir(tmp_path)
    code, _stdout, err = run(capsys, "init")
    assert code == 0, err
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert recipe["data"] == {"dataset": "digits", "image_size": 32, "normalize": "from_weights", "batch_size": 64}
    assert recipe["model"]["head"]["num_classes"] == 10
    assert run(capsys, "plan", "recipe.yaml", "--device", "cpu")[0] == 0


def test_a_timm_architecture(tmp_path, capsys):
    pytest.importorskip("timm")
    make_imagefolder(tmp_path / "d", ["a", "b"], {"": 2})
    out = tmp_path / "t.yaml"
    assert run(capsys, "init", str(tmp_path / "d"), "--arch", "timm/convnext_atto", "--out", str(out))[0] == 0
    text = out.read_text()
    assert "timm's convnext_atto" in text and "`recipec init " in text and "--arch timm/convnext_atto`" in text
    assert yaml.safe_load(text)["model"]["arch"] == "timm/convnext_atto"
    assert run(capsys, "validate", str(out))[0] == 0


def test_an_existing_recipe_is_kept_unless_force(tmp_path, capsys):
    make_imagefolder(tmp_path / "d", ["a", "b"], {"": 2})
    out = tmp_path / "r.yaml"
    out.write_text("mine\n")
    code, _, err = run(capsys, "init", str(tmp_path / "d"), "--out", str(out))
    assert code == 2 and f"error: {out}: exists" in err and "--force" in err
    assert out.read_text() == "mine\n"
    assert run(capsys, "init", str(tmp_path / "d"), "--out", str(out), "--force")[0] == 0
    assert yaml.safe_load(out.read_text())["model"]["head"]["num_classes"] == 2


def _refused(capsys, tmp_path: Path, *args: str) -> str:
    out = tmp_path / "r.yaml"
    code, stdout, err = run(capsys, "init", *args, "--out", str(out))
    assert code == 2 and stdout == "" and err.startswith("error: ") and "Traceback" not in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".r.yaml")]
    return err


def test_bad_data_is_refused_and_nothing_is_written(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "labels.csv").write_text("path,label\n")
    err = _refused(capsys, tmp_path, str(empty))
    assert f"error: {empty}: no class folders" in err and f"recipec init {empty / 'labels.csv'}" in err
    err = _refused(capsys, tmp_path, str(tmp_path / "absent"))
    assert "no such folder or file" in err
    make_imagefolder(tmp_path / "one", ["cat"], {"": 2})
    assert "one class (cat)" in _refused(capsys, tmp_path, str(tmp_path / "one"))
    make_imagefolder(tmp_path / "d", ["a", "b"], {"": 2})
    (tmp_path / "d" / "c").mkdir()
    assert f"{tmp_path / 'd' / 'c'}: a class folder without images" in _refused(capsys, tmp_path, str(tmp_path / "d"))
    make_imagefolder(tmp_path / "s", ["a", "b"], {"train": 1, "val": 1})
    (tmp_path / "s" / "val" / "z").mkdir()
    assert "class 'z' is not a class of" in _refused(capsys, tmp_path, str(tmp_path / "s"))
    (tmp_path / "bad.csv").write_text("file,class\nx.png,a\n")
    assert "bad.csv line 1: the header must be path,label[,split]" in _refused(capsys, tmp_path, str(tmp_path / "bad.csv"))


def test_bad_arch_and_out_are_refused(tmp_path, capsys):
    make_imagefolder(tmp_path / "d", ["a", "b"], {"": 2})
    err = _refused(capsys, tmp_path, str(tmp_path / "d"), "--arch", "resnet181")
    assert "error: --arch resnet181: unknown architecture 'resnet181'; did you mean 'resnet18'" in err
    assert "for your own factory" in _refused(capsys, tmp_path, str(tmp_path / "d"), "--arch", "my.nets:make")
    code, _, err = run(capsys, "init", str(tmp_path / "d"), "--out", str(tmp_path / "r.json"))
    assert code == 2 and "name it .yaml or .yml" in err and not (tmp_path / "r.json").exists()
    code, _, err = run(capsys, "init", str(tmp_path / "d"), "--out", str(tmp_path / "d"))
    assert code == 2 and "Traceback" not in err


def test_init_imports_no_torch(tmp_path):
    make_imagefolder(tmp_path / "d", ["a", "b"], {"": 1})
    code = ("import sys; from recipec.cli import main\n"
            "try:\n    main(['init', sys.argv[1], '--out', sys.argv[2]])\nexcept SystemExit as e:\n    assert not e.code\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d"), str(tmp_path / "r.yaml")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("folder", ["my pets", "on", "1e3", "#x"])
def test_a_folder_name_yaml_would_misread_is_quoted(tmp_path, capsys, folder):
    make_imagefolder(tmp_path / folder, ["a", "b"], {"": 1})
    out = tmp_path / "r.yaml"
    assert run(capsys, "init", str(tmp_path / folder), "--out", str(out))[0] == 0
    assert run(capsys, "validate", str(out))[0] == 0
    from recipec.recipe.load import load_recipe

    assert load_recipe(out).data.root == str(tmp_path / folder)
