"""Errors a user meets before the first epoch, and run directories that can be shared (issue 8: 8, 11-13, 16)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from recipec.cli import main
from recipec.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
TINY = """\
    name: tiny
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 2}}
    data: {dataset: imagefolder, root: data, image_size: 8, batch_size: 4, val_fraction: 0.25}
    train: {epochs: 1}
"""


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _images(root: Path, per_class: int = 6, classes: tuple[str, ...] = ("a", "b")) -> None:
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (10, 10), (40 * i, 200 * c, 90)).save(root / name / f"{i}.png")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------- 8.13: --set is blamed


def test_a_set_that_breaks_a_file_value_is_blamed_not_the_file():
    from recipec.recipe.load import load_recipe

    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, ["train.epochs=1"])
    (problem,) = info.value.problems
    assert problem.startswith("--set train.epochs=1: freeze.unfreeze.2: epoch 2 never starts"), problem
    assert f"written at {QUICKSTART}:" in problem  # where to change it, if the --set is meant


def test_only_the_guilty_set_is_blamed(capsys):
    code, _, err = run(capsys, "validate", str(QUICKSTART), "--set", "optimizer.lr=3e-4", "--set", "train.epochs=1")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: --set train.epochs=1: freeze.unfreeze.2:")
    assert "optimizer.lr=3e-4" not in err
    code, _, err = run(capsys, "validate", str(QUICKSTART), "--set", "seed=-1")
    assert code == 2 and err.startswith("error: --set seed=-1: seed: must be >= 0"), err


# --------------------------------------------------------------------------- 8.11: every path problem at once


def test_plan_reports_every_missing_path_at_once_located(tmp_path, capsys):
    recipe = _write(tmp_path / "r.yaml", """\
        name: r
        device: cpu
        model: {arch: resnet18, head: {num_classes: 3}}
        source: {checkpoint: missing.pt}
        data: {dataset: imagefolder, root: nodata}
        card: {template: nope.md.j2}
        train: {epochs: 1}
    """)
    for command in ("plan", "build"):
        code, _, err = run(capsys, command, str(recipe), "--set", "device=cpu")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 3, err
        assert lines[0].startswith(f"error: {recipe}:4:22: source.checkpoint: no such file {tmp_path / 'missing.pt'}")
        assert lines[1].startswith(f"error: {recipe}:5:36: data.root: {tmp_path / 'nodata'} does not exist")
        assert lines[2].startswith(f"error: {recipe}:6:18: card.template: no such template file")
        assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_missing_extends_comes_with_the_other_missing_paths(tmp_path, capsys):
    recipe = _write(tmp_path / "c.yaml", """\
        extends: base.yaml
        source: {recipe: up.yaml}
        data: {dataset: imagefolder, root: flowers}
    """)
    code, _, err = run(capsys, "plan", str(recipe))
    assert code == 2, err
    assert f"{recipe}:1:10: extends: no such file" in err
    assert f"{recipe}:2:18: source.recipe: no such recipe file {tmp_path / 'up.yaml'}" in err
    assert f"{recipe}:3:36: data.root: {tmp_path / 'flowers'} does not exist" in err


def test_plan_checks_the_data_against_the_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _images(tmp_path / "data", per_class=2, classes=("a", "b", "c"))
    (tmp_path / "data" / "empty").mkdir()
    recipe = _write(tmp_path / "r.yaml", TINY)
    code, _, err = run(capsys, "plan", str(recipe))
    assert code == 2, err
    assert f"class folder {tmp_path / 'data' / 'empty'} holds no images" in err
    assert f"{recipe}:3:" in err and "model.head.num_classes: is 2 but the data has 4 classes (a, b, c, empty)" in err
    code, _, err = run(capsys, "plan", str(recipe), "--set", "data.classes=[a, zebra]")
    assert code == 2 and "data.classes.1: unknown class 'zebra'" in err, err
    assert "num_classes" not in err  # the count is not judged from a list with a typo in it
    code, _, err = run(capsys, "plan", str(recipe), "--set", "data.classes=[a, b]")
    assert code == 0, err


# --------------------------------------------------------------------------- 8.12: broken images


def test_a_broken_image_names_its_file_in_plan_and_build(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _images(tmp_path / "data")
    _truncate(tmp_path / "data" / "b" / "3.png")
    (tmp_path / "data" / "a" / "junk.png").write_bytes(b"not an image at all")
    recipe = _write(tmp_path / "r.yaml", TINY)
    code, _, err = run(capsys, "plan", str(recipe))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert f"unreadable image {tmp_path / 'data' / 'a' / 'junk.png'}" in lines[0]
    assert f"unreadable image {tmp_path / 'data' / 'b' / '3.png'}" in lines[1]
    for n, workers in enumerate(("0", "1")):  # from a DataLoader worker too: one line, no traceback
        code, _, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / f"run{n}"),
                           "--set", f"data.num_workers={workers}")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: unreadable image "), err
        assert str(tmp_path / "data" / "a" / "junk.png") in err or str(tmp_path / "data" / "b" / "3.png") in err


def test_skipped_images_are_listed_and_the_order_stays_seeded(tmp_path, capsys, monkeypatch):
    from recipec.compiler.data_config import build_data
    from recipec.data.loaders import set_epoch

    monkeypatch.chdir(ROOT)
    _images(tmp_path / "data")
    _truncate(tmp_path / "data" / "b" / "3.png")
    bad = str(tmp_path / "data" / "b" / "3.png")
    recipe = _write(tmp_path / "r.yaml", TINY)
    code, out, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / "run"),
                         "--set", "data.on_bad_image=skip")
    assert code == 0, err
    assert "skipped 1 unreadable image(s)" in out and bad in out
    assert (tmp_path / "run" / "skipped_images.txt").read_text() == bad + "\n"
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["data"]["skipped_images"] == [bad] and plan["data"]["sizes"]["train"] + plan["data"]["sizes"]["val"] == 11
    code, out, err = run(capsys, "plan", str(recipe), "--set", "data.on_bad_image=skip")
    assert code == 0, err

    def order() -> list[list[int]]:
        data = build_data(dataset="imagefolder", root=str(tmp_path / "data"), image_size=8, batch_size=4,
                          seed=3, on_bad_image="skip")
        set_epoch(data, 1)
        return [y.tolist() for _, y in data.train]

    assert order() == order()


# --------------------------------------------------------------------------- 8.8: normalisation


def _export(path: Path, normalization: dict | None, *, recipec_export: bool = True) -> Path:
    from recipec.provenance import export_metadata
    from recipec.weights import formats
    from tests.tinynets import tiny_cnn

    state = tiny_cnn(num_classes=2, width=4).state_dict()
    meta = export_metadata(recipe_yaml="name: up\n", provenance={"normalization": normalization}) if recipec_export else {}
    formats.save(state, path, metadata=meta)
    return path


def _source_recipe(tmp_path: Path, normalize: str = "from_weights") -> Path:
    return _write(tmp_path / "down.yaml", f"""\
        name: down
        device: cpu
        model: {{arch: "tests.tinynets:tiny_cnn", kwargs: {{width: 4}}, head: {{num_classes: 10}}}}
        source: {{checkpoint: up.safetensors, exclude: ['^8\\.'], require_all: false}}
        data: {{dataset: digits, image_size: 8, per_class: 4, normalize: {normalize}}}
        train: {{epochs: 1}}
    """)


def test_normalisation_is_inherited_from_a_recipec_source(tmp_path, capsys, monkeypatch):
    from recipec.compiler.data_config import data_kwargs
    from recipec.recipe.load import load_recipe

    monkeypatch.chdir(ROOT)
    _export(tmp_path / "up.safetensors", {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]})
    recipe = _source_recipe(tmp_path)
    assert data_kwargs(load_recipe(recipe))["weights_normalization"] == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.25))
    code, out, err = run(capsys, "plan", str(recipe))
    assert code == 0, err
    assert "normalize mean [0.5, 0.4, 0.3], std [0.2, 0.2, 0.25], from the metadata of source.checkpoint" in out
    code, out, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / "run"))
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "plan.json").read_text())["data"]["normalize"]
    assert info["applied"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]}
    assert "source.checkpoint" in info["from"]


def test_a_source_without_recorded_normalisation_is_said_loudly(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _export(tmp_path / "up.safetensors", None, recipec_export=False)
    recipe = _source_recipe(tmp_path)
    code, out, err = run(capsys, "plan", str(recipe))
    assert code == 0, err
    assert "normalize inputs are NOT normalised" in out and "data.normalize: imagenet" in out
    code, out, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    assert "warning: inputs are NOT normalised" in err and out == ""  # --quiet silences progress, not warnings
    # a recipec source trained without normalisation: inherited, and said so
    _export(tmp_path / "up.safetensors", None)
    code, out, err = run(capsys, "plan", str(recipe))
    assert code == 0 and "was trained without normalisation" in out, err
    code, out, err = run(capsys, "plan", str(recipe), "--set", "data.normalize=imagenet")
    assert code == 0 and "from ImageNet statistics (data.normalize: imagenet)" in out, err


# --------------------------------------------------------------------------- 8.13: smoke runs


def test_smoke_runs_every_phase_of_the_schedule_on_a_few_batches(tmp_path, capsys, monkeypatch):
    import tempfile

    monkeypatch.chdir(ROOT)  # the tiny architecture is imported from the working directory
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    recipe = _write(tmp_path / "phases.yaml", """\
        name: phases
        device: cpu
        model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
        groups:
          - {name: low, match: ['^[01]\\.']}
          - {name: high, match: ['^[34]\\.']}
          - {name: head, match: ['^8\\.']}
        freeze: {trainable: [head], unfreeze: {7: [high], 19: [low]}}
        optimizer: {lr: 1.0e-2, lr_decay: 2.6, scheduler: {name: cosine, warmup_epochs: 3}}
        data: {dataset: digits, image_size: 8, batch_size: 8}
        train: {epochs: 30, early_stopping: {patience: 1}}
    """)
    where = tmp_path / "kept"  # --out keeps the smoke run (without it: a temporary directory, removed at the end)
    code, out, err = run(capsys, "build", str(recipe), "--smoke", "--smoke-batches", "1", "--out", str(where))
    assert code == 0, err
    assert out.splitlines()[-1] == f"done: {where}"  # kept, and said where
    metrics = [json.loads(line) for line in (where / "metrics.jsonl").read_text().splitlines()]
    # three phases (head; high, head; low, high, head), one epoch each, every group at its own lr
    assert [m["trainable_groups"] for m in metrics] == [["head"], ["high", "head"], ["low", "high", "head"]]
    assert all(len(set(m["lr"].values())) == 3 for m in metrics)
    plan = json.loads((where / "plan.json").read_text())
    assert plan["data"]["smoke"]["sizes"] == {"train": 8, "val": 8} and plan["epochs"] == 3
    saved = yaml.safe_load((where / "recipe.yaml").read_text())  # what ran, not what the file says
    assert saved["train"]["epochs"] == 3 and saved["freeze"]["unfreeze"] == {1: ["high"], 2: ["low"]}
    assert (where / "model.safetensors").exists() and (where / "README.md").exists()
    assert not (ROOT / "runs" / "phases").exists()
    code, _, err = run(capsys, "build", str(recipe), "--smoke", "--resume")
    assert code == 2 and "--resume" in err


@pytest.mark.parametrize("ending", ["passes", "fails", "interrupted"])
def test_a_smoke_run_removes_its_temporary_directory_however_it_ends(tmp_path, capsys, monkeypatch, ending):
    import tempfile

    import recipec.pipeline.build as pipeline_build
    from recipec.errors import BuildInterrupted, RunError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    seen = {}

    def fake_build(spec, *, out, smoke, **kwargs):  # what a smoke run leaves: 131 MB in the real one
        seen["out"], seen["smoke"] = Path(out), smoke
        (Path(out) / "checkpoints").mkdir(parents=True)
        (Path(out) / "checkpoints" / "last.pt").write_bytes(b"x" * 1000)
        if ending == "fails":
            raise RunError("onnx parity beyond tolerance")
        if ending == "interrupted":
            raise BuildInterrupted(str(out), None, None)
        return Path(out)

    monkeypatch.setattr(pipeline_build, "build", fake_build)
    code, out, err = run(capsys, "build", str(QUICKSTART), "--smoke", "--smoke-batches", "1")
    assert code == {"passes": 0, "fails": 1, "interrupted": 130}[ending], err
    assert seen["smoke"] == 1 and seen["out"].parent.parent == tmp_path / "tmp" and seen["out"].name == "quickstart"
    assert list((tmp_path / "tmp").iterdir()) == []  # the recipec-smoke-* directory is gone
    assert out.startswith(f"smoke run into {seen['out']} (a temporary directory, removed at the end; ")
    if ending == "passes":
        assert out.splitlines()[-1] == "done: the smoke run passed (its temporary directory is removed)"
    if ending == "interrupted":
        assert "a smoke run: nothing to resume (its temporary directory is removed)" in err


def test_smoke_recipe_compresses_the_schedule():
    from recipec.recipe.load import load_recipe
    from recipec.pipeline.smoke import smoke_recipe

    quick = smoke_recipe(load_recipe(QUICKSTART))
    assert quick.train.epochs == 2 and dict(quick.freeze.unfreeze) == {1: ["layer3"]}
    gradual = smoke_recipe(load_recipe(ROOT / "recipes" / "gradual-unfreezing.yaml"))
    assert gradual.train.epochs == 6 and gradual.freeze.gradual is not None
    assert (gradual.freeze.gradual.start, gradual.freeze.gradual.every) == (1, 1)
    assert gradual.optimizer.scheduler.warmup_epochs == pytest.approx(6 / 30)


# --------------------------------------------------------------------------- 8.16: a run directory can move


def test_a_moved_tree_rebuilds_from_its_recipe_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    first = tmp_path / "first" / "proj"
    _images(first / "data")
    template = _write(first / "card.md.j2", "# {{ name }} card\n")
    recipe = _write(first / "r.yaml", TINY + "    card: {template: card.md.j2}\n")
    code, _, err = run(capsys, "build", str(recipe), "--out", str(first / "runs" / "r"))
    assert code == 0, err
    saved = yaml.safe_load((first / "runs" / "r" / "recipe.yaml").read_text())
    assert saved["data"]["root"] == "../../data" and saved["card"]["template"] == "../../card.md.j2"
    assert str(tmp_path) not in (first / "runs" / "r" / "README.md").read_text()
    from recipec.weights import formats

    embedded = formats.read_metadata(first / "runs" / "r" / "model.safetensors")
    assert str(tmp_path) not in embedded["recipec.recipe"]
    assert json.loads(embedded["recipec.provenance"])["paths"]["data.root"] == str(first / "data")
    assert template.exists()

    moved = tmp_path / "second" / "proj"
    shutil.move(str(tmp_path / "first"), str(tmp_path / "second"))
    code, _, err = run(capsys, "build", str(moved / "runs" / "r" / "recipe.yaml"), "--out", str(moved / "runs" / "r2"))
    assert code == 0, err
    again = json.loads((moved / "runs" / "r2" / "plan.json").read_text())
    assert again["data"]["root"] == str(moved / "data")
    assert (moved / "runs" / "r2" / "README.md").read_text().startswith("# tiny card")
    # the export's own recipe resolves against its directory: recipec.load and features read the moved data
    from recipec.inference.restore import read_export

    spec, _, _ = read_export(moved / "runs" / "r" / "model.safetensors")
    assert spec.data.root == str(moved / "data")
    # a conversion into another directory carries the paths along
    code, _, err = run(capsys, "convert", str(moved / "runs" / "r" / "model.safetensors"),
                       str(moved / "exports" / "deep" / "m.pt"), "--trust-factory", "tests.tinynets:tiny_cnn")
    assert code == 0, err
    spec, _, _ = read_export(moved / "exports" / "deep" / "m.pt")
    assert spec.data.root == str(moved / "data") and spec.card.template == str(moved / "card.md.j2")


def test_resume_and_upstream_checks_still_hold_with_relative_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _images(tmp_path / "data")
    recipe = _write(tmp_path / "r.yaml", TINY.replace("epochs: 1", "epochs: 2"))
    out = tmp_path / "runs" / "r"
    code, _, err = run(capsys, "build", str(recipe), "--out", str(out))
    assert code == 0, err
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert yaml.safe_load(state["recipe"])["data"]["root"] == "../../data"
    from recipec.pipeline.runs import check_resumable as _check_resumable
    from recipec.pipeline.upstream import same_recipe as _same_recipe
    from recipec.recipe.load import load_recipe

    spec = load_recipe(recipe)
    _check_resumable(spec, state["recipe"], out)  # the same recipe: accepted
    assert _same_recipe(out / "recipe.yaml", spec)
    assert not _same_recipe(out / "recipe.yaml", load_recipe(recipe, ["seed=1"]))
