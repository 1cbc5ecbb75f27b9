"""The official test set of cifar10/cifar100/mnist/fashionmnist is the run's test split.

Stand-in files on disk, never a download: MNIST and FashionMNIST as tiny raw idx files
(``root/MNIST/raw/train-images-idx3-ubyte`` ...), CIFAR-10 as tiny pickled batches whose md5
sums replace torchvision's in its file lists (the integrity check itself still runs).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from recipec.cli import main
from recipec.errors import DatasetError
from recipec.compiler.data_config import build_data, build_split

TRAIN_PER_CLASS, TEST_PER_CLASS, SIDE = 3, 2, 8
KW = {"image_size": SIDE, "normalize": "none", "batch_size": 64, "val_fraction": 0.34}


def _idx(path: Path, array: np.ndarray) -> None:
    """The idx format torchvision's MNIST reads: magic (0x08 = uint8, then the rank), big-endian dims, bytes."""
    path.write_bytes(struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def _images(labels: np.ndarray, seed: int, channels: int | None = None, side: int = SIDE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (len(labels), side, side) if channels is None else (len(labels), channels, side, side)
    return (labels.reshape(-1, *[1] * (len(shape) - 1)) * 20 + rng.integers(0, 50, shape)).astype(np.uint8)


def write_mnist(root: Path, folder: str = "MNIST", test_labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train = np.repeat(np.arange(10), TRAIN_PER_CLASS)
    test = np.tile(np.arange(10), TEST_PER_CLASS) if test_labels is None else test_labels
    arrays = {"train-images-idx3-ubyte": _images(train, 0), "train-labels-idx1-ubyte": train,
              "t10k-images-idx3-ubyte": _images(test, 1), "t10k-labels-idx1-ubyte": test}
    for name, array in arrays.items():
        _idx(raw / name, array)
    return arrays


def everything(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_the_official_test_set_is_the_test_split_and_val_comes_from_train(tmp_path: Path, dataset: str,
                                                                           folder: str) -> None:
    arrays = write_mnist(tmp_path, folder)
    data = build_data(dataset=dataset, root=str(tmp_path), **KW)
    n_train, n_test = 10 * TRAIN_PER_CLASS, 10 * TEST_PER_CLASS
    sizes = data.info["sizes"]
    assert sizes["test"] == n_test and sizes["train"] + sizes["val"] == n_train and sizes["val"] == 10
    assert data.info["splits"]["test"] == f"{dataset} official test set under {tmp_path}"
    assert data.info["splits"]["val"].startswith("random 34% of each training class")
    assert data.info["test_per_class"] == dict.fromkeys(data.classes, TEST_PER_CLASS)
    expected_classes = getattr(torchvision.datasets, folder).classes
    assert data.classes == list(expected_classes)
    images, labels = everything(data.test)  # the t10k files, in order, pixel for pixel
    assert torch.equal(labels, torch.as_tensor(arrays["t10k-labels-idx1-ubyte"], dtype=torch.long))
    assert images.shape == (n_test, 3, SIDE, SIDE)
    expected = torch.as_tensor(arrays["t10k-images-idx3-ubyte"], dtype=torch.float32) / 255
    assert torch.allclose(images[:, 0], expected, atol=1e-6) and torch.equal(images[:, 0], images[:, 2])
    train_images, _ = everything(data.train)  # nothing of the test set is trained on
    assert train_images.shape[0] == sizes["train"]
    test_set = {tuple(x.flatten().tolist()) for x in expected}
    assert not test_set & {tuple(x[0].flatten().tolist()) for x in train_images}


def test_the_fingerprint_covers_the_test_split_and_test_split_false_leaves_it_out(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    first = build_data(dataset="mnist", root=str(tmp_path), **KW).info["fingerprint"]
    relabelled = np.tile(np.arange(10), TEST_PER_CLASS)
    relabelled[:2] = relabelled[1::-1]
    write_mnist(tmp_path, test_labels=relabelled)  # only the test labels change
    assert build_data(dataset="mnist", root=str(tmp_path), **KW).info["fingerprint"] != first
    write_mnist(tmp_path, test_labels=np.tile(np.arange(10), TEST_PER_CLASS + 1))  # ten more test images
    grown = build_data(dataset="mnist", root=str(tmp_path), **KW)
    assert grown.info["fingerprint"] != first and grown.info["sizes"]["test"] == 10 * (TEST_PER_CLASS + 1)

    without = build_data(dataset="mnist", root=str(tmp_path), test_split=False, **KW)
    assert without.test is None and without.info["sizes"]["test"] == 0
    assert without.info["splits"]["test"] == "none (data.test_split is false)"
    assert without.info["fingerprint"] not in (first, grown.info["fingerprint"])
    with pytest.raises(DatasetError, match=r"has no test split: data.test_split is false \(it has train: mnist .*\); set "
                                           r"data.test_split: true, or evaluate other data with --data"):
        build_split(split="test", classes=without.classes, dataset="mnist", root=str(tmp_path), test_split=False,
                    **KW)


def test_data_classes_subset_applies_to_the_test_split_and_eval_finds_it_again(tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path)
    chosen = ["3 - three", "7 - seven"]
    data = build_data(dataset="mnist", root=str(tmp_path), classes=chosen, **KW)
    assert data.classes == chosen and data.info["sizes"]["test"] == 2 * TEST_PER_CLASS
    split = build_split(split="test", classes=chosen, dataset="mnist", root=str(tmp_path), **KW)
    assert split.n == 2 * TEST_PER_CLASS and split.info["source"] == f"mnist official test set under {tmp_path}"
    images, labels = everything(split.loader)
    assert torch.equal(images, everything(data.test)[0]) and torch.equal(labels, everything(data.test)[1])
    t10k = arrays["t10k-labels-idx1-ubyte"]
    assert labels.tolist() == [0 if t == 3 else 1 for t in t10k if t in (3, 7)]


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Tiny CIFAR-10 batches; torchvision's md5 lists are pointed at them (its integrity check still runs)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    md5 = {}

    def dump(name: str, content: dict) -> None:
        (folder / name).write_bytes(pickle.dumps(content))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()

    for b in range(1, 6):
        labels = np.arange(10) if b < 3 else np.arange(10)[::-1].copy()  # 5 batches: 5 images of every class
        dump(f"data_batch_{b}", {"data": _images(labels, b, 3, 32).reshape(10, -1), "labels": labels.tolist()})
    test_labels = np.array([9, 0, 1, 8])
    test_images = _images(test_labels, 9, 3, 32)  # torchvision reshapes to (n, 3, 32, 32)
    dump("test_batch", {"data": test_images.reshape(4, -1), "labels": test_labels.tolist()})
    dump("batches.meta", {"label_names": names})
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "train_list", [[f"data_batch_{b}", md5[f"data_batch_{b}"]] for b in range(1, 6)])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cifar, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]})
    return {"test_labels": test_labels, "test_images": test_images}


def test_cifar10_official_test_batch_is_the_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar10(tmp_path, monkeypatch)
    data = build_data(dataset="cifar10", root=str(tmp_path), **(KW | {"image_size": 32}))
    assert data.info["sizes"] == {"train": 30, "val": 20, "test": 4}
    assert data.info["splits"]["test"] == f"cifar10 official test set under {tmp_path}"
    images, labels = everything(data.test)
    assert labels.tolist() == [9, 0, 1, 8]
    expected = torch.as_tensor(written["test_images"], dtype=torch.float32) / 255  # (4, 3, 32, 32), as stored
    assert torch.allclose(images, expected, atol=1e-6)


RECIPE = """\
    name: mnist-run
    seed: 0
    device: cpu
    model: {{arch: "tests.tinynets:tiny_cnn", kwargs: {{width: 4}}, head: {{num_classes: 10}}}}
    groups:
      - {{name: body, match: ['^[0-5]\\.']}}
      - {{name: head, match: ['^8\\.']}}
    freeze: {{trainable: [head, body]}}
    optimizer: {{name: adamw, lr: 1.0e-2}}
    data: {{dataset: mnist, root: data, image_size: 8, batch_size: 8, normalize: none{extra}}}
    train: {{epochs: 1}}
    export: {{formats: [safetensors]}}
"""


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_plan_shows_the_official_test_set_and_eval_defaults_to_it(tmp_path: Path, capsys) -> None:
    write_mnist(tmp_path / "data")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(RECIPE.format(extra="")))
    code, out, err = _cli(capsys, "plan", str(recipe))
    assert code == 0, err
    assert any(line.split()[:2] == ["test", "20"] and f"mnist official test set under {tmp_path / 'data'}" in line
               for line in out.splitlines()), out
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "build", str(recipe), "--out", str(run), "--quiet")
    assert code == 0, err
    plan = json.loads((run / "plan.json").read_text())
    assert plan["data"]["sizes"]["test"] == 20
    assert plan["data"]["splits"]["test"] == f"mnist official test set under {tmp_path / 'data'}"
    code, out, err = _cli(capsys, "eval", str(run), "--json", "--trust-factory", "tests.tinynets:tiny_cnn")
    assert code == 0, err
    results = json.loads(out)
    assert results["split"] == "test" and results["n"] == 20
    assert sum(m["support"] for m in results["per_class"].values()) == 20

    recipe.write_text(textwrap.dedent(RECIPE.format(extra=", test_split: false")))
    code, out, err = _cli(capsys, "plan", str(recipe))
    assert code == 0, err
    assert any(line.split()[:2] == ["test", "0"] and "none (data.test_split is false)" in line
               for line in out.splitlines()), out


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_test_split_false_leaves_out_split_folders_and_manifest_test_rows(tmp_path: Path, task: str) -> None:
    from tests.imagedata import make_imagefolder, make_manifest

    kw = {"image_size": 8, "batch_size": 8, "task": task}
    if task == "multiclass":
        make_imagefolder(tmp_path / "f", ["a", "b"], {"train": 3, "test": 2}, size=8)
        kw |= {"dataset": "imagefolder", "root": str(tmp_path / "f")}
    else:
        kw |= {"dataset": "manifest", "root": str(make_manifest(tmp_path / "m", ["a", "b"], {"train": 8, "test": 4},
                                                                 size=8, multilabel=True))}
    assert build_data(**kw).info["sizes"]["test"] == 4
    without = build_data(test_split=False, **kw)
    assert without.test is None and without.info["sizes"]["test"] == 0
    assert without.info["splits"]["test"] == "none (data.test_split is false)"
    with pytest.raises(DatasetError, match="has no test split"):
        build_split(split="test", classes=without.classes, test_split=False, **kw)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_missing_or_damaged_files_are_a_located_error_not_a_traceback(tmp_path: Path, damage: str) -> None:
    write_mnist(tmp_path)
    images = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:40])  # the header promises more images than follow
    else:
        images.unlink()
    with pytest.raises(DatasetError) as info:
        build_data(dataset="mnist", root=str(tmp_path), **KW)
    assert info.value.paths == [("data", "root")]
    (message,) = info.value.problems
    assert ("cannot read the mnist files" if damage == "truncated" else "no mnist files") in message
