"""Transfer source weights into a model: rename, include, exclude, adapt, then copy in place.

:func:`map_keys` is the pure part (key names only); :func:`apply_transfer` adds shapes and
tensors, validates everything, and only then copies, so a failed transfer leaves the model
untouched. Its :class:`LoadReport` says what became of every key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recipec.errors import Problem, TransferError
from recipec.weights._keys import KeyMapping, dead_pattern, map_keys
from recipec.weights._report import LoadReport, format_shape
from recipec.weights.adapt import RULES, apply_rule, pos_embed_grids

__all__ = ["KeyMapping", "LoadReport", "TransferRules", "apply_transfer", "map_keys"]

_MISSING_SHOWN = 20


@dataclass(frozen=True)
class TransferRules:
    """How source keys map onto the model: what a recipe's ``source:`` section says.

    Errors about a rule name its field here (``("exclude", 0)``, ``("on_mismatch",)``); the
    compiler, which builds the rules from the recipe, relabels them as ``source.*``.

    Attributes:
        rename: ordered ``(pattern, replacement)`` pairs applied with ``re.sub``.
        include: regexes on the renamed key; only matching keys load. Empty: every key.
        exclude: regexes on the renamed key; matching keys do not load.
        adapt: ``AdaptSpec`` objects or dicts (``match``, ``rule``, ``indices``); the first whose
            ``match`` is found in a key adapts its tensor when the shapes differ.
        on_mismatch: ``"error"`` or ``"skip"`` for a shape mismatch no adapt rule covers.
        require_all: fail when a model tensor outside ``new_keys_prefixes`` gets no weights.
            ``num_batches_tracked`` buffers the source lacks are ``defaulted``, never missing.
    """

    rename: Sequence[Sequence[str]] = ()
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    adapt: Sequence[Any] = ()
    on_mismatch: str = "error"
    require_all: bool = True


_NO_RULES = TransferRules()


def _adapt_rules(adapt: Sequence[Any], problems: list[Problem]) -> list[tuple[re.Pattern[str], str, Any]]:
    """``(compiled match, rule, indices)`` of AdaptSpec objects or plain dicts."""
    rules: list[tuple[re.Pattern[str], str, Any]] = []
    for i, item in enumerate(adapt):
        fields: Mapping[str, Any] = (item if isinstance(item, Mapping)
                                     else {name: getattr(item, name, None) for name in ("match", "rule", "indices")})
        match: Any = fields.get("match")
        rule, indices = fields.get("rule"), fields.get("indices")
        if rule not in RULES:
            problems.append((("adapt", i), f"unknown rule {rule!r}; choose one of: {', '.join(RULES)}"))
        try:
            rules.append((re.compile(match), str(rule), indices))
        except (re.error, TypeError) as exc:
            problems.append((("adapt", i), f"match {match!r} is not a valid regular expression: {exc}"))
            rules.append((re.compile(r"(?!)"), str(rule), indices))
    return rules


def apply_transfer(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    rules: TransferRules = _NO_RULES,
    *,
    new_keys_prefixes: Sequence[str] = (),
    source: str = "",
    state_dict_key: str = "",
    dry_run: bool = False,
) -> LoadReport:
    """Load ``state_dict`` into ``model`` as a recipe's ``source:`` section says.

    Everything is checked before any tensor is copied: on error the model is untouched.
    Tensors are copied into the model's own parameters and buffers (``copy_`` under
    ``torch.no_grad()``, cast to their dtype and device), so optimizer references stay valid.

    Args:
        model: the model to load into.
        state_dict: source tensors by key.
        rules: rename, include, exclude, adapt, on_mismatch and require_all (:class:`TransferRules`).
        new_keys_prefixes: prefixes of model keys initialised fresh on purpose (the new head).
        source: where the weights came from, recorded in the report.
        state_dict_key: where the state dict sat in its file, recorded in the report.
        dry_run: compute the report without copying anything.

    Returns:
        The :class:`LoadReport`.

    Raises:
        TransferError: every problem at once: patterns that match nothing, keys renamed onto one
            name, shape mismatches, adapt rules that cannot produce the model's shape, missing keys.
            A problem with a rule is located at the rule's field (``("exclude", 0)``), not at a recipe path.

    Example:
        >>> model = torchvision.models.resnet18(weights=None, num_classes=5)
        >>> rules = TransferRules(rename=[(r"^module\\.", "")], exclude=[r"^fc\\."])
        >>> report = apply_transfer(model, load_state_dict("ddp.pt"), rules, new_keys_prefixes=["fc."])
        >>> report.summary()
        '120 of 122 model tensors loaded (0 adapted, 120 renamed); 2 new, 0 defaulted, 0 mismatched, ...'
    """
    on_mismatch = rules.on_mismatch
    problems: list[Problem] = []
    if on_mismatch not in ("error", "skip"):
        problems.append((("on_mismatch",), f"must be error or skip, got {on_mismatch!r}"))
    adapt_rules = _adapt_rules(rules.adapt, problems)
    if problems:
        raise TransferError(problems)
    mapping = map_keys(state_dict.keys(), rename=rules.rename, include=rules.include, exclude=rules.exclude)
    problems = list(mapping.problems)
    names = list(mapping.renamed.values())
    for i, (pattern, _, _) in enumerate(adapt_rules):
        if not any(pattern.search(name) for name in names):
            problems.append(dead_pattern(("adapt", i), pattern.pattern, "renamed key", names))
    if problems:
        raise TransferError(problems)

    targets = {k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}
    report = LoadReport(source=source, state_dict_key=state_dict_key)
    copies: list[tuple[torch.Tensor, torch.Tensor]] = []
    failed: set[str] = set()  # already reported; not missing as well
    for name, key in sorted(mapping.kept.items()):
        target = targets.get(name)
        if target is None:
            report.unexpected.append(name)
            if name != key:
                report.unexpected_sources[name] = key
            continue
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            failed.add(name)
            problems.append(f"source entry '{key}' is a {type(value).__name__}, not a tensor; exclude it")
            continue
        if value.is_complex() != target.is_complex() or (value.is_floating_point() and not target.is_floating_point()
                                                          and not target.is_complex()):
            # copy_ would drop the imaginary part, or truncate floats to integers, with at most a warning
            failed.add(name)
            problems.append(f"'{name}'{f' (source {key!r})' if name != key else ''}: source dtype "
                            f"{str(value.dtype).removeprefix('torch.')} cannot be copied into the model's "
                            f"{str(target.dtype).removeprefix('torch.')} without losing values; exclude it (source.exclude)")
            continue
        if value.shape != target.shape:
            have, want = list(value.shape), list(target.shape)
            index = next((i for i, (p, _, _) in enumerate(adapt_rules) if p.search(name)), None)
            if index is not None:
                _, rule, indices = adapt_rules[index]
                try:
                    value = apply_rule(rule, value, target.shape, indices=indices)
                except TransferError as exc:
                    failed.add(name)
                    problems.append((("adapt", index), f"'{name}': {exc}"))
                    continue
                report.adapted.append({"key": name, "rule": rule, "source_shape": have, "model_shape": want})
                if rule == "pos_embed":  # what was resampled: "14x14 -> 4x4 (+1 prefix token)"
                    prefix, old_side, new_side = pos_embed_grids(have[1], want[1])
                    report.adapted[-1]["grid"] = f"{old_side}x{old_side} -> {new_side}x{new_side} (+{prefix} prefix token{'s' * (prefix != 1)})"
            elif on_mismatch == "error":
                failed.add(name)
                problems.append(f"'{name}'{f' (source {key!r})' if name != key else ''}: shape mismatch, source "
                                f"{format_shape(have)} vs model {format_shape(want)}; add an adapt rule for it "
                                "(source.adapt), exclude it (source.exclude), or set source.on_mismatch: skip")
                continue
            else:
                report.mismatched.append({"key": name, "source_key": key, "source_shape": have, "model_shape": want})
                continue
        report.loaded.append(name)
        if name != key:
            report.renamed[name] = key
        copies.append((target, value))

    settled = set(report.loaded) | {m["key"] for m in report.mismatched} | failed
    for name in sorted(set(targets) - settled):
        if name.startswith(tuple(new_keys_prefixes)):
            report.new.append(name)
        elif name.rpartition(".")[2] == "num_batches_tracked":
            report.defaulted.append(name)
        else:
            report.missing.append(name)
    if rules.require_all and report.missing:
        why = {mapping.renamed[k]: f" (source '{k}' " + (f"excluded by '{p}')" if by == "exclude" else "matches no include)")
               for k, (by, p) in mapping.excluded.items()}
        shown = [name + why.get(name, "") for name in report.missing[:_MISSING_SHOWN]]
        more = f", ... and {len(report.missing) - len(shown)} more" if len(report.missing) > len(shown) else ""
        problems.append((("require_all",),
                         (f"{len(report.missing)} model tensors get no weights from the source: {', '.join(shown)}{more}; "
                          "rename source keys onto them (source.rename) or set source.require_all: false")))
    if problems:
        raise TransferError(problems)

    report.excluded = [{"key": k, "renamed": mapping.renamed[k], "pattern": pattern, "by": by}
                       for k, (by, pattern) in sorted(mapping.excluded.items())]
    if not dry_run:
        with torch.no_grad():
            for target, value in copies:
                target.copy_(value)
    return report
