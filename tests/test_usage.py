"""recipec.load_predictor: the model with its classes and exactly the preprocessing training used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import recipec
from recipec.inference.predictor import image_transform, load_predictor
from recipec.inference.preprocessing import describe_preprocessing
from tests.evalrun import CLASSES, TRUST, shared_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run(tmp_path_factory)


def test_the_transform_is_exactly_the_runs_eval_pipeline(run: Path) -> None:
    from recipec.compiler.data_config import build_split, data_kwargs
    from recipec.inference.restore import read_export

    predictor = recipec.load_predictor(run / "model.safetensors", trust_factories=TRUST)
    assert predictor.classes == CLASSES
    recipe, _, _ = read_export(run / "model.safetensors")
    kwargs = {k: v for k, v in data_kwargs(recipe).items() if k not in ("classes", "batch_size")}
    split = build_split(split="test", classes=CLASSES, batch_size=64, **kwargs)
    images, labels = next(iter(split.loader))
    files = [f for c in CLASSES for f in sorted((run.parent / "data" / "test" / c).iterdir())]
    assert len(files) == len(images)
    mine = torch.stack([predictor.transform(Image.open(f)) for f in files])
    assert torch.equal(mine, images)  # bit for bit: the run's own eval transform
    assert labels.tolist() == [CLASSES.index(f.parent.name) for f in files]


def test_predict_takes_images_paths_and_lists(run: Path) -> None:
    predictor = load_predictor(run / "model.onnx")  # no factory is built for ONNX: nothing to trust
    files = sorted((run.parent / "data" / "test" / "fox").iterdir())[:2]
    one = predictor.predict(Image.open(files[0]), top_k=3)
    assert [set(t) for t in one] == [{"class", "score"}] * 3
    many = predictor.predict([str(files[0]), Image.open(files[1])], top_k=1)
    assert len(many) == 2 and many[0][0] == one[0]
    torch_predictor = load_predictor(run / "model.pt", trust_factories=TRUST)
    assert isinstance(torch_predictor.model, torch.nn.Module) and not torch_predictor.model.training
    batch = torch.stack([torch_predictor.transform(Image.open(f)) for f in files])
    assert torch.allclose(torch_predictor.logits(batch), predictor.logits(batch), atol=1e-4)


def test_load_still_returns_a_callable_module(run: Path) -> None:
    model = recipec.load(run / "model.safetensors", trust_factories=TRUST)
    assert isinstance(model, torch.nn.Module)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, len(CLASSES))


def test_the_preprocessing_in_words() -> None:
    square = {"image_size": 32, "rule": "square", "resize_size": 32, "interpolation": "bilinear",
              "crop_mode": "center", "in_channels": 1, "normalization": None}
    assert describe_preprocessing(square) == (
        "converted to one channel (luminance 0.299 R + 0.587 G + 0.114 B); resized to 32x32 (bilinear, "
        "antialiased; aspect ratio not kept); values scaled to [0, 1]; not normalised")
    weights = square | {"rule": "shorter_side", "resize_size": 36, "interpolation": "bicubic", "in_channels": 3,
                        "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    assert describe_preprocessing(weights) == (
        "RGB; the shorter side resized to 36 (bicubic), then the centre 32x32 cut out; values scaled to [0, 1]; "
        "normalised with mean [0.5, 0.5, 0.5] and std [0.25, 0.25, 0.25]")


@pytest.mark.parametrize(("mean", "std"), [([0.4, 0.5, 0.6], [0.2, 0.25, 0.3]), ([0.45], [0.2])])
def test_the_weights_rule_resizes_the_shorter_side_then_crops(mean: list[float], std: list[float]) -> None:
    channels = len(mean)
    prep = {"image_size": 8, "rule": "shorter_side", "resize_size": 10, "interpolation": "bilinear",
            "crop_mode": "center", "in_channels": channels, "normalization": {"mean": mean, "std": std}}
    # 20x40, no two pixels alike and each channel its own pattern; the alpha is dropped, not blended
    rows, cols = np.mgrid[0:40, 0:20]
    rgba = np.stack([rows * 6, cols * 12, (rows * 3 + cols * 5) % 256, np.full_like(rows, 7)], -1).astype(np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    x = image_transform(prep)(image)
    # 20x40 -> 10x20 (PIL bilinear, on the 8-bit image, as the pretraining transforms) -> centre 8x8: rows 6-13, cols 1-8
    resized = image.convert("RGB").resize((10, 20), Image.Resampling.BILINEAR)
    rgb = torch.from_numpy(np.asarray(resized, dtype=np.float32)[6:14, 1:9] / 255).permute(2, 0, 1)  # (3, 8, 8)
    pixels = rgb if channels == 3 else (rgb * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    expected = (pixels - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    assert x.shape == (channels, 8, 8)
    assert torch.allclose(x, expected, rtol=0, atol=1e-5)


def test_import_is_torch_free() -> None:
    import subprocess
    import sys

    code = "import recipec.inference.preprocessing, sys; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
