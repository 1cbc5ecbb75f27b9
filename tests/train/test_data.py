from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from recipec.errors import DatasetError
from recipec.compiler.data_config import build_data
from recipec.data.loaders import Data, set_epoch
from recipec.data.transforms import IMAGENET
from recipec.data.transforms import Channels as _Channels

DIGITS = load_digits()
DIGIT_IMAGES = torch.as_tensor(DIGITS.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8)
DIGIT_COUNTS = torch.bincount(torch.as_tensor(DIGITS.target)).tolist()


def everything(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def raw_digits(**kw: object) -> Data:
    """Native 8x8, one channel, no normalisation: images equal scikit-learn's / 16."""
    return build_data(dataset="digits", image_size=8, in_channels=1, normalize="none", **kw)


def write_folder(root: Path, colours: dict[str, tuple[int, int, int]], n: int = 3) -> None:
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 10), colour).save(root / name / f"{i}.png")


# --------------------------------------------------------------------------- digits, normalisation


def test_digits_shapes_labels_and_imagenet_normalisation() -> None:
    data = build_data(dataset="digits", image_size=8, normalize="imagenet", batch_size=64)
    images, labels = everything(data.val)
    assert images.shape == (359, 3, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    assert data.classes == [str(i) for i in range(10)]
    assert data.normalization == IMAGENET
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in IMAGENET)
    pixels = images * std + mean  # back to [0, 1], the grey level repeated on 3 channels
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-6) and torch.allclose(pixels[:, 0], pixels[:, 2], atol=1e-6)
    assert pixels.min() >= -1e-6 and pixels.max() == pytest.approx(1.0)
    assert torch.allclose(images[:, :, 0, 0], (-mean / std).view(1, 3))  # scikit-learn's digits all have a blank corner
    assert next(iter(data.train))[0].shape == (64, 3, 8, 8)


def test_from_weights_uses_the_weights_stats_adapted_to_the_channels() -> None:
    none = build_data(dataset="digits", image_size=8)
    assert none.normalization is None
    assert none.info["normalize"] == {"requested": "from_weights", "applied": "none (no pretrained weights)"}
    stats = ((0.5, 0.4, 0.3), (0.2, 0.2, 0.5))
    one = build_data(dataset="digits", image_size=8, in_channels=1, weights_normalization=stats)
    assert one.normalization is not None and one.normalization[0] == pytest.approx((0.4,))
    assert one.normalization[1] == pytest.approx((0.3,))
    four = build_data(dataset="digits", image_size=8, in_channels=4, normalize="imagenet", val_fraction=0)
    assert four.normalization == ((0.485, 0.456, 0.406, 0.485), (0.229, 0.224, 0.225, 0.229))
    assert next(iter(four.train))[0].shape[1] == 4


# --------------------------------------------------------------------------- classes, split, few-shot


def test_class_subset_and_order_remap_labels() -> None:
    data = raw_digits(classes=["7", "3"])
    assert data.classes == ["7", "3"]
    for loader in (data.train, data.val):
        images, labels = everything(loader)
        assert set(labels.tolist()) == {0, 1}
        for label, digit in ((0, 7), (1, 3)):
            originals = DIGIT_IMAGES[torch.as_tensor(DIGITS.target) == digit].flatten(1)
            mine = images[labels == label].flatten(1)
            assert (mine[:, None] == originals[None]).all(-1).any(-1).all()
    assert data.info["sizes"]["train"] + data.info["sizes"]["val"] == DIGIT_COUNTS[7] + DIGIT_COUNTS[3]


def test_split_is_stratified_and_deterministic() -> None:
    data = raw_digits(seed=3)
    val_images, val_labels = everything(data.val)
    expected = [int(n * 0.2 + 0.5) for n in DIGIT_COUNTS]
    assert torch.bincount(val_labels).tolist() == expected == list(data.info["val_per_class"].values())
    _, train_labels = everything(data.train)
    assert torch.bincount(train_labels).tolist() == [n - v for n, v in zip(DIGIT_COUNTS, expected)]
    assert torch.equal(everything(raw_digits(seed=3).val)[0], val_images)
    assert not torch.equal(everything(raw_digits(seed=4).val)[0], val_images)


