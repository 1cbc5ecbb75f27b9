"""Preprocessing from the weights (``data.resize``, ``data.image_size: from_weights``): the resize
and centre crop of timm's ``pretrained_cfg`` and torchvision's ``transforms()``, shown in the plan,
recorded in the exports and the card."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

import recipec
from recipec.compiler.data_config import data_kwargs
from recipec.compiler.compile import compile_recipe, resolve_preprocessing
from recipec.errors import DatasetError
from recipec.recipe.load import load_recipe
from recipec.compiler.data_config import build_data
from recipec.data.transforms import resize_rule
from tests.model.timmhub import stand_in  # a timm model saved in the exact hub cache layout

SIZES = [(50, 37), (37, 61), (40, 40)]  # landscape, portrait, square: the crop must follow the shorter side


def _images(root: Path) -> None:
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(SIZES):
            pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{c}{i}.png")


def _recipe(tmp_path: Path, model: str, data: str = "{}", *overrides: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: pre
        device: cpu
        model: {model}
        freeze: {{trainable: [head]}}
        data: {data}
        train: {{epochs: 1}}
        """))
    return load_recipe(path, overrides)


def _pairs(data, *, split: str = "val"):
    """(what recipec feeds the model, the image file) for every example of a split."""
    dataset = getattr(data, split).dataset
    for i in range(len(dataset)):
        yield dataset[i][0], dataset.source.samples[dataset.indices[i]][0]


def _folder_recipe(tmp_path: Path, model: str, size: object = 32, *overrides: str):
    _images(tmp_path / "data")
    return _recipe(tmp_path, model, f"{{dataset: imagefolder, root: data, image_size: {size}, val_fraction: 0.5, "
                                    f"batch_size: 2}}", *overrides)


def test_timm_eval_transform_equals_timm_create_transform(tmp_path):
    timm = pytest.importorskip("timm")
    recipe = _folder_recipe(tmp_path, "{arch: timm/resnet10t, weights: c3_in1k, head: {num_classes: 2}}")
    rule = resolve_preprocessing(recipe)
    assert rule | {"summary": None} == {
        "image_size": 32, "rule": "shorter_side", "resize_size": 36, "interpolation": "bicubic", "crop_pct": 0.875,
        "crop_mode": "center", "from": "the preprocessing of weights c3_in1k", "summary": None}
    data = build_data(**data_kwargs(recipe))
    cfg = timm.models.get_pretrained_cfg("resnet10t.c3_in1k")
    theirs = timm.data.create_transform(input_size=32, interpolation="bicubic", crop_pct=0.875, mean=cfg.mean,
                                        std=cfg.std, is_training=False)
    assert "Resize(size=36" in repr(theirs) and "CenterCrop(size=(32, 32))" in repr(theirs)
    for split in ("val", "train"):  # no augment: training images get exactly the same resize and crop
        for ours, path in _pairs(data, split=split):
            expected = theirs(Image.open(path).convert("RGB"))
            assert ours.shape == expected.shape == (3, 32, 32)
            assert torch.allclose(ours, expected, atol=1e-6), path


