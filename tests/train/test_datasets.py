"""Data people already have: split folders, manifests (CSV, JSON lines), the test split, build_split."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from recipec.cli import main
from recipec.compiler.data_config import data_kwargs
from recipec.errors import DatasetError
from recipec.recipe.load import load_recipe
from recipec.compiler.data_config import build_data, build_split
from recipec.data.manifest import ManifestRow, read_manifest
from tests.imagedata import make_imagefolder, make_manifest

CLASSES = ["cat", "dog", "owl"]
FAST = {"image_size": 16, "normalize": "none", "batch_size": 4}


def everything(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def files_of(data_loader: torch.utils.data.DataLoader) -> list[str]:
    """The files of a loader over image files, in loader order (eval loaders do not shuffle)."""
    dataset = data_loader.dataset
    return [dataset.source.samples[i][0] for i in dataset.indices]


@pytest.fixture
def split_folders(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[Path, str]]]]:
    root = tmp_path / "data"
    return root, make_imagefolder(root, CLASSES, {"train": 4, "val": 2, "test": {"cat": 3, "dog": 1}})


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


# --------------------------------------------------------------------------- split folders


def test_split_folders_give_train_val_and_test(split_folders) -> None:
    root, written = split_folders
    data = build_data(dataset="imagefolder", root=str(root), **FAST)
    assert data.classes == CLASSES
    assert data.info["sizes"] == {"train": 12, "val": 6, "test": 4}
    assert data.info["test_per_class"] == {"cat": 3, "dog": 1, "owl": 0}  # a class missing in test is fine
    assert data.info["splits"] == {"train": f"folder {root / 'train'}", "val": f"folder {root / 'val'}",
                                   "test": f"folder {root / 'test'}"}
    assert sorted(files_of(data.val)) == sorted(str(p) for p, _ in written["val"])
    assert files_of(data.test) == [str(p) for p, _ in written["test"]]
    images, labels = everything(data.test)
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 0, 1]
    train_files = {data.train.dataset.source.samples[i][0] for i in data.train.dataset.indices}
    assert train_files == {str(p) for p, _ in written["train"]}
    json.dumps(data.info)


def test_a_val_class_unknown_to_training_is_a_located_error(split_folders, tmp_path, capsys) -> None:
    root, _ = split_folders
    (root / "val" / "zebra").mkdir()
    Image.new("RGB", (16, 16)).save(root / "val" / "zebra" / "z.png")
    with pytest.raises(DatasetError) as e:
        build_data(dataset="imagefolder", root=str(root), **FAST)
    assert e.value.paths == [("data", "root")] and str(root / "val" / "zebra") in str(e.value)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        model: {{arch: "tests.tinynets:tiny_cnn", kwargs: {{width: 4}}, head: {{num_classes: 3}}}}
        data: {{dataset: imagefolder, root: {root}, image_size: 16}}
        train: {{epochs: 1}}
    """))
    code, _, err = run(capsys, "plan", str(recipe))
    assert code == 2 and "Traceback" not in err
    assert f"error: {recipe}:2:" in err and "zebra" in err and "not a class of the training folder" in err


def test_no_val_folder_means_the_random_stratified_split_of_train(tmp_path) -> None:
    root = tmp_path / "data"
    make_imagefolder(root, CLASSES, {"train": 5, "test": 2})
    make_imagefolder(tmp_path / "flat", CLASSES, {"": 5})  # the same training images, without split folders
    data = build_data(dataset="imagefolder", root=str(root), val_fraction=0.4, seed=3, **FAST)
    flat = build_data(dataset="imagefolder", root=str(tmp_path / "flat"), val_fraction=0.4, seed=3, **FAST)
    assert data.info["sizes"] == {"train": 9, "val": 6, "test": 6}
    assert data.info["splits"]["val"] == "random 40% of each training class (seed 3)"
    # the same split function as a plain folder: the same files held out
    assert [Path(f).relative_to(root / "train") for f in files_of(data.val)] == \
        [Path(f).relative_to(tmp_path / "flat") for f in files_of(flat.val)]
    assert flat.test is None and flat.info["sizes"]["test"] == 0 and flat.info["splits"]["test"].startswith("none")