def test_split_keeps_one_per_class_and_val_fraction_zero_means_no_val() -> None:
    tiny = build_data(dataset="fake", num_classes=3, image_size=8, val_fraction=0.01)
    assert tiny.info["val_per_class"] == {"class_0": 1, "class_1": 1, "class_2": 1}
    whole = raw_digits(val_fraction=0)
    assert whole.val is None and whole.info["sizes"] == {"train": 1797, "val": 0, "test": 0}


def test_per_class_caps_training_examples_only() -> None:
    capped, full = raw_digits(per_class=5), raw_digits()
    _, labels = everything(capped.train)
    assert torch.bincount(labels).tolist() == [5] * 10
    assert capped.info["train_per_class"] == dict.fromkeys(capped.classes, 5)
    assert torch.equal(everything(capped.val)[0], everything(full.val)[0])


# --------------------------------------------------------------------------- epochs


def test_set_epoch_makes_the_batch_order_a_function_of_seed_and_epoch() -> None:
    def order(data: Data, epoch: int) -> list[int]:
        set_epoch(data, epoch)
        return torch.cat([x.flatten(1).sum(1) for x, _ in data.train]).mul(1000).round().int().tolist()

    data = raw_digits(seed=1)
    first = order(data, 1)
    assert order(data, 2) != first
    assert order(data, 1) == first
    assert order(raw_digits(seed=1), 1) == first  # a resumed run: a fresh Data, same epoch
    assert order(raw_digits(seed=2), 1) != first


# --------------------------------------------------------------------------- channels


