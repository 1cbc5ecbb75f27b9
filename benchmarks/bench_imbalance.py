"""Class imbalance: plain cross-entropy against the balanced sampler and class weights, by macro F1.

The digits (scikit-learn's 8x8) are split once, stratified, into a training pool (70%) and a
balanced test set (30%). Classes 5-9 keep a tenth of their training pool (10:1), written as
an imagefolder; each configuration trains a small CNN from scratch on it (the last epoch is
exported) and is scored on the balanced test set by macro F1 (the mean over classes of
2 TP / (2 TP + FP + FN)) and the mean recall of the five minority classes, for three seeds.

    python benchmarks/bench_imbalance.py [--epochs 8] [--seeds 0 1 2]
    python benchmarks/bench_imbalance.py --quick   # 1 epoch, 1 seed: a check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
MINORITY = (5, 6, 7, 8, 9)
KEEP = 10  # a minority class keeps 1 of every KEEP training examples
SIZE = 16

CONFIGS = {
    "cross-entropy": [],
    "data.sampler: balanced": ["data.sampler=balanced"],
    "loss.class_weights: auto": ["loss.class_weights=auto"],
}

RECIPE = f"""\
    name: bench-imbalance
    device: cpu
    model: {{arch: "benchmarks.bench_imbalance:small_cnn", head: {{num_classes: 10}}, weights: null}}
    optimizer: {{name: adamw, lr: 3.0e-3, weight_decay: 0.01, scheduler: {{name: cosine}}}}
    data: {{dataset: imagefolder, root: train, image_size: {SIZE}, resize: square, normalize: none,
           batch_size: 32, val_fraction: 0.1}}
    train: {{epochs: 8, feature_cache: off}}
    export: {{formats: [safetensors], weights: last}}
"""


def small_cnn(num_classes: int = 10) -> nn.Module:
    """Three conv-BN-ReLU blocks and a linear classifier: ~25k parameters, a few seconds per epoch."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def _write(images: torch.Tensor, labels: list[int], folder: Path) -> None:
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = (image[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / str(label) / f"{i:04d}.png")


def _data(tmp: Path) -> tuple[torch.Tensor, torch.Tensor, dict[int, int]]:
    """Write the imbalanced training folder; return the test images as the pipeline sees them, their labels,
    and the training count per class."""
    from sklearn.datasets import load_digits
    from torchvision.transforms import v2

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (n, 1, 8, 8)
    labels = torch.as_tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    train_idx, test_idx = [], []
    for c in range(10):
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)].tolist()
        cut = int(len(members) * 0.7)
        pool, held = members[:cut], members[cut:]
        train_idx += pool[::KEEP] if c in MINORITY else pool
        test_idx += held
    _write(images[train_idx], labels[train_idx].tolist(), tmp / "train")
    # what the imagefolder pipeline does to a file: 8-bit grey -> RGB float in [0, 1] -> square resize
    quantised = (images[test_idx] * 255).round().clamp(0, 255) / 255
    test = v2.Resize((SIZE, SIZE), antialias=True)(quantised.expand(-1, 3, -1, -1).contiguous())
    counts = {c: int((labels[train_idx] == c).sum()) for c in range(10)}
    return test, labels[test_idx], counts


def _scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> tuple[float, float]:
    """(macro F1, mean recall of the minority classes) over the test set."""
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    index = {int(name): i for i, name in enumerate(classes)}  # the run's label order
    truth = torch.tensor([index[int(t)] for t in y])
    f1, recall = [], {}
    for c in range(len(classes)):
        tp = int(((predicted == c) & (truth == c)).sum())
        fp = int(((predicted == c) & (truth != c)).sum())
        fn = int(((predicted != c) & (truth == c)).sum())
        f1.append(2 * tp / max(2 * tp + fp + fn, 1))
        recall[int(classes[c])] = tp / max(tp + fn, 1)
    return sum(f1) / len(f1), statistics.mean(recall[c] for c in MINORITY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 seed: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds = 1, [0]
    sys.path.insert(0, str(ROOT))  # model.arch names this module
    torch.set_num_threads(2)

    import recipec
    from recipec.pipeline.build import build
    from recipec.recipe.load import load_recipe

    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        x, y, counts = _data(tmp)
        (tmp / "bench.yaml").write_text(textwrap.dedent(RECIPE))
        print(f"training examples per class: {counts} (test: {len(y)}, balanced)")
        for n, (config, overrides) in enumerate(CONFIGS.items()):
            for seed in args.seeds:
                recipe = load_recipe(tmp / "bench.yaml", [*overrides, f"seed={seed}", f"train.epochs={args.epochs}"])
                run = build(recipe, out=tmp / f"run-{n}-{seed}", log=None)
                classes = recipe.data.classes or sorted(p.name for p in (tmp / "train").iterdir())
                model = recipec.load(run / "model.safetensors", trust_factories=["benchmarks.bench_imbalance:small_cnn"])
                results.setdefault(config, []).append(_scores(model, x, y, classes))
    print(f"\n{'configuration':<28}{'macro F1 per seed':<28}{'mean':>8}{'minority recall':>18}")
    for config, scores in results.items():
        f1s = [f for f, _ in scores]
        per_seed = " ".join(f"{f:.3f}" for f in f1s)
        print(f"{config:<28}{per_seed:<28}{statistics.mean(f1s):>8.3f}{statistics.mean(r for _, r in scores):>18.3f}")


if __name__ == "__main__":
    main()
