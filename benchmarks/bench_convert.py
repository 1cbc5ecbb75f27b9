"""``recipec convert`` of a torch checkpoint to safetensors against the obvious two lines, in the same run.

Baseline: ``torch.load(src, weights_only=True)`` + ``safetensors.torch.save_file``. recipec
reads the file memory-mapped, streams each tensor's bytes into the output (header first,
rewritten at the end) and hashes the source for the provenance (``recipec.converted_from``) in
a thread meanwhile. Each trial runs in a fresh process, baseline and recipec interleaved; the
time is the conversion alone (imports excluded; median of N), into a new file each time
(removed, and the page cache written back with ``sync``, between trials, untimed). Memory is the
peak anonymous memory (``RssAnon``, sampled by this process from ``/proc/PID/status``) above
the child's own after its imports; the file's memory-mapped pages are page cache, not counted.

    python benchmarks/bench_convert.py [--size-mib 512] [--repeats 5] [--dir /tmp]
    python benchmarks/bench_convert.py --big     # also: a 4 GiB file to 1 GiB shards (recipec only)
"""

from __future__ import annotations

import argparse
import json
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

TRIAL = """
import json, sys, time
import torch
from safetensors.torch import save_file
from recipec.convert.checkpoint import convert

def rss_anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

kind, src, dst, shard = sys.argv[1:5]
baseline = rss_anon()
print("ready", flush=True)
start = time.perf_counter()
if kind == "naive":
    save_file(torch.load(src, weights_only=True)["state_dict"], dst)
else:
    if kind == "nohash":  # where the time goes: the same conversion without the source's SHA-256
        import recipec.weights.formats
        recipec.weights.formats.sha256 = lambda path, stop=None: "0" * 64
    convert(src, dst, shard_size=shard if shard != "-" else None)
print(json.dumps({"seconds": time.perf_counter() - start, "baseline": baseline}), flush=True)
"""


def _rss_anon(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return None


def _trial(kind: str, src: Path, dst: Path, shard: str = "-") -> tuple[float, float]:
    """(seconds, peak anonymous MiB above the child's baseline) of one conversion in a fresh process."""
    stem = dst.name.removesuffix(".index.json").removesuffix(".safetensors")
    for old in [dst, *dst.parent.glob(f"{stem}-*-of-*.safetensors")]:
        old.unlink(missing_ok=True)
    os.sync()  # the previous trial's dirty pages are written back before this one starts
    child = subprocess.Popen([sys.executable, "-c", TRIAL, kind, str(src), str(dst), shard],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    peak = 0
    while child.poll() is None:
        peak = max(peak, _rss_anon(child.pid) or 0)
        time.sleep(0.002)
    if child.returncode:
        raise SystemExit(f"{kind} trial failed ({child.returncode})")
    result = json.loads(child.stdout.read())
    return result["seconds"], max(0, peak - result["baseline"]) / MIB


def _check(src: Path, dst: Path) -> None:
    """The output holds the source's tensors exactly (a benchmark of a wrong result proves nothing)."""
    import torch
    from safetensors import safe_open

    state = torch.load(src, weights_only=True, mmap=True)["state_dict"]
    with safe_open(str(dst), framework="pt") as f:
        assert set(f.keys()) == set(state)
        assert all(torch.equal(f.get_tensor(k), v) for k, v in state.items())


def _sha256_seconds(src: Path) -> float:
    from recipec.weights.formats import sha256

    start = time.perf_counter()
    sha256(src)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the files go (default: the system's temporary directory)")
    parser.add_argument("--big", action="store_true", help="also convert a 4 GiB file into 1 GiB shards")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_convert.") as tmp:
        src = Path(tmp) / "big.pt"
        subprocess.run([sys.executable, "-c", GENERATE, str(src), str(args.size_mib)], check=True)
        naive_dst, ours_dst = Path(tmp) / "naive.safetensors", Path(tmp) / "ours.safetensors"
        _trial("naive", src, naive_dst)  # warm-up: page cache, imports
        _trial("recipec", src, ours_dst)
        _check(src, ours_dst)
        naive, ours, nohash = [], [], []
        for _ in range(args.repeats):  # interleaved, so load on the machine hits all alike
            naive.append(_trial("naive", src, naive_dst))
            ours.append(_trial("recipec", src, ours_dst))
            nohash.append(_trial("nohash", src, ours_dst))
        t_naive, t_ours, t_nohash = (statistics.median(t for t, _ in runs) for runs in (naive, ours, nohash))
        m_naive, m_ours = (max(m for _, m in runs) for runs in (naive, ours))
        print(f"{args.size_mib} MiB torch file -> safetensors, median of {args.repeats}")
        print(f"{'':<36}{'seconds':>9}{'ratio':>7}{'extra MiB':>11}")
        print(f"{'torch.load + save_file':<36}{t_naive:>9.3f}{1.0:>7.2f}{m_naive:>11.0f}")
        print(f"{'recipec convert':<36}{t_ours:>9.3f}{t_ours / t_naive:>7.2f}{m_ours:>11.0f}")
        print(f"{'  (without hashing the source)':<36}{t_nohash:>9.3f}{t_nohash / t_naive:>7.2f}")
        t_hash = statistics.median(_sha256_seconds(src) for _ in range(3))
        print(f"{'  (SHA-256 of the source alone)':<36}{t_hash:>9.3f}{t_hash / t_naive:>7.2f}")
        print("(each run, s: naive " + " ".join(f"{t:.2f}" for t, _ in naive)
              + "; recipec " + " ".join(f"{t:.2f}" for t, _ in ours) + ")")
        for path in Path(tmp).iterdir():
            path.unlink()
        if args.big:
            subprocess.run([sys.executable, "-c", GENERATE, str(src), str(4096)], check=True)
            seconds, extra = _trial("recipec", src, Path(tmp) / "big.safetensors.index.json", "1GB")
            shards = sorted(p.name for p in Path(tmp).glob("big-*.safetensors"))
            print(f"4096 MiB torch file -> {len(shards)} shards of 1 GB: recipec {seconds:.1f} s, "
                  f"{extra:.0f} MiB extra anonymous memory")


if __name__ == "__main__":
    main()