def test_channel_conversion() -> None:
    rgb = torch.tensor([1.0, 0.5, 0.25]).view(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(_Channels(1)(rgb), torch.full((1, 2, 2), 0.299 + 0.587 * 0.5 + 0.114 * 0.25))
    grey = torch.rand(5, 1, 4, 4)
    assert torch.equal(_Channels(3)(grey), grey.expand(5, 3, 4, 4))
    assert torch.equal(_Channels(5)(rgb)[:, 0, 0], torch.tensor([1.0, 0.5, 0.25, 1.0, 0.5]))
    four = torch.arange(4.0).view(4, 1, 1)
    assert torch.equal(_Channels(2)(four).flatten(), torch.tensor([0.0, 1.0]))
    assert build_data(dataset="digits", image_size=16, in_channels=1).train.dataset[0][0].shape == (1, 16, 16)


def test_imagefolder_reads_pngs_resizes_and_converts(tmp_path: Path) -> None:
    write_folder(tmp_path, {"cat": (255, 0, 0), "dog": (0, 0, 255)})
    data = build_data(dataset="imagefolder", root=str(tmp_path), image_size=8, normalize="none", val_fraction=0.34)
    assert data.classes == ["cat", "dog"] and data.info["sizes"] == {"train": 4, "val": 2, "test": 0}
    images, labels = everything(data.train)
    assert images.shape == (4, 3, 8, 8)
    assert torch.allclose(images[labels == 0], torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1).expand(2, 3, 8, 8))
    assert torch.allclose(images[labels == 1], torch.tensor([0, 0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 8, 8))
    grey = build_data(dataset="imagefolder", root=str(tmp_path), classes=["dog"], image_size=8, in_channels=1,
                      normalize="none", val_fraction=0)
    images, labels = everything(grey.train)
    assert images.shape == (3, 1, 8, 8) and labels.tolist() == [0, 0, 0]
    assert torch.allclose(images, torch.full_like(images, 0.114))


# --------------------------------------------------------------------------- errors


def test_missing_or_empty_root_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data\.root: .*nope does not exist .*root/<class>/<image>") as e:
        build_data(dataset="imagefolder", root=str(tmp_path / "nope"))
    assert e.value.paths == [("data", "root")]
    with pytest.raises(DatasetError, match="needs root") as e:
        build_data(dataset="mnist")
    assert e.value.paths == [("data", "root")]
    with pytest.raises(DatasetError, match="class folder") as e:
        build_data(dataset="imagefolder", root=str(tmp_path))
    assert e.value.paths == [("data", "root")]
    with pytest.raises(DatasetError, match=r"no cifar10 files .*cifar-10-batches-py") as e:
        build_data(dataset="cifar10", root=str(tmp_path))
    assert not isinstance(e.value, RuntimeError) and e.value.paths == [("data", "root")]


def test_unknown_classes_are_reported_together_with_what_is_available() -> None:
    with pytest.raises(DatasetError, match=r"data\.classes\.1: unknown class 'eleven'; available: 0, 1, 2") as e:
        build_data(dataset="digits", classes=["3", "eleven", "3", "x"])
    assert e.value.paths == [("data", "classes", 1), ("data", "classes", 2), ("data", "classes", 3)]


def test_fake_needs_num_classes_and_heads_must_fit_the_classes() -> None:
    with pytest.raises(DatasetError, match="model.head.num_classes") as e:
        build_data(dataset="fake")
    assert e.value.paths == [("data", "dataset")]
    with pytest.raises(DatasetError, match="is 5 but the data has 10 classes") as e:
        build_data(dataset="digits", num_classes=5)
    assert e.value.paths == [("model", "head", "num_classes")]
    with pytest.raises(DatasetError) as e:
        build_data(dataset="digits", augment=["hflip", "mixup"], normalize="zscore")
    assert e.value.paths == [("data", "normalize"), ("data", "augment", 1)]


def test_fake_is_deterministic_and_learnable_shaped() -> None:
    a = build_data(dataset="fake", num_classes=4, image_size=8, normalize="none", seed=5)
    b = build_data(dataset="fake", num_classes=4, image_size=8, normalize="none", seed=5)
    c = build_data(dataset="fake", num_classes=4, image_size=8, normalize="none", seed=6)
    assert a.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert a.info["sizes"]["train"] + a.info["sizes"]["val"] == 4 * 32
    assert torch.equal(everything(a.val)[0], everything(b.val)[0])
    assert not torch.equal(everything(a.val)[0], everything(c.val)[0])


# --------------------------------------------------------------------------- info, augmentation


def test_info_is_json_and_says_what_was_done() -> None:
    data = build_data(dataset="fake", num_classes=2, image_size=8, in_channels=2, augment=["hflip", "color_jitter"],
                      per_class=10, seed=7)
    assert json.loads(json.dumps(data.info)) == data.info
    assert data.info["augment"] == ["hflip"] and data.info["augment_skipped"] == ["color_jitter"]
    assert data.info["train_per_class"] == {"class_0": 10, "class_1": 10}
    assert data.info["sizes"] == {"train": 20, "val": 12, "test": 0} and data.info["seed"] == 7
    assert {"dataset", "root", "classes", "image_size", "normalize", "val_fraction", "per_class"} <= set(data.info)


def test_augmentations_change_train_images_but_not_val_images() -> None:
    kw = {"image_size": 16, "normalize": "imagenet", "seed": 0}
    plain = build_data(dataset="digits", **kw)
    augmented = build_data(dataset="digits", augment=["hflip", "rotate", "color_jitter", "random_resized_crop"], **kw)
    assert torch.equal(everything(plain.val)[0], everything(augmented.val)[0])
    torch.manual_seed(0)
    first = torch.stack([augmented.train.dataset[i][0] for i in range(20)])
    same = torch.stack([plain.train.dataset[i][0] for i in range(20)])
    assert first.shape == same.shape and not torch.allclose(first, same)
    torch.manual_seed(0)  # augmentation randomness is the global RNG's
    assert torch.equal(torch.stack([augmented.train.dataset[i][0] for i in range(20)]), first)


def test_large_in_memory_images_resize_per_item_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = {"dataset": "digits", "image_size": 12, "normalize": "imagenet", "classes": ["1", "2"]}
    upfront = everything(build_data(**kw).val)[0]
    monkeypatch.setattr("recipec.data.transforms._PRECOMPUTE_BYTES", 0)  # the pipeline lives there
    per_item = build_data(**kw)
    assert per_item.val.dataset.images.shape[-1] == 8
    assert torch.allclose(everything(per_item.val)[0], upfront, atol=1e-6)


def test_an_empty_class_folder_is_named_unless_left_out(tmp_path: Path) -> None:
    write_folder(tmp_path, {"cat": (255, 0, 0)})
    (tmp_path / "dog").mkdir()
    with pytest.raises(DatasetError, match=r"class 'dog' has no images") as e:
        build_data(dataset="imagefolder", root=str(tmp_path), image_size=8)
    assert e.value.paths == [("data", "root")]
    data = build_data(dataset="imagefolder", root=str(tmp_path), classes=["cat"], image_size=8, val_fraction=0)
    assert data.classes == ["cat"] and data.info["sizes"]["train"] == 3