def test_valid_folder_is_the_val_split_and_a_class_empty_in_train_is_named(tmp_path) -> None:
    root = tmp_path / "data"
    make_imagefolder(root, CLASSES, {"train": 2, "valid": 1})
    data = build_data(dataset="imagefolder", root=str(root), **FAST)
    assert data.info["sizes"]["val"] == 3 and data.info["splits"]["val"] == f"folder {root / 'valid'}"
    (root / "train" / "emu").mkdir()
    with pytest.raises(DatasetError, match="class 'emu' has no images"):
        build_data(dataset="imagefolder", root=str(root), **FAST)


def test_the_fingerprint_covers_the_test_split(split_folders) -> None:
    root, written = split_folders
    before = build_data(dataset="imagefolder", root=str(root), **FAST).info["fingerprint"]
    Image.new("RGB", (20, 20)).save(written["test"][0][0])  # same name, other bytes
    after = build_data(dataset="imagefolder", root=str(root), **FAST).info["fingerprint"]
    assert before != after


def test_bad_images_in_test_are_skipped_and_listed(split_folders) -> None:
    root, written = split_folders
    broken = written["test"][1][0]
    broken.write_bytes(b"not a png")
    data = build_data(dataset="imagefolder", root=str(root), on_bad_image="skip", **FAST)
    assert data.info["skipped_images"] == [str(broken)] and data.info["sizes"]["test"] == 3


# --------------------------------------------------------------------------- manifests


def test_read_manifest_parses_labels_splits_and_paths(tmp_path) -> None:
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / "img" / name)
    elsewhere = tmp_path / "other" / "d.png"
    elsewhere.parent.mkdir()
    Image.new("RGB", (4, 4)).save(elsewhere)
    manifest = tmp_path / "m" / "labels.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"path,label,split,notes\n../img/a.png,cat;dog,train,x\n../img/b.png,,val,\n\n"
                        f"../img/c.png, owl ;;owl,,\n{elsewhere},dog,test,\n")
    rows = read_manifest(manifest)
    img = str(tmp_path / "img")
    assert rows == [ManifestRow(f"{img}/a.png", ("cat", "dog"), "train", 2),
                    ManifestRow(f"{img}/b.png", (), "val", 3),
                    ManifestRow(f"{img}/c.png", ("owl",), None, 5),
                    ManifestRow(str(elsewhere), ("dog",), "test", 6)]  # an absolute path is taken as it is
    jsonl = tmp_path / "m" / "labels.jsonl"
    jsonl.write_text('{"path": "../img/a.png", "label": ["cat", "dog"]}\n\n{"path": "../img/b.png", "label": "", '
                     '"split": "test"}\n')
    assert read_manifest(jsonl) == [ManifestRow(f"{img}/a.png", ("cat", "dog"), None, 1),
                                    ManifestRow(f"{img}/b.png", (), "test", 3)]