def test_torchvision_resnet18_weights_resize_256_crop_224(tmp_path):
    recipe = _folder_recipe(tmp_path, "{arch: resnet18, weights: IMAGENET1K_V1, head: {num_classes: 2}}", 224)
    rule = resolve_preprocessing(recipe)
    assert (rule["resize_size"], rule["interpolation"], rule["crop_pct"]) == (256, "bilinear", 0.875)
    data = build_data(**data_kwargs(recipe))
    reference = torchvision.transforms.Compose([
        torchvision.transforms.Resize(256), torchvision.transforms.CenterCrop(224), torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()  # the weights' own eval transform
    for ours, path in _pairs(data):
        image = Image.open(path).convert("RGB")
        assert torch.allclose(ours, reference(image), atol=1e-6)
        assert torch.allclose(ours, weights(image), atol=1e-6)


def test_resize_size_follows_image_size():
    timm_like = {"input_size": 224, "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
                 "resize_size": None}
    assert resize_rule(224, "from_weights", timm_like, "t")["resize_size"] == 248  # floor(224 / 0.9), as timm
    tv = {"input_size": 224, "interpolation": "bilinear", "crop_pct": 224 / 232, "crop_mode": "center",
          "resize_size": 232}
    assert resize_rule(224, "from_weights", tv, "IMAGENET1K_V2")["resize_size"] == 232  # exact, no float drift
    assert resize_rule(112, "from_weights", tv, "IMAGENET1K_V2")["resize_size"] == 116
    squash = resize_rule(32, "from_weights", timm_like | {"crop_mode": "squash"}, "t")
    assert squash["crop_mode"] == "squash" and squash["summary"].startswith("both sides to 35 (bicubic)")


def test_image_size_from_weights(tmp_path):
    pytest.importorskip("timm")
    timm_recipe = _recipe(tmp_path, "{arch: timm/resnet10t, weights: c3_in1k, head: {num_classes: 3}}",
                          "{image_size: from_weights}")
    assert resolve_preprocessing(timm_recipe)["image_size"] == 176  # pretrained_cfg.input_size (3, 176, 176)
    assert data_kwargs(timm_recipe)["image_size"] == 176
    tv = _recipe(tmp_path, "{arch: resnet18, weights: IMAGENET1K_V1, head: {num_classes: 3}}",
                 "{image_size: from_weights}")
    assert resolve_preprocessing(tv)["image_size"] == 224  # crop_size
    square = _recipe(tmp_path, "{arch: resnet18, weights: IMAGENET1K_V1, head: {num_classes: 3}}",
                     "{image_size: from_weights, resize: square}")
    assert resolve_preprocessing(square) | {"summary": None} == {
        "image_size": 224, "rule": "square", "resize_size": 224, "interpolation": "bilinear", "crop_pct": 1.0,
        "crop_mode": None, "from": "data.resize: square", "summary": None}
    none = _recipe(tmp_path, "{arch: resnet18, weights: null, head: {num_classes: 3}}", "{image_size: from_weights}")
    with pytest.raises(DatasetError, match="from_weights, but there are no pretrained weights") as info:
        resolve_preprocessing(none)
    assert info.value.paths == [("data", "image_size")]


def test_image_size_values_are_checked(tmp_path):
    from recipec.errors import RecipeError

    for value, message in [("from-weights", "must be a whole number or from_weights, got 'from-weights'"),
                           ("on", "must be a whole number or from_weights, got 'on'"),  # YAML 1.2: text
                           ("true", "must be a whole number or from_weights, got true"),
                           ("4", "must be >= 8, got 4")]:
        with pytest.raises(RecipeError, match=message):
            _recipe(tmp_path, "{arch: resnet18}", f"{{image_size: {value}}}")
    assert _recipe(tmp_path, "{arch: resnet18}", "{image_size: 1e2}").data.image_size == 100


def test_without_weights_the_square_resize_is_unchanged(tmp_path):
    """weights: null (and data.resize: square with weights): every image squashed to image_size, bilinear, as before."""
    recipe = _folder_recipe(tmp_path, "{arch: resnet18, weights: null, head: {num_classes: 2}}", 16)
    assert resolve_preprocessing(recipe)["rule"] == "square"
    kwargs = data_kwargs(recipe)
    assert kwargs["resize_size"] is None
    data = build_data(**kwargs)
    before = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize((16, 16), antialias=True)])
    for ours, path in _pairs(data):
        assert torch.equal(ours, before(Image.open(path).convert("RGB")))
    squared = _folder_recipe(tmp_path / "w", "{arch: resnet18, weights: IMAGENET1K_V1, head: {num_classes: 2}}", 16,
                             "data.resize=square", "data.normalize=none")
    for ours, path in _pairs(build_data(**data_kwargs(squared))):
        assert torch.equal(ours, before(Image.open(path).convert("RGB")))
    # in-memory datasets (digits) likewise: an 8x8 digit squashed to 16x16
    digits = _recipe(tmp_path, "{arch: resnet18, weights: null, head: {num_classes: 10}}",
                     "{dataset: digits, image_size: 16, normalize: none}")
    plain = build_data(dataset="digits", image_size=16, normalize="none")
    assert torch.equal(build_data(**data_kwargs(digits)).val.dataset.images, plain.val.dataset.images)


def test_digits_with_weights_get_the_resize_and_centre_crop():
    from sklearn.datasets import load_digits

    rule = resize_rule(16, "from_weights", {"input_size": 224, "interpolation": "bicubic", "crop_pct": 0.8,
                                            "crop_mode": "center", "resize_size": None}, "t")
    data = build_data(dataset="digits", image_size=16, in_channels=1, normalize="none", val_fraction=0,
                      resize_size=rule["resize_size"], interpolation="bicubic")
    digits = torch.as_tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0  # (n, 1, 8, 8)
    expected = v2.CenterCrop(16)(v2.Resize(20, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)(digits))
    assert torch.equal(data.train.dataset.images, expected)
    assert data.info["resize"] == {"image_size": 16, "rule": "shorter_side", "resize_size": 20,
                                   "interpolation": "bicubic", "crop_pct": 0.8, "crop_mode": "center"}


# --------------------------------------------------------------------------- plan, exports, card


def test_plan_export_and_card_carry_the_rule(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("RECIPEC_ALLOW_DOWNLOAD", raising=False)
    stand_in(tmp_path / "hf", "resnet10t", "c3_in1k")
    recipe = _folder_recipe(tmp_path, "{arch: timm/resnet10t, weights: c3_in1k, head: {num_classes: 2}}")
    compiled = compile_recipe(recipe)
    line = ("resize    shorter side to 36 (bicubic), centre crop 32x32 (crop_pct 0.875); "
            "from the preprocessing of weights c3_in1k")
    assert line in compiled.plan.text().splitlines()
    assert compiled.plan.to_dict()["data_preprocessing"]["resize_size"] == 36

    run = recipec.build(recipe, out=tmp_path / "run")
    applied = {"image_size": 32, "rule": "shorter_side", "resize_size": 36, "interpolation": "bicubic",
               "crop_pct": 0.875, "crop_mode": "center", "from": "the preprocessing of weights c3_in1k",
               "summary": line.removeprefix("resize    ")}
    assert json.loads((run / "plan.json").read_text())["data"]["resize"] == applied
    from recipec.provenance import read_export_metadata
    from recipec.weights import formats

    _, provenance = read_export_metadata(formats.read_metadata(run / "model.safetensors"))
    assert provenance["data"]["resize"] == applied
    assert f"- **Resize:** {applied['summary']}" in (run / "README.md").read_text()
