"""JSON that every reader accepts: no NaN or Infinity, and a note saying which values were not finite.

Python's :mod:`json` writes ``NaN`` and ``Infinity`` by default, which is not JSON (``jq``, browsers
and most parsers refuse it). Everything recipec writes as JSON (``plan.json``, ``metrics.jsonl``,
``plan --json``, ``inspect --json``) goes through :func:`dumps`: a non-finite float becomes
``null`` and the top-level object gets ``"nonfinite": {"dotted.path": "nan" | "inf" | "-inf"}``,
so a diverged ``train_loss`` reads ``"train_loss": null, "nonfinite": {"train_loss": "nan"}``.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["NONFINITE_KEY", "dumps", "finite"]

NONFINITE_KEY = "nonfinite"


def finite(value: Any) -> Any:
    """``value`` with every NaN/Infinity replaced by None, and the replaced paths recorded at the top.

    Mappings, lists and tuples are copied (tuples become lists); other values are returned as
    they are. Only a top-level mapping can carry the note; below a list or scalar the values
    just become None.

    Example:
        >>> finite({"loss": float("nan"), "lr": [1e-3, float("inf")]})
        {'loss': None, 'lr': [0.001, None], 'nonfinite': {'loss': 'nan', 'lr.1': 'inf'}}
    """
    found: dict[str, str] = {}
    out = _walk(value, (), found)
    if found and isinstance(out, dict):
        previous = out.get(NONFINITE_KEY)
        out[NONFINITE_KEY] = {**(previous if isinstance(previous, dict) else {}), **found}
    return out


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(value)``, with ``allow_nan=False`` so nothing slips through."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def _walk(value: Any, path: tuple[str, ...], found: dict[str, str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        found[".".join(path)] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, dict):
        return {k: _walk(v, (*path, str(k)), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(v, (*path, str(i)), found) for i, v in enumerate(value)]
    return value