def test_bad_manifest_lines_are_located_all_at_once(tmp_path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\na.png,cat,train\n,cat,train\nmissing.png,cat,val\na.png,dog,train\n"
                        "a.png,cat,holdout\nb.png,cat\n")
    with pytest.raises(DatasetError) as e:
        read_manifest(manifest)
    text = str(e.value)
    assert e.value.paths == [("root",)] * 6, text  # the data layer names its field; the compiler relabels it
    assert [p.split(":")[1] for p in e.value.problems] == [f" manifest.csv line {n}" for n in (3, 4, 5, 6, 6, 7)]
    assert "manifest.csv line 3: empty path" in text
    assert "manifest.csv line 4: missing.png: no such file" in text and "relative to the manifest's directory" in text
    assert "manifest.csv line 5: a.png is listed already on line 2" in text
    assert "manifest.csv line 6: unknown split 'holdout'" in text
    assert "manifest.csv line 7: 2 fields, the header has 3" in text
    manifest.write_text("file,label\na.png,cat\n")
    with pytest.raises(DatasetError, match="manifest.csv line 1: the header 'file,label' has no column path"):
        read_manifest(manifest)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.png", "label": "cat"}\n{"path": "a.png"\n')
    with pytest.raises(DatasetError, match="m.jsonl line 2: not JSON"):
        read_manifest(jsonl)
    with pytest.raises(DatasetError, match="a manifest is a .csv file"):
        read_manifest(tmp_path / "a.png")


def test_manifest_dataset_with_a_split_column(tmp_path) -> None:
    manifest = make_manifest(tmp_path / "m", CLASSES, {"train": 4, "val": 1, "test": 2})
    data = build_data(dataset="manifest", root=str(manifest), **FAST)
    assert data.classes == CLASSES and data.info["sizes"] == {"train": 12, "val": 3, "test": 6}
    assert data.info["splits"]["val"] == f"manifest {manifest}, split column"
    rows = read_manifest(manifest)
    assert files_of(data.test) == [r.path for r in rows if r.split == "test"]
    assert everything(data.test)[1].tolist() == [0, 0, 1, 1, 2, 2]
    # fingerprinted relative to the manifest's directory: a moved tree keeps its fingerprint
    os.rename(tmp_path / "m", tmp_path / "moved")
    moved = build_data(dataset="manifest", root=str(tmp_path / "moved" / "manifest.csv"), **FAST)
    assert moved.info["fingerprint"] == data.info["fingerprint"]


def test_manifest_without_val_rows_splits_train_at_random(tmp_path) -> None:
    manifest = make_manifest(tmp_path / "m", CLASSES, {"train": 5, "test": 1}, fmt="jsonl")
    data = build_data(dataset="manifest", root=str(manifest), val_fraction=0.2, **FAST)
    assert data.info["sizes"] == {"train": 12, "val": 3, "test": 3}
    assert data.info["splits"]["val"].startswith("random 20%")
    plain = make_manifest(tmp_path / "p", CLASSES, {None: 5})
    data = build_data(dataset="manifest", root=str(plain), val_fraction=0.2, **FAST)
    assert data.info["sizes"] == {"train": 12, "val": 3, "test": 0} and data.test is None


def test_manifest_classes_come_from_the_training_rows(tmp_path) -> None:
    manifest = make_manifest(tmp_path / "m", CLASSES, {"train": 2})
    with open(manifest, "a") as f:
        f.write("images/0000.png,,val\n")
    with pytest.raises(DatasetError, match=r"listed already"):
        build_data(dataset="manifest", root=str(manifest), **FAST)
    multi = make_manifest(tmp_path / "ml", CLASSES, {"train": 12}, multilabel=True)
    wrong = [r.line for r in read_manifest(multi) if len(r.labels) != 1]
    assert wrong  # some images have none or several labels
    with pytest.raises(DatasetError, match=rf"manifest.csv line {wrong[0]}: \d labels .*one label per row"):
        build_data(dataset="manifest", root=str(multi), **FAST)
    Image.new("RGB", (16, 16)).save(tmp_path / "m" / "images" / "new.png")
    with open(manifest, "w") as f:
        f.write("path,label,split\nimages/0000.png,cat,train\nimages/0001.png,dog,train\nimages/new.png,emu,test\n")
    with pytest.raises(DatasetError, match=r"manifest.csv line 4: label 'emu' \(split test\) is on no training row"):
        build_data(dataset="manifest", root=str(manifest), **FAST)


# --------------------------------------------------------------------------- build_split


