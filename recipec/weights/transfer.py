"""Transfer source weights into a model: rename, include, exclude, fuse/split, adapt, then copy in place.

:func:`map_keys` is the pure part (key names only); :func:`apply_transfer` adds a preset's rules,
fuse and split (:mod:`recipec.weights.fuse`), shapes and tensors, validates everything, and only
then copies, so a failed transfer leaves the model untouched. Its :class:`LoadReport` says what
became of every key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recipec.errors import CheckpointError, Problem, TransferError
from recipec.recipe.presets import PRESETS, Preset
from recipec.weights._keys import KeyMapping, dead_pattern, map_keys, prefix_fix
from recipec.weights._report import LoadReport, format_shape
from recipec.weights._rules import adapt_rules, map_with_preset
from recipec.weights.adapt import apply_rule, pos_embed_grids
from recipec.weights.fuse import Joined, join_tensor, plan_joins

__all__ = ["KeyMapping", "LoadReport", "TransferRules", "apply_transfer", "load_exported", "map_keys", "map_state_dict"]

_MISSING_SHOWN = 20


@dataclass(frozen=True)
class TransferRules:
    """How source keys map onto the model: what a recipe's ``source:`` section says.

    Errors about a rule name its field here (``("exclude", 0)``, ``("on_mismatch",)``,
    ``("preset",)`` for the preset's own rules); the compiler, which builds the rules from the
    recipe, relabels them as ``source.*``.

    Attributes:
        rename: ordered ``(pattern, replacement)`` pairs applied with ``re.sub``.
        include: regexes on the renamed key; only matching keys load. Empty: every key.
        exclude: regexes on the renamed key; matching keys do not load.
        adapt: ``AdaptSpec`` objects or dicts. Shape rules (``match``, ``rule``, ``indices``): the
            first whose ``match`` is found in a key adapts its tensor when the shapes differ. Fuse
            and split rules (``fuse``/``split``, ``into``, ``dim``, ``sizes``): see
            :mod:`recipec.weights.fuse`; they run on the kept renamed keys, in order.
        on_mismatch: ``"error"`` or ``"skip"`` for a shape mismatch no adapt rule covers.
        require_all: fail when a model tensor outside ``new_keys_prefixes`` gets no weights.
            ``num_batches_tracked`` buffers the source lacks are ``defaulted``, never missing.
        preset: the name of a shipped mapping (:data:`recipec.recipe.presets.PRESETS`) whose rules
            run before these: its renames first, its excludes beside these, its fuse/split rules
            first, its shape rules after these. Its rules may match nothing; renaming no key is an error.
    """

    rename: Sequence[Sequence[str]] = ()
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    adapt: Sequence[Any] = ()
    on_mismatch: str = "error"
    require_all: bool = True
    preset: str | None = None


_NO_RULES = TransferRules()
_NO_PRESET = Preset(source="", target="", description="")


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
    report, copies = _planned(model, state_dict, rules, new_keys_prefixes)
    report.source, report.state_dict_key = source, state_dict_key
    if not dry_run:
        with torch.no_grad():
            for target, value in copies.values():
                target.copy_(value)
    return report


def map_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                   rules: TransferRules = _NO_RULES) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The source tensors as :func:`apply_transfer` would copy them into ``model``, under the model's keys.

    Renamed, fused, split and adapted as ``rules`` say, in the source's dtypes; ``model`` is only
    read (its keys and shapes). No key is new: with ``require_all``, every model tensor but a
    ``num_batches_tracked`` must come from the source. ``recipec convert --recipe`` maps a
    checkpoint with its recipe's ``source:`` section through this.

    Returns:
        The mapped state dict (model key -> tensor) and the :class:`LoadReport`.

    Raises:
        TransferError: as :func:`apply_transfer`.
    """
    report, copies = _planned(model, state_dict, rules, ())
    return {name: value for name, (_, value) in sorted(copies.items())}, report


def _planned(model: nn.Module, state_dict: Mapping[str, torch.Tensor], rules: TransferRules,
             new_keys_prefixes: Sequence[str]) -> tuple[LoadReport, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Everything a transfer does but the copies: the report, and model key -> (model tensor, value for it)."""
    on_mismatch = rules.on_mismatch
    problems: list[Problem] = []
    if on_mismatch not in ("error", "skip"):
        problems.append((("on_mismatch",), f"must be error or skip, got {on_mismatch!r}"))
    preset = _NO_PRESET
    if rules.preset is not None:
        if rules.preset in PRESETS:
            preset = PRESETS[rules.preset]
        else:
            problems.append((("preset",), f"unknown preset {rules.preset!r}; choose one of: {', '.join(PRESETS)}"))
    shape_rules, join_rules = adapt_rules(rules.adapt, preset, problems)
    if problems:
        raise TransferError(problems)
    mapping = map_with_preset(list(state_dict.keys()), rules.rename, rules.include, rules.exclude, preset,
                              rules.preset or "")
    problems = list(mapping.problems)
    joins, join_problems = plan_joins(list(mapping.kept), join_rules)
    problems += join_problems
    joined_parts = {part for j in joins for part in j.parts}
    names = [*mapping.renamed.values(), *(j.name for j in joins)]
    for r in shape_rules:
        if not r.optional and not any(r.pattern.search(name) for name in names):
            problems.append(dead_pattern(r.where, r.pattern.pattern, "renamed key", names))
    if problems:
        raise TransferError(problems)

    targets = {k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}
    report = LoadReport()
    copies: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    failed: set[str] = set()  # already reported; not missing as well
    entries: list[tuple[str, tuple[str, ...], Joined | None]] = [
        (name, (key,), None) for name, key in mapping.kept.items() if name not in joined_parts]
    entries += [(j.name, tuple(mapping.kept[p] for p in j.parts), j) for j in joins]
    for name, keys, joined in sorted(entries, key=lambda e: e[0]):
        key = keys[0]
        target = targets.get(name)
        if target is None:
            report.unexpected.append(name)
            if joined or name != key:
                report.unexpected_sources[name] = " + ".join(keys)
            continue
        bad = next((k for k in keys if not isinstance(state_dict[k], torch.Tensor)), None)
        if bad is not None:
            failed.add(name)
            problems.append(f"source entry '{bad}' is a {type(state_dict[bad]).__name__}, not a tensor; exclude it")
            continue
        value = state_dict[key]
        steps: list[str] = []
        if joined is not None:
            try:
                value = join_tensor(joined, {p: state_dict[k] for p, k in zip(joined.parts, keys)})
            except TransferError as exc:
                failed.add(name)
                problems.append((joined.rule.where, f"'{name}'{_origin(name, keys, joined)}: {exc}"))
                continue
            steps.append(joined.rule.kind)
        if value.is_complex() != target.is_complex() or (value.is_floating_point() and not target.is_floating_point()
                                                          and not target.is_complex()):
            # copy_ would drop the imaginary part, or truncate floats to integers, with at most a warning
            failed.add(name)
            problems.append(f"'{name}'{_origin(name, keys, joined)}: source dtype "
                            f"{str(value.dtype).removeprefix('torch.')} cannot be copied into the model's "
                            f"{str(target.dtype).removeprefix('torch.')} without losing values; exclude it (source.exclude)")
            continue
        have, want = list(value.shape), list(target.shape)
        if value.shape != target.shape:
            shape_rule = next((r for r in shape_rules if r.pattern.search(name)), None)
            if shape_rule is not None:
                try:
                    value = apply_rule(shape_rule.rule, value, target.shape, indices=shape_rule.indices)
                except TransferError as exc:
                    failed.add(name)
                    problems.append((shape_rule.where, f"'{name}'{_origin(name, keys, joined)}: {exc}"))
                    continue
                steps.append(shape_rule.rule)
            elif on_mismatch == "error":
                failed.add(name)
                if joined is not None:  # the rule's result is wrong, not the checkpoint
                    problems.append((joined.rule.where, f"'{name}'{_origin(name, keys, joined)}: {joined.rule.kind} makes {format_shape(have)}, "
                                                        f"the model has {format_shape(want)}; check the parts, dim and sizes"))
                else:
                    problems.append(f"'{name}'{_origin(name, keys, joined)}: shape mismatch, source {format_shape(have)} vs model "
                                    f"{format_shape(want)}; add an adapt rule for it (source.adapt), exclude it "
                                    "(source.exclude), or set source.on_mismatch: skip")
                continue
            else:
                report.mismatched.append({"key": name, "source_key": " + ".join(keys), "source_shape": have,
                                          "model_shape": want})
                continue
        if steps:
            report.adapted.append(_adapted(name, keys, joined, steps, have, want, [list(state_dict[k].shape) for k in keys]))
        report.loaded.append(name)
        if name != key and joined is None:
            report.renamed[name] = key
        copies[name] = (target, value)

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
        fix = prefix_fix(report.unexpected, report.missing)
        advice = (f"the source's keys are the model's with {fix.describe()}: add source.rename: {fix.rule_json()}"
                  if fix else "rename source keys onto them (source.rename)")
        problems.append((("require_all",),
                         (f"{len(report.missing)} model tensors get no weights from the source: {', '.join(shown)}{more}; "
                          f"{advice} or set source.require_all: false")))
    if problems:
        raise TransferError(problems)

    report.excluded = [{"key": k, "renamed": mapping.renamed[k], "pattern": pattern, "by": by}
                       for k, (by, pattern) in sorted(mapping.excluded.items())]
    return report, copies


def _origin(name: str, keys: tuple[str, ...], joined: Joined | None) -> str:
    """`` (source 'a' + 'b')`` after a model key in a message, where its source keys differ from it."""
    return f" (source {' + '.join(repr(k) for k in keys)})" if joined or name != keys[0] else ""


def _adapted(name: str, keys: tuple[str, ...], joined: Joined | None, steps: list[str], have: list[int],
             want: list[int], shapes: list[list[int]]) -> dict[str, Any]:
    """The load report's ``adapted`` entry of a tensor made by fuse/split and/or a shape rule."""
    entry: dict[str, Any] = {"key": name, "rule": "+".join(steps), "source_shape": have, "model_shape": want}
    if joined is not None:  # which source tensors, and how: the report's reader must see the order
        entry.update(source_keys=list(keys), source_shapes=shapes, dim=joined.rule.dim)
        if joined.rule.kind == "split":
            entry["part"] = [joined.index, joined.count]
    if steps[-1] == "pos_embed":  # what was resampled: "14x14 -> 4x4 (+1 prefix token)"
        prefix, old_side, new_side = pos_embed_grids(have[1], want[1])
        entry["grid"] = f"{old_side}x{old_side} -> {new_side}x{new_side} (+{prefix} prefix token{'s' * (prefix != 1)})"
    return entry


def load_exported(model: nn.Module, state: Mapping[str, torch.Tensor], *, misfit: str) -> nn.Module:
    """``model`` in the dtype of ``state``'s floating tensors, with ``state`` loaded strictly, in eval mode:
    an export's weights on the architecture rebuilt for them.

    Raises:
        CheckpointError: ``{misfit}: {torch's reason}`` when the tensors do not fit (or none is floating).
    """
    try:
        model.to(next(v.dtype for v in state.values() if v.is_floating_point()))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, StopIteration) as exc:
        raise CheckpointError(f"{misfit}: {exc}") from exc
    return model.eval()
