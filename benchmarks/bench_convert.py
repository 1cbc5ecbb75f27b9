"""``recipec convert`` of a torch file to safetensors against the obvious script, as whole processes, same run.

Baseline: a fresh ``python -c`` running ``torch.load(src, weights_only=True)`` and
``safetensors.torch.save_file`` (imports included: that is what a user waits for). Against it:
``python -m recipec convert SRC DST`` (the source's SHA-256 included: it goes into
``recipec.converted_from``), ``cp SRC DST`` (the disk's own speed) and a fresh ``python -c`` that
only hashes the source with hashlib (the floor of a conversion that records the hash; coreutils'
``sha256sum`` may lack the CPU's SHA instructions and be several times slower). Each round runs
every command once in a fresh process, in an order that rotates from round to round, into a new
file (removed, and the page cache written back with ``sync``, before each run, untimed); the
source stays in the page cache. The table gives the median of N
rounds and the range, the ratio of medians, and the range of the per-round ratios (the rounds
pair runs made within seconds of each other, so the ratios spread less than the times on a
loaded machine). Memory: the peak anonymous memory (``RssAnon``, sampled every 5 ms from
``/proc``); pages of the file itself are page cache, not counted.

    python benchmarks/bench_convert.py [--sizes 512 1024] [--repeats 5] [--dir /tmp]
    python benchmarks/bench_convert.py --big     # also: a 4 GiB file into 1 GB shards (recipec only)
    python benchmarks/bench_convert.py --quick   # 8 MiB, one round: seconds, the same code paths and checks
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20

GENERATE = """
import sys, torch
total, g, sd, i, used = int(sys.argv[2]) << 20, torch.Generator().manual_seed(0), {}, 0, 0
while used < total:  # a network's mix: matrices up to 16 MiB, bias vectors, integer buffers
    rows = max(1, min(4096, (total - used) // 4096))
    weight = torch.empty(rows, 1024)  # --big: left as the allocator gives it, so this process stays small
    sd[f"layer{i}.weight"] = weight.uniform_(generator=g) if total <= 1 << 30 else weight
    sd[f"layer{i}.bias"] = torch.rand(1024, generator=g)
    sd[f"layer{i}.bn.num_batches_tracked"] = torch.tensor(i)
    used += rows * 4096 + 4096 + 8
    i += 1
torch.save({"state_dict": sd, "epoch": 3}, sys.argv[1])
"""

NAIVE = """
import sys, torch
from safetensors.torch import save_file
save_file(torch.load(sys.argv[1], weights_only=True)["state_dict"], sys.argv[2])
"""


LABELS = {"naive": "naive script (torch.load + save_file)", "recipec": "python -m recipec convert",
          "cp": "cp", "hash": "python hashlib SHA-256 (hash alone)"}
HASH = "import hashlib, sys; hashlib.file_digest(open(sys.argv[1], 'rb'), 'sha256')"


def _commands(src: Path, dst: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "naive": [py, "-c", NAIVE, str(src), str(dst)],
        "recipec": [py, "-m", "recipec", "convert", str(src), str(dst)],
        "cp": ["cp", str(src), str(dst)],
        "hash": [py, "-c", HASH, str(src)],
    }


def _anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return 0


def _run(cmd: list[str], dst: Path) -> tuple[float, float]:
    """(seconds, peak anonymous MiB) of one whole process, its output removed and written back first."""
    for old in [dst, *dst.parent.glob(f"{dst.name.split('.')[0]}-*-of-*.safetensors")]:
        old.unlink(missing_ok=True)
    os.sync()
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        while True:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _anon(child.pid))
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            err.seek(0)
            raise SystemExit(f"{cmd[:4]} failed ({child.returncode}): {err.read().decode()[-2000:]}")
    return seconds, peak / MIB


def _check(src: Path, a: Path, b: Path) -> None:
    """Both outputs hold the source's tensors exactly (a benchmark of a wrong result proves nothing)."""
    import torch
    from safetensors.torch import load_file

    state = torch.load(src, weights_only=True, mmap=True)["state_dict"]
    for out in (a, b):
        loaded = load_file(str(out))
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items()), out


def _measure(tmp: Path, size_mib: int, repeats: int) -> None:
    src = tmp / "src.pt"
    subprocess.run([sys.executable, "-c", GENERATE, str(src), str(size_mib)], check=True)
    dst = tmp / "out.safetensors"
    commands = _commands(src, dst)
    names = list(commands)
    # untimed: the interpreter's and torch's files into the page cache, and both outputs checked
    _run(_commands(src, tmp / "naive.safetensors")["naive"], tmp / "naive.safetensors")
    _run(commands["recipec"], dst)
    _check(src, tmp / "naive.safetensors", dst)
    (tmp / "naive.safetensors").unlink()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            runs[name].append(_run(commands[name], dst))
    seconds = {name: [t for t, _ in runs[name]] for name in names}
    median = {name: statistics.median(seconds[name]) for name in names}
    naive, ours = "naive", "recipec"
    print(f"\n{size_mib} MiB torch file -> safetensors: whole processes, median of {repeats} "
          f"(interleaved rounds; range min-max)")
    print(f"{'command':<40}{'median s':>9}{'range s':>13}{'vs naive':>10}{'round ratios':>14}{'anon MiB':>10}")
    for name in names:
        ratios = [t / n for t, n in zip(seconds[name], seconds[naive])]
        print(f"{LABELS[name]:<40}{median[name]:>9.3f}{min(seconds[name]):>6.2f}-{max(seconds[name]):<6.2f}"
              f"{median[name] / median[naive]:>9.2f}x{min(ratios):>7.2f}-{max(ratios):<6.2f}"
              f"{max(m for _, m in runs[name]):>10.0f}")
    to_cp = [t / c for t, c in zip(seconds[ours], seconds["cp"])]
    print(f"recipec convert / cp: {median[ours] / median['cp']:.1f}x (rounds {min(to_cp):.1f}-{max(to_cp):.1f}); "
          f"recipec convert / the hash alone: {median[ours] / median['hash']:.2f}x")
    print("(each run, s: " + "; ".join(f"{n} " + " ".join(f"{t:.2f}" for t in seconds[n]) for n in names) + ")")
    src.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="source sizes in MiB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the files go (default: the system's temporary directory)")
    parser.add_argument("--big", action="store_true", help="also convert a 4 GiB file into 1 GB shards")
    parser.add_argument("--quick", action="store_true", help="8 MiB, one round: a check that it runs")
    args = parser.parse_args()
    sizes, repeats = ([8], 1) if args.quick else (args.sizes, args.repeats)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_convert.") as name:
        tmp = Path(name)
        for size in sizes:
            _measure(tmp, size, repeats)
        if args.big:
            src = tmp / "big.pt"
            subprocess.run([sys.executable, "-c", GENERATE, str(src), str(4096)], check=True)
            index = tmp / "big.safetensors.index.json"
            seconds, extra = _run([sys.executable, "-m", "recipec", "convert", str(src), str(index),
                                   "--shard-size", "1GB"], index)
            shards = sorted(p.name for p in tmp.glob("big-*.safetensors"))
            print(f"\n4096 MiB torch file -> {len(shards)} shards of 1 GB: recipec convert {seconds:.1f} s, "
                  f"{extra:.0f} MiB anonymous memory at most")


if __name__ == "__main__":
    main()