def test_build_split_is_the_run_split_and_takes_other_data(split_folders, tmp_path) -> None:
    root, written = split_folders
    kwargs = dict(dataset="imagefolder", root=str(root), **FAST)
    data = build_data(**kwargs)
    for split, loader in (("val", data.val), ("test", data.test)):
        part = build_split(split=split, classes=CLASSES, **kwargs)
        assert part.n == len(loader.dataset) and part.info["source"] == data.info["splits"][split]
        assert torch.equal(everything(part.loader)[0], everything(loader)[0])
    train = build_split(split="train", classes=CLASSES, **kwargs | {"batch_size": 5})
    assert train.n == 12 and train.loader.batch_size == 5 and train.info["per_class"] == data.info["train_per_class"]
    # the model's classes label the data: another order relabels, a class the model lacks is left out
    part = build_split(split="test", classes=["dog", "cat"], **kwargs)
    assert everything(part.loader)[1].tolist() == [1, 1, 1, 0] and part.info["left_out"] == {}
    part = build_split(split="val", classes=["owl", "cat"], **kwargs)
    assert part.n == 4 and part.info["left_out"] == {"dog": 2}
    # other data: a plain folder, a folder with split folders (the split picks one), a manifest
    other = tmp_path / "other"
    make_imagefolder(other, ["dog", "owl"], {"": 2})
    part = build_split(split="test", override=str(other), classes=CLASSES, **kwargs)
    assert part.n == 4 and everything(part.loader)[1].tolist() == [1, 1, 2, 2]
    assert part.info["source"] == f"folder {other}"
    part = build_split(split="val", override=str(root), classes=CLASSES, **kwargs)
    assert sorted(files_of(part.loader)) == sorted(str(p) for p, _ in written["val"])
    manifest = make_manifest(tmp_path / "m", ["owl", "cat"], {"train": 1, "test": 2})
    part = build_split(split="test", override=str(manifest), classes=CLASSES, **kwargs)
    assert everything(part.loader)[1].tolist() == [2, 2, 0, 0]
    with pytest.raises(DatasetError, match=r"class 'owl' is not one of the model's classes \(cat, dog\)"):
        build_split(split="test", override=str(other), classes=["cat", "dog"], **kwargs)


def test_build_split_of_a_random_val_is_the_runs_val_and_a_missing_test_says_what_exists(tmp_path) -> None:
    kwargs = dict(dataset="digits", image_size=8, in_channels=1, normalize="none", per_class=30, seed=5)
    data = build_data(**kwargs)
    part = build_split(split="val", classes=data.classes, **kwargs)
    assert torch.equal(everything(part.loader)[0], everything(data.val)[0])
    assert torch.equal(everything(part.loader)[1], everything(data.val)[1])
    subset = build_split(split="val", classes=["3", "7"], **kwargs)  # each class split as in the full run
    expected = everything(build_data(**kwargs | {"classes": ["3", "7"]}).val)
    assert torch.equal(everything(subset.loader)[0], expected[0])
    with pytest.raises(DatasetError, match=r"no test split .*--data"):
        build_split(split="test", classes=data.classes, **kwargs)
    with pytest.raises(DatasetError, match="no val split"):
        build_split(split="val", classes=data.classes, **kwargs | {"val_fraction": 0.0})
    other = tmp_path / "other"
    make_imagefolder(other, ["cat"], {"train": 1})
    with pytest.raises(DatasetError, match=r"has no test folder \(it has train/\)"):
        build_split(split="test", override=str(other), classes=["cat"], **kwargs)


# --------------------------------------------------------------------------- end to end


