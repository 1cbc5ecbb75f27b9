"""Deployment artifacts of ResNet-18 at 64x64 on the CPU: latency and size, as ratios to torch eager.

Run: .venv/bin/python benchmarks/bench_artifacts.py      (--quick: 32x32, 2 repeats, no AOTInductor: a check
                                                          that it runs)

Every artifact is written by recipec's own code paths (``export_onnx``, ``quantize_onnx`` static QDQ calibrated
on 4 batches of 8 random images, ``export_pt2``) from one randomly initialised ResNet-18 with a 10-class head,
then timed in this process with the same thread count (torch.set_num_threads and onnxruntime's intra-op
threads): 3 warm-up calls, then the median of ``--repeats`` calls at batch 1 and at batch 8, rounds
interleaved across the artifacts so the machine's drift falls on all of them alike.

- torch eager: the ``nn.Module`` in eval mode under ``torch.inference_mode``; the baseline (ratio 1.00);
- onnxruntime fp32: ``model.onnx`` (CPUExecutionProvider);
- onnxruntime int8: ``model.int8.onnx``;
- pt2: ``torch.export.load(model.pt2).module()``, the exported graph run by torch eagerly;
- pt2 AOTInductor: ``torch._inductor.aoti_compile_and_package`` of the same program (C++ compiled here,
  when a compiler is present), loaded with ``torch._inductor.aoti_load_package``.

Size: bytes on disk (the .pt2 package of AOTInductor holds the compiled shared library too). Max |Δ logits|
against eager is printed for each, so a fast but wrong artifact shows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipec.convert.pt2 import export_pt2, quiet_torch
from recipec.convert.quantize import quantize_onnx
from recipec.weights import pt2
from recipec.weights.onnx import export_onnx, onnx_session

BATCHES = (1, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x32, 2 repeats, no AOTInductor")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    size, repeats = (32, 2) if args.quick else (args.size, args.repeats)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runners, files = _artifacts(model, folder, size, args.threads, aoti=not args.quick)
        inputs = {b: torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b)) for b in BATCHES}
        with torch.inference_mode():
            expected = {b: model(x) for b, x in inputs.items()}
        times: dict[tuple[str, int], list[float]] = {(name, b): [] for name in runners for b in BATCHES}
        errors = {name: max(float((run(inputs[b]) - expected[b]).abs().max()) for b in BATCHES)
                  for name, run in runners.items()}
        for run in runners.values():  # warm-up
            for b in BATCHES:
                for _ in range(3):
                    run(inputs[b])
        for _ in range(repeats):  # interleaved rounds
            for name, run in runners.items():
                for b in BATCHES:
                    start = time.perf_counter()
                    run(inputs[b])
                    times[(name, b)].append(time.perf_counter() - start)
        base = {b: statistics.median(times[("torch eager", b)]) for b in BATCHES}
        base_size = files["torch eager"].stat().st_size
        print(f"ResNet-18, {size}x{size}, CPU, {args.threads} thread(s), median of {repeats} "
              f"(torch {torch.__version__}); ratios: time / torch eager's (lower is faster), size / safetensors'")
        print(f"{'artifact':<22} {'bytes':>12} {'size':>6} {'batch 1 ms':>11} {'ratio':>6} {'batch 8 ms':>11} "
              f"{'ratio':>6} {'max|Δ|':>9}")
        for name in runners:
            t1, t8 = (statistics.median(times[(name, b)]) for b in BATCHES)
            nbytes = files[name].stat().st_size
            print(f"{name:<22} {nbytes:>12,} {nbytes / base_size:>6.2f} {t1 * 1e3:>11.2f} {t1 / base[1]:>6.2f} "
                  f"{t8 * 1e3:>11.2f} {t8 / base[8]:>6.2f} {errors[name]:>9.2e}")


def _artifacts(model: torch.nn.Module, folder: Path, size: int, threads: int,
               aoti: bool) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], dict[str, Path]]:
    from safetensors.torch import save_file

    shape = (1, 3, size, size)
    save_file(model.state_dict(), folder / "model.safetensors")
    export_onnx(model, folder / "model.onnx", input_shape=shape, metadata={}, arch="resnet18")
    rng = np.random.default_rng(0)
    quantize_onnx(folder / "model.onnx", folder / "model.int8.onnx", method="static",
                  calibration=[rng.standard_normal((8, 3, size, size)).astype(np.float32) for _ in range(4)])
    export_pt2(model, folder / "model.pt2", input_shape=(2, 3, size, size), metadata={}, arch="resnet18")
    graph = pt2.load(folder / "model.pt2")[0].module()
    fp32, int8 = onnx_session(folder / "model.onnx", threads=threads), onnx_session(folder / "model.int8.onnx",
                                                                                   threads=threads)
    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "torch eager": _torch(model), "onnxruntime fp32": _onnx(fp32), "onnxruntime int8": _onnx(int8),
        "pt2 (torch.export)": _torch(graph)}
    files = {"torch eager": folder / "model.safetensors", "onnxruntime fp32": folder / "model.onnx",
             "onnxruntime int8": folder / "model.int8.onnx", "pt2 (torch.export)": folder / "model.pt2"}
    if aoti:
        compiled = _aoti(graph, folder, size)
        if compiled is not None:
            runners["pt2 AOTInductor"], files["pt2 AOTInductor"] = compiled
    return runners, files


def _aoti(graph: Any, folder: Path, size: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], Path] | None:
    """AOTInductor of the exported program (dynamic batch 1..64), or None (said why) when it does not build."""
    try:
        with quiet_torch():
            program = torch.export.export(graph, (torch.randn(2, 3, size, size),),
                                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
            path = torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "model.aoti.pt2"))
            loaded = torch._inductor.aoti_load_package(path)
    except Exception as exc:  # no compiler, or inductor cannot build here: the row is left out, and said so
        print(f"note: AOTInductor did not build here: {str(exc).splitlines()[0][:200]}")
        return None
    return (lambda x: loaded(x)), Path(path)


def _torch(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)
    return run


def _onnx(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


if __name__ == "__main__":
    main()
