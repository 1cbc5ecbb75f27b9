"""Head-only epochs with the frozen-prefix feature cache against full forward passes, same run.

A ResNet-18 with a new 10-class head, only the head trainable, on the digits at 32x32:
`train.feature_cache: auto` computes the body's output once and trains the head on it;
`off` runs the whole network every step. The table shows the wall time of a 4-epoch
build (cache filling included) and the ratio.

    python benchmarks/bench_feature_cache.py
    python benchmarks/bench_feature_cache.py --quick   # 1 epoch on 5 images per class at 16x16: a check that it runs
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
import time
from pathlib import Path

from recipec.pipeline.build import build
from recipec.recipe.load import load_recipe

RECIPE = """\
    name: bench-cache
    device: cpu
    model: {arch: resnet18, head: {num_classes: 10}}
    freeze: {trainable: [head]}
    optimizer: {name: adamw, lr: 1.0e-3}
    data: {dataset: digits, image_size: 32, normalize: imagenet, batch_size: 64}
    train: {epochs: 4}
"""


def _build_seconds(tmp: Path, cache: str, quick: bool) -> float:
    small = ["train.epochs=1", "data.per_class=5", "data.image_size=16"] if quick else []
    recipe = load_recipe(tmp / "bench.yaml", [f"train.feature_cache={cache}", *small])
    start = time.perf_counter()
    build(recipe, out=tmp / f"run-{cache}", log=None)
    return time.perf_counter() - start


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "bench.yaml").write_text(textwrap.dedent(RECIPE))
        off = _build_seconds(tmp, "off", quick)
        auto = _build_seconds(tmp, "auto", quick)
    print(f"{'feature_cache':<16}{'build s':>10}{'ratio':>8}")
    print(f"{'off':<16}{off:>10.2f}{1.0:>8.2f}")
    print(f"{'auto':<16}{auto:>10.2f}{auto / off:>8.2f}")


if __name__ == "__main__":
    main()
