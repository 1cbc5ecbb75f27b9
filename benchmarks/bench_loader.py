"""Does decoding keep up? Images/s of the data loader alone against images/s of the model's training step.

An image folder of JPEG photos-sized images (PIL-generated, written once into a temporary
directory) is read by recipec's loader exactly as a build reads it (decode, resize, augment,
normalise; `num_workers: auto` and 0), and the same model trains on tensors already in memory.
A ratio (loader / step) above 1 means the loader is not the bottleneck. The last column decodes
with PIL's JPEG draft mode (the decoder downscales by 1/2, 1/4 or 1/8 while decoding) to show
what it would gain; recipec does not use it, because its pixels differ from a full decode
followed by the documented resize.

    python benchmarks/bench_loader.py [--images 256] [--side 500] [--image-size 128] [--batch-size 32]
    python benchmarks/bench_loader.py --quick   # 16 JPEGs 64x48 to 32x32, one step: a check that it runs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from recipec.compiler.data_config import build_data
from recipec.data.loaders import set_epoch


def _folder(root: Path, images: int, side: int) -> None:
    """``images`` JPEGs of side x 3/4 side in 4 classes: smooth gradients plus noise, as photos compress."""
    g = torch.Generator().manual_seed(0)
    h, w = side * 3 // 4, side
    ramp = torch.linspace(0, 1, w).expand(h, w)
    for i in range(images):
        (root / f"c{i % 4}").mkdir(exist_ok=True)
        base = torch.stack([ramp, ramp.T[:h, :w] if h == w else ramp.flip(1), torch.full((h, w), (i % 4) / 4)])
        pixels = ((base + 0.1 * torch.randn(3, h, w, generator=g)).clamp(0, 1) * 255).to(torch.uint8)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(root / f"c{i % 4}" / f"{i:05d}.jpg", quality=90)


def _loader_rate(root: Path, image_size: int, batch_size: int, workers: int | str) -> tuple[float, int]:
    data = build_data(dataset="imagefolder", root=str(root), image_size=image_size, batch_size=batch_size,
                      val_fraction=0.0, normalize="imagenet", augment=["hflip", "random_resized_crop"],
                      num_workers=workers)
    set_epoch(data, 0)
    next(iter(data.train))  # page cache and worker start-up out of the timing
    set_epoch(data, 1)
    start = time.perf_counter()
    n = sum(len(y) for _, y in data.train)
    return n / (time.perf_counter() - start), data.info["num_workers"]


def _decode_rate(root: Path, image_size: int, draft: bool) -> float:
    """Decode + resize alone, in this process: a full decode, or PIL's draft mode."""
    paths = sorted(root.glob("*/*.jpg"))
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            if draft:
                image.draft("RGB", (image_size, image_size))
            image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    return len(paths) / (time.perf_counter() - start)


def _step_rate(image_size: int, batch_size: int, steps: int) -> float:
    import torchvision

    model = torchvision.models.resnet18(num_classes=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch_size, 3, image_size, image_size), torch.randint(0, 4, (batch_size,))
    model.train()
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()  # the first step warms up
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--side", type=int, default=500, help="width of the JPEGs (height 3/4 of it)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="16 small JPEGs, one step: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.side, args.image_size, args.batch_size, args.steps = 16, 64, 32, 8, 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _folder(root, args.images, args.side)
        auto, workers = _loader_rate(root, args.image_size, args.batch_size, "auto")
        zero, _ = _loader_rate(root, args.image_size, args.batch_size, 0)
        full, draft = _decode_rate(root, args.image_size, False), _decode_rate(root, args.image_size, True)
    step = _step_rate(args.image_size, args.batch_size, args.steps)
    print(f"{args.images} JPEGs {args.side}x{args.side * 3 // 4} -> {args.image_size}x{args.image_size}, "
          f"resnet18 training step on CPU ({torch.get_num_threads()} threads)")
    print(f"{'':<34}{'images/s':>10}{'vs step':>9}")
    print(f"{'training step (model only)':<34}{step:>10.1f}{1.0:>9.2f}")
    print(f"{f'loader, num_workers auto ({workers})':<34}{auto:>10.1f}{auto / step:>9.2f}")
    print(f"{'loader, num_workers 0':<34}{zero:>10.1f}{zero / step:>9.2f}")
    print(f"{'decode + resize only, one process':<34}{full:>10.1f}{full / step:>9.2f}")
    print(f"{'  the same in JPEG draft mode':<34}{draft:>10.1f}{draft / step:>9.2f}")


if __name__ == "__main__":
    main()
