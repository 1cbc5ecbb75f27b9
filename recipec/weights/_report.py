"""The load report: what a transfer did with every source and model key.

Kept apart from ``transfer.py`` so that the mapping logic and its presentation each fit in
one reading; ``recipec.weights.transfer`` re-exports :class:`LoadReport`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoadReport", "format_shape"]

# Order of fates in counts() and table(): model-side first, then source-side.
_FATES = ("loaded", "adapted", "renamed", "mismatched", "missing", "new", "defaulted", "excluded", "unexpected")


def format_shape(shape: Sequence[int] | None) -> str:
    """``[64, 3, 7, 7]`` -> ``[64,3,7,7]``; an unknown shape (None) -> ``?``."""
    return "?" if shape is None else "[" + ",".join(str(int(d)) for d in shape) + "]"


@dataclass
class LoadReport:
    """What :func:`~recipec.weights.transfer.apply_transfer` did with every key.

    Model keys each have one fate: ``loaded`` (``adapted`` ones included), ``mismatched``
    (``on_mismatch: skip``), ``missing``, ``new`` (under a new-head prefix, initialised fresh on
    purpose) or ``defaulted`` (a ``num_batches_tracked`` the source lacks; it keeps its value).
    Source keys not loaded are ``excluded`` (by source key) or ``unexpected`` (by renamed key).
    Every list is sorted.

    Attributes:
        loaded: model keys that received a source tensor (adapted ones included).
        missing: model keys no source tensor was found for.
        unexpected: renamed source keys the model does not have (and that were not excluded).
        mismatched: ``{"key", "source_key", "source_shape", "model_shape"}`` of skipped mismatches.
        excluded: ``{"key" (source key), "renamed", "pattern", "by"}``; ``by`` is ``"exclude"``, or
            ``"include"`` (with ``pattern`` None) when no include pattern matched.
        adapted: ``{"key", "rule", "source_shape", "model_shape"}`` of adapted tensors; ``rule`` is a
            shape rule, ``fuse`` or ``split``, or both joined by ``+`` (``fuse+reshape``). A fused or
            split tensor also has ``source_keys`` and ``source_shapes`` (the tensors it is made of,
            in order), ``dim`` and, for a split, ``part`` (``[index, count]``); its ``source_shape``
            is the shape the fuse or split made.
        renamed: model key -> source key, for loaded keys whose names differ (fused and split
            ones are in ``adapted``, with their ``source_keys``).
        new: model keys of the new head, initialised fresh.
        defaulted: ``num_batches_tracked`` buffers the source lacks.
        source: where the weights came from.
        state_dict_key: where the state dict sat in its file.
        unexpected_sources: unexpected renamed key -> its source key, where they differ.
        filter: what converted the file's layout before renaming (``source.timm_filter``), or "".
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    adapted: list[dict[str, Any]] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    defaulted: list[str] = field(default_factory=list)
    source: str = ""
    state_dict_key: str = ""
    unexpected_sources: dict[str, str] = field(default_factory=dict)
    filter: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (the ``load_report`` of plan.json)."""
        return {
            "loaded": sorted(self.loaded),
            "missing": sorted(self.missing),
            "unexpected": sorted(self.unexpected),
            "mismatched": [_plain(m) for m in sorted(self.mismatched, key=lambda m: m["key"])],
            "excluded": [_plain(e) for e in sorted(self.excluded, key=lambda e: e["key"])],
            "adapted": [_plain(a) for a in sorted(self.adapted, key=lambda a: a["key"])],
            "renamed": dict(sorted(self.renamed.items())),
            "new": sorted(self.new),
            "defaulted": sorted(self.defaulted),
            "source": self.source,
            "state_dict_key": self.state_dict_key,
            "unexpected_sources": dict(sorted(self.unexpected_sources.items())),
            **({"filter": self.filter} if self.filter else {}),
            "counts": self.counts(),
        }

    def counts(self) -> dict[str, int]:
        """Fate -> number of keys; ``adapted`` and ``renamed`` are parts of ``loaded``."""
        return {name: len(getattr(self, name)) for name in _FATES}

    def summary(self) -> str:
        """One line of counts, e.g. ``60 of 62 model tensors loaded (1 adapted, 0 renamed); 2 new, ...``."""
        c = self.counts()
        total = c["loaded"] + c["mismatched"] + c["missing"] + c["new"] + c["defaulted"]
        origin = f" from {self.source}" if self.source else ""
        return (f"{c['loaded']} of {total} model tensors loaded{origin} ({c['adapted']} adapted, {c['renamed']} renamed); "
                f"{c['new']} new, {c['defaulted']} defaulted, {c['mismatched']} mismatched, {c['missing']} missing; "
                f"{c['excluded']} source tensors excluded, {c['unexpected']} unexpected")

    def fate(self, key: str) -> str:
        """One line saying what became of a model key or a source key.

        Raises:
            KeyError: the key is neither a source key nor a model key of this transfer.
        """
        return _Index(self).fate(key)

    def table(self, limit: int = 50) -> str:
        """A plain-text table: counts per fate, then every key not simply loaded, with its fate.

        Args:
            limit: at most this many key rows; the rest are counted.
        """
        index = _Index(self)
        counts = self.counts()
        width = max(len(name) for name in _FATES)
        lines = [self.summary()]
        lines += [f"  {name:<{width}}  {number:>7}" for name, number in counts.items() if number or name == "loaded"]
        # A name can be both a model key (e.g. new) and a source key (e.g. excluded): one row each.
        model_side = [a["key"] for a in self.adapted] + [m["key"] for m in self.mismatched] + self.missing + self.new
        source_side = [e["key"] for e in self.excluded] + self.unexpected
        rows = ([(k, index.model_fate(k)) for k in sorted(set(model_side + self.defaulted))]
                + [(k, index.source_fate(k)) for k in sorted(set(source_side))])
        rows.sort(key=lambda row: (_rank(row[1]), row[0]))
        shown = rows[:limit]
        if shown:
            key_width = min(max(len(k) for k, _ in shown), 60)
            lines.append("")
            lines += [f"  {k:<{key_width}}  {why}" for k, why in shown]
        if len(rows) > limit:
            lines.append(f"  ... and {len(rows) - limit} more")
        return "\n".join(lines)


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: [int(d) for d in v] if k.endswith("_shape") and v is not None else v for k, v in entry.items()}


def _rank(reason: str | None) -> int:
    # Rows grouped by fate, the way counts() lists them.
    order = ("adapted", "shape mismatch", "missing", "new", "defaulted", "excluded", "unexpected")
    return next((i for i, prefix in enumerate(order) if (reason or "").startswith(prefix)), len(order))


class _Index:
    """Lookups from keys to entries, built once per fate()/table() call."""

    def __init__(self, report: LoadReport) -> None:
        self.report = report
        self.loaded = set(report.loaded)
        self.adapted = {a["key"]: a for a in report.adapted}
        self.mismatched = {m["key"]: m for m in report.mismatched}
        self.mismatched_from = {m["source_key"]: m for m in report.mismatched}
        self.missing, self.new, self.defaulted = set(report.missing), set(report.new), set(report.defaulted)
        self.excluded = {e["key"]: e for e in report.excluded}
        self.excluded_as = {e["renamed"]: e for e in report.excluded}
        self.loaded_from = {source: model for model, source in report.renamed.items()}
        self.joined_from: dict[str, list[dict[str, Any]]] = {}  # source key -> the fused/split entries it feeds
        for a in report.adapted:
            for source in a.get("source_keys") or ():
                self.joined_from.setdefault(source, []).append(a)
        self.unexpected = set(report.unexpected)
        self.unexpected_from = {source: name for name, source in report.unexpected_sources.items()}

    def fate(self, key: str) -> str:
        reason = self.model_fate(key) or self.source_fate(key)
        if reason is None:
            raise KeyError(f"{key!r} is neither a source key nor a model key of this transfer")
        return reason

    def model_fate(self, key: str) -> str | None:
        r = self.report
        if key in self.adapted:
            a = self.adapted[key]
            if a.get("source_keys"):  # fused or split: the parts, in order
                shapes = " + ".join(format_shape(s) for s in a["source_shapes"])
                part = f" (part {a['part'][0] + 1} of {a['part'][1]})" if a.get("part") else ""
                return (f"adapted by {a['rule']} {shapes} -> {format_shape(a['model_shape'])} along dim {a['dim']}{part} "
                        f"from {', '.join(repr(k) for k in a['source_keys'])}")
            origin = f" from '{r.renamed[key]}'" if key in r.renamed else ""
            return f"adapted by {a['rule']} {format_shape(a['source_shape'])} -> {format_shape(a['model_shape'])}{origin}"
        if key in self.loaded:
            return f"loaded from '{r.renamed[key]}' (renamed)" if key in r.renamed else "loaded"
        if key in self.mismatched:
            return self._mismatch(self.mismatched[key])
        if key in self.missing:
            e = self.excluded_as.get(key)
            if e is None:
                return "missing: not in source"
            return f"missing: source '{e['key']}' " + (f"excluded by '{e['pattern']}'" if e["by"] == "exclude"
                                                        else "matches no include pattern")
        if key in self.new:
            return "new head: initialised fresh"
        if key in self.defaulted:
            return "defaulted: not in source, keeps its current value"
        return None

    def source_fate(self, key: str) -> str | None:
        if key in self.excluded:
            e = self.excluded[key]
            return f"excluded by '{e['pattern']}'" if e["by"] == "exclude" else "excluded: matches no include pattern"
        if key in self.loaded_from:
            model_key = self.loaded_from[key]
            verb = "adapted" if model_key in self.adapted else "loaded"
            return f"{verb} into '{model_key}' (renamed)"
        if key in self.joined_from:
            made = sorted(self.joined_from[key], key=lambda a: (a.get("part") or [0])[0])  # a split's parts in order
            verb = "split" if made[0].get("part") else "fused"
            return f"{verb} into {', '.join(repr(a['key']) for a in made)}"
        if key in self.mismatched_from:
            return self._mismatch(self.mismatched_from[key])
        if key in self.unexpected or key in self.unexpected_from:
            return "unexpected: not in model"
        return None

    def _mismatch(self, m: dict[str, Any]) -> str:
        return (f"shape mismatch: source {format_shape(m['source_shape'])} vs model "
                f"{format_shape(m['model_shape'])} (skipped)")