def test_build_on_split_folders_records_the_splits(split_folders, tmp_path, capsys) -> None:
    from recipec.pipeline.build import build

    root, _ = split_folders
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(textwrap.dedent(f"""\
        name: folders
        device: cpu
        model: {{arch: "tests.tinynets:tiny_cnn", kwargs: {{width: 4}}, head: {{num_classes: 3}}}}
        freeze: {{trainable: [head]}}
        groups: [{{name: body, match: ['^[0-6][.]']}}, {{name: head, match: ['^8[.]']}}]
        data: {{dataset: imagefolder, root: {root}, image_size: 16, batch_size: 4}}
        train: {{epochs: 1}}
        export: {{formats: [safetensors]}}
    """))
    code, out, err = run(capsys, "plan", str(recipe_file))
    assert code == 0, err
    assert "data: 12 training / 6 validation / 4 test examples" in out
    assert f"  test         4  folder {root / 'test'}" in out
    recipe = load_recipe(recipe_file)
    run_dir = build(recipe, out=tmp_path / "run")
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["data"]["sizes"] == {"train": 12, "val": 6, "test": 4}
    assert plan["data"]["val_per_class"] == {"cat": 2, "dog": 2, "owl": 2}
    assert plan["data"]["splits"]["test"] == f"folder {root / 'test'}"
    part = build_split(split="test", **data_kwargs(recipe) | {"classes": plan["data"]["classes"]})
    assert part.n == 4


def test_plan_checks_a_manifest_before_anything_runs(tmp_path, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    body = """\
        model: {{arch: "tests.tinynets:tiny_cnn", kwargs: {{width: 4}}, head: {{num_classes: {n}}}}}
        data: {{dataset: manifest, root: {root}, image_size: 16}}
        train: {{epochs: 1}}
    """
    recipe.write_text(textwrap.dedent(body.format(n=3, root="nowhere.csv")))
    code, _, err = run(capsys, "plan", str(recipe))
    assert code == 2 and f"{recipe}:2:" in err and "no such manifest file" in err
    manifest = make_manifest(tmp_path / "m", CLASSES, {"train": 2, "val": 1})
    recipe.write_text(textwrap.dedent(body.format(n=4, root=manifest)))
    code, _, err = run(capsys, "plan", str(recipe))
    assert code == 2 and "model.head.num_classes: is 4 but the data has 3 classes" in err
    (tmp_path / "m" / "images" / "0003.png").write_bytes(b"broken")
    recipe.write_text(textwrap.dedent(body.format(n=3, root=manifest)))
    code, _, err = run(capsys, "plan", str(recipe))
    assert code == 2 and f"unreadable image {tmp_path / 'm' / 'images' / '0003.png'}" in err


def test_a_manifest_is_read_bounded_and_only_from_a_regular_file(tmp_path, monkeypatch) -> None:
    import recipec.data.manifest as manifest_module

    manifest = make_manifest(tmp_path / "m", CLASSES, {"train": 1})
    monkeypatch.setattr(manifest_module, "MANIFEST_MAX_BYTES", 16)
    with pytest.raises(DatasetError, match="more than a manifest may be") as e:
        read_manifest(manifest)
    assert e.value.paths == [("root",)]
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match="FIFO"):
        read_manifest(fifo)


def test_features_eval_and_predict_use_no_private_helper_of_build() -> None:
    package = Path(__file__).resolve().parents[2] / "recipec"
    for module in ("pipeline/features.py", "pipeline/evaluate.py", "inference/predict.py", "inference/predictor.py"):
        text = (package / module).read_text()
        assert "from recipec.pipeline.build import" not in text and "build._" not in text, module


def test_digits_are_scikit_learns_without_importing_it() -> None:
    """The digits come from the file load_digits reads, as it reads it; scikit-learn (with scipy and pandas,
    about a second) is not imported for them."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from recipec.data.datasets import load_examples

    examples, digits = load_examples("digits", None, None, 0), load_digits()
    assert torch.equal(examples.images, torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0)
    assert examples.targets == [int(t) for t in digits.target]
    script = "import sys; from recipec.data.datasets import load_examples; load_examples('digits', None, None, 0); " \
             "print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True,
                          timeout=120).stdout.strip() == "False"
