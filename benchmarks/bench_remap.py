"""map_keys against hand-written key remapping, on 100,000 keys and 20 rename rules.

Run: .venv/bin/python benchmarks/bench_remap.py        (--quick: 2,000 keys, once: a check that it runs)

Baselines, timed in the same run on the same keys (best of 5 each):
- naive: the obvious loop: ``re.sub``/``re.search`` with pattern strings (re's own cache
  compiles them), every rule and every include/exclude pattern on every key;
- compiled: the same loop with precompiled patterns (what a careful hand-written version does).
Both must produce exactly map_keys's renaming and filtering; the script checks it.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipec.weights.transfer import map_keys

N_KEYS = 100_000
LIMIT_S = 1.0

RENAME = [
    (r"^module\.", ""),
    (r"^_orig_mod\.", ""),
    (r"^encoder\.layers\.(\d+)\.", r"blocks.\1."),
    (r"\.attn\.q_proj\.", ".attn.q."),
    (r"\.attn\.k_proj\.", ".attn.k."),
    (r"\.attn\.v_proj\.", ".attn.v."),
    (r"\.attn\.o_proj\.", ".attn.proj."),
    (r"\.mlp\.fc1\.", ".mlp.lin1."),
    (r"\.mlp\.fc2\.", ".mlp.lin2."),
    (r"\.norm1\.", ".ln1."),
    (r"\.norm2\.", ".ln2."),
    (r"^encoder\.embed\.proj\.", "patch_embed.proj."),
    (r"^encoder\.norm\.", "norm."),
    (r"^backbone\.(\d+)\.(\d+)\.", r"layer\1.\2."),
    (r"\.bn\.running_mean$", ".bn.mean"),
    (r"\.bn\.running_var$", ".bn.var"),
    (r"^classifier\.", "head."),
    (r"\.gamma$", ".weight"),
    (r"\.beta$", ".bias"),
    (r"^decoder\.", "neck."),
]
INCLUDE = [r"^blocks\.", r"^patch_embed\.", r"^norm\.", r"^layer\d", r"^head\.", r"^neck\."]
EXCLUDE = [r"^head\.", r"\.attn\.rel_pos", r"num_batches_tracked$"]

_LAYER = ["attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight", "attn.k_proj.bias",
          "attn.v_proj.weight", "attn.v_proj.bias", "attn.o_proj.weight", "attn.o_proj.bias",
          "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
          "norm1.gamma", "norm1.beta", "norm2.gamma", "norm2.beta"]
_STAGE = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]


def synthetic_keys(n: int = N_KEYS) -> list[str]:
    """Keys shaped like a DDP-wrapped encoder with a conv backbone, a decoder and a head."""
    keys = ["module.encoder.embed.proj.weight", "module.encoder.embed.proj.bias", "module.encoder.norm.weight",
            "module.encoder.norm.bias", "module.classifier.weight", "module.classifier.bias"]
    i = 0
    while len(keys) < n:
        keys += [f"module.encoder.layers.{i}.{p}" for p in _LAYER]
        keys += [f"module.backbone.{i % 4 + 1}.{i}.{p}" for p in _STAGE]
        keys += [f"module.decoder.{i}.proj.weight", f"module.encoder.layers.{i}.attn.rel_pos"]
        i += 1
    return keys[:n]


def naive(keys: Sequence[str], rename: Sequence[tuple[str, str]], include: Sequence[str],
          exclude: Sequence[str]) -> dict[str, Any]:
    renamed, used = {}, set()
    for key in keys:
        name = key
        for pattern, replacement in rename:
            if re.search(pattern, name):
                used.add(pattern)
            name = re.sub(pattern, replacement, name)
        renamed[key] = name
    excluded, kept, hit = {}, {}, set()
    for key, name in renamed.items():
        dropped_by = [p for p in exclude if re.search(p, name)]
        included_by = [p for p in include if re.search(p, name)]
        hit.update(dropped_by + included_by)
        if dropped_by:
            excluded[key] = ("exclude", dropped_by[0])
        elif include and not included_by:
            excluded[key] = ("include", None)
        else:
            kept.setdefault(name, key)
    dead = [p for p, _ in rename if p not in used] + [p for p in [*include, *exclude] if p not in hit]
    return {"renamed": renamed, "excluded": excluded, "kept": kept, "dead": dead}


def compiled(keys: Sequence[str], rename: Sequence[tuple[str, str]], include: Sequence[str],
             exclude: Sequence[str]) -> dict[str, Any]:
    rules = [(re.compile(p), r) for p, r in rename]
    includes, excludes = [re.compile(p) for p in include], [re.compile(p) for p in exclude]
    renamed, used = {}, set()
    for key in keys:
        name = key
        for i, (pattern, replacement) in enumerate(rules):
            if pattern.search(name):
                used.add(i)
                name = pattern.sub(replacement, name)
        renamed[key] = name
    excluded, kept = {}, {}
    for key, name in renamed.items():
        dropped_by = next((p for p in excludes if p.search(name)), None)
        if dropped_by is not None:
            excluded[key] = ("exclude", dropped_by.pattern)
            continue
        included_by = next((p for p in includes if p.search(name)), None)
        if includes and included_by is None:
            excluded[key] = ("include", None)
            continue
        kept.setdefault(name, key)
    names = list(renamed.values())
    dead = [p for i, (p, _) in enumerate(rename) if i not in used]
    dead += [p.pattern for p in [*includes, *excludes] if not any(p.search(n) for n in names)]
    return {"renamed": renamed, "excluded": excluded, "kept": kept, "dead": dead}


def best_of(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    keys = synthetic_keys(2_000 if quick else N_KEYS)
    args = (keys, RENAME, INCLUDE, EXCLUDE)
    repeat = 1 if quick else 5
    fast_s, mapping = best_of(lambda: map_keys(keys, rename=RENAME, include=INCLUDE, exclude=EXCLUDE), repeat)
    naive_s, expected = best_of(lambda: naive(*args), repeat)
    compiled_s, expected_compiled = best_of(lambda: compiled(*args), repeat)
    for name, result in (("naive", expected), ("compiled", expected_compiled)):
        same = (result["renamed"] == mapping.renamed and result["excluded"] == mapping.excluded
                and result["kept"] == mapping.kept and result["dead"] == [p for _, _, p in mapping.unmatched])
        if not same:
            print(f"FAIL: map_keys disagrees with the {name} baseline")
            return 1

    print(f"{len(keys):,} keys, {len(RENAME)} rename rules, {len(INCLUDE)} include, {len(EXCLUDE)} exclude; "
          f"{len(mapping.kept):,} kept, {len(mapping.excluded):,} excluded (best of {repeat})")
    print(f"{'implementation':<34}{'seconds':>9}{'map_keys is':>14}")
    print(f"{'map_keys':<34}{fast_s:>9.3f}{'':>14}")
    print(f"{'naive (re.sub with strings)':<34}{naive_s:>9.3f}{naive_s / fast_s:>13.1f}x faster")
    print(f"{'compiled loop (precompiled)':<34}{compiled_s:>9.3f}{compiled_s / fast_s:>13.1f}x faster")
    ok = fast_s < LIMIT_S
    print(f"map_keys under {LIMIT_S:.0f} s: {'yes' if ok else 'NO'} ({fast_s:.3f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
