"""Rename and filter source keys by regex (:func:`map_keys`): key names only, no tensors.

Rules run one at a time over all keys; the literal a pattern requires (read with ``re``'s own
parser) skips the keys it cannot match, and a bare-literal rule becomes one ``str.replace``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any, NamedTuple

from recipec.errors import Problem, RecipePath, TransferError

try:
    from re import _parser as _sre_parse  # type: ignore[attr-defined]  # Python >= 3.11
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]

__all__ = ["KeyMapping", "PrefixFix", "map_keys", "prefix_fix"]

_SAMPLE = 3
# References re.sub resolves the same way at any position: \1..\99 not followed by a digit, \g<...>.
_TEMPLATE_REF = re.compile(r"\\(?:([1-9][0-9]?)(?![0-9])|g<([^>]*)>)")


@dataclass(frozen=True)
class KeyMapping:
    """What renaming and filtering do to a list of source keys (no tensors involved).

    Attributes:
        renamed: every source key -> its name after the rename rules, in source order.
        excluded: source key -> ``("exclude", pattern)``, or ``("include", None)`` when include
            patterns were given and none matched.
        kept: renamed key -> source key, for every key that is not excluded (the first one
            where several source keys collide).
        collisions: renamed key -> the kept source keys (two or more) renamed to it.
        unmatched: ``(list, index, pattern)`` of every pattern that matched no key.
        problems: one located problem per unmatched pattern and per collision.
    """

    renamed: dict[str, str]
    excluded: dict[str, tuple[str, str | None]]
    kept: dict[str, str]
    collisions: dict[str, list[str]]
    unmatched: list[tuple[str, int, str]]
    problems: list[Problem]


def _compile(patterns: Iterable[str], field: str, problems: list[Problem]) -> list[re.Pattern[str]]:
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as exc:
            problems.append(((field, i), f"{pattern!r} is not a valid regular expression: {exc}"))
            compiled.append(re.compile(r"(?!)"))
    return compiled


class _Literal(NamedTuple):
    """A substring every match of a pattern contains, and where."""

    text: str
    at: str  # "start" (after ^ or \A), "end" (before $ or \Z) or "any"
    whole: bool  # the pattern is nothing but this literal and its anchor


def _literal(pattern: re.Pattern[str]) -> _Literal:
    """Read the top-level sequence of ``pattern`` for a literal run it requires.

    A ``str`` test costs a fraction of a regex call, so names without the literal are never
    searched, and a pattern that is only a literal becomes ``str.replace``. An alternation at
    the top level yields nothing, which keeps this sound: a name without the literal cannot match.
    """
    none = _Literal("", "any", False)
    if pattern.flags & (re.IGNORECASE | re.MULTILINE):
        return none
    try:
        items = list(_sre_parse.parse(pattern.pattern, pattern.flags).data)
    except (re.error, AttributeError, TypeError, ValueError):  # a private parser may change; no literal is sound
        return none
    parser = _sre_parse
    starts = bool(items) and items[0] in ((parser.AT, parser.AT_BEGINNING), (parser.AT, parser.AT_BEGINNING_STRING))
    ends = bool(items) and items[-1] in ((parser.AT, parser.AT_END), (parser.AT, parser.AT_END_STRING))
    runs, run = [], ""
    for op, value in items + [(None, None)]:
        if op == parser.LITERAL:
            run += chr(value)
        else:
            runs.append(run)
            run = ""
    if starts and runs[1]:  # runs[0] is the empty run before the anchor
        return _Literal(runs[1], "start", len(runs[1]) == len(items) - 1)
    if ends and len(items) > 1 and runs[-2] and len(runs[-2]) == len(items) - 1:
        return _Literal(runs[-2], "end", True)
    text = max(runs, key=len)
    return _Literal(text, "any", bool(text) and len(text) == len(items))


class _Names:
    """Names being renamed: one string of them all, or a list, whichever the next rule needs.

    A rule that is a bare literal (``^module\\.``, ``\\.attn\\.q_proj\\.``) with a plain
    replacement is one ``str.replace`` on the joined string (exact: no literal crosses the
    separator); other rules see the list, and only the names that hold the rule's literal.
    """

    SEP = "\x00"

    def __init__(self, names: list[str]) -> None:
        self._list: list[str] | None = names
        self._text: str | None = None
        self._joinable = bool(names) and self.SEP not in "".join(names)

    @property
    def names(self) -> list[str]:
        if self._list is None:
            self._list = self.text[1:-1].split(self.SEP)
        return self._list

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.SEP + self.SEP.join(self.names) + self.SEP
        return self._text

    def candidates(self, literal: _Literal) -> list[int] | None:
        """Indices of the names that hold the literal (all a pattern may match); None: every name."""
        if not literal.text:
            return None
        if self._joinable and literal.text not in self.text:
            return []
        test = str.startswith if literal.at == "start" else str.__contains__
        return list(compress(range(len(self.names)), map(test, self.names, repeat(literal.text))))

    def apply(self, pattern: re.Pattern[str], replacement: Any) -> bool:
        """``re.sub(pattern, replacement, name)`` for every name; True if it matched any."""
        literal, sep = _literal(pattern), self.SEP
        plain = isinstance(replacement, str) and "\\" not in replacement and sep not in replacement
        if literal.whole and plain and self._joinable and sep not in literal.text and (
                literal.at != "end" or "\n" not in self.text):
            needle, new = {"start": (sep + literal.text, sep + replacement), "any": (literal.text, replacement),
                           "end": (literal.text + sep, replacement + sep)}[literal.at]
            if needle not in self.text:
                return False
            self._text, self._list = self.text.replace(needle, new), None
            return True
        candidates = self.candidates(literal)
        names = self.names
        before = names if candidates is None else [names[j] for j in candidates]
        after = list(map(pattern.sub, repeat(_replacer(pattern, replacement)), before))
        if candidates is None:
            self._list = after
        else:
            for j, name in zip(candidates, after):
                names[j] = name
        self._text = None
        self._joinable = self._joinable and sep not in "".join(after)
        return after != before or any(map(pattern.search, before))  # a match may leave a name as it was

    def hits(self, pattern: re.Pattern[str]) -> list[int]:
        """Indices of the names ``re.search(pattern, name)`` finds something in."""
        literal = _literal(pattern)
        candidates = self.candidates(literal)
        if candidates is None:
            return list(compress(range(len(self.names)), map(pattern.search, self.names)))
        if literal.whole and literal.at != "end":
            return candidates
        return list(compress(candidates, map(pattern.search, [self.names[i] for i in candidates])))


def _replacer(pattern: re.Pattern[str], replacement: str) -> Any:
    """``replacement``, or a faster callable giving exactly what ``re.sub`` would give.

    Python 3.11 expands a template with group references in Python code for every match. A
    template made only of text and ``\\N``/``\\g<name>`` references becomes a ``str.format``
    call instead; any other escape is left to ``re``.
    """
    if not isinstance(replacement, str) or "\\" not in replacement:
        return replacement
    parts, position = [], 0
    try:
        for ref in _TEMPLATE_REF.finditer(replacement):
            text = replacement[position:ref.start()]
            name = ref.group(1) or ref.group(2)
            index = int(name) if name.isascii() and name.isdigit() else pattern.groupindex[name]
            if "\\" in text or index > pattern.groups:
                return replacement
            parts += [text.replace("{", "{{").replace("}", "}}"), f"{{{index}}}"]
            position = ref.end()
    except KeyError:
        return replacement
    tail = replacement[position:]
    if "\\" in tail:
        return replacement
    expand = ("".join(parts) + tail.replace("{", "{{").replace("}", "}}")).format
    # Group 0 first, then every group with "" for those that did not participate, as re does.
    return lambda match: expand(match.group(), *match.groups(""))


def _sample(keys: Sequence[str]) -> str:
    return ", ".join(keys[:_SAMPLE]) + (", ..." if len(keys) > _SAMPLE else "") if keys else "(no keys at all)"


def dead_pattern(path: RecipePath, pattern: str, what: str, keys: Sequence[str], later: bool = False) -> Problem:
    if later:  # a rename rule after others sees the keys as those left them
        return path, (f"pattern '{pattern}' matched no {what} after the rename rules before it; "
                      f"at that point {what}s look like: {_sample(keys)}")
    return path, f"pattern '{pattern}' matched no {what}; {what}s look like: {_sample(keys)}"


def map_keys(
    source_keys: Iterable[str],
    *,
    rename: Sequence[Sequence[str]] = (),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> KeyMapping:
    """Rename and filter source keys, and find patterns that match nothing.

    Every rename rule is applied with ``re.sub`` to every key, in order; a rule *matches* when
    ``re.search`` finds it in some key at its point in the chain. ``exclude`` and ``include``
    are searched in the renamed key; the first exclude pattern that matches drops the key; with
    include patterns, a key none of them matches is dropped too.

    Args:
        source_keys: the source state dict's keys.
        rename: ordered ``(pattern, replacement)`` pairs (capture groups allowed).
        include: regexes; empty means every key.
        exclude: regexes.

    Returns:
        The mapping; patterns that matched nothing and keys renamed onto one name are listed
        in ``problems`` (:func:`apply_transfer` raises them), not raised.

    Raises:
        TransferError: a pattern or replacement that is not valid.
    """
    keys = list(source_keys)
    problems: list[Problem] = []
    rules = [tuple(rule) for rule in rename]
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            problems.append((("rename", i), f"a rename rule is [pattern, replacement], got {list(rule)!r}"))
    rules = [rule if len(rule) == 2 else ("(?!)", "") for rule in rules]
    patterns = _compile([p for p, _ in rules], "rename", problems)
    excludes, includes = _compile(exclude, "exclude", problems), _compile(include, "include", problems)
    replacements = [r for _, r in rules]
    for i, (pattern, replacement) in enumerate(zip(patterns, replacements)):
        try:
            pattern.sub(replacement, "")  # parses the template even without a match
        except (re.error, IndexError, TypeError) as exc:
            problems.append((("rename", i), f"replacement {replacement!r} is not valid for '{pattern.pattern}': {exc}"))
    if problems:
        raise TransferError(problems)

    # One rule at a time over every key (not one key through every rule): the loops run in C
    # and a literal test skips the keys a rule cannot match. Same result as the per-key chain.
    names = _Names(list(keys))
    unmatched: list[tuple[str, int, str]] = []
    for i, (pattern, replacement) in enumerate(zip(patterns, replacements)):
        if not names.apply(pattern, replacement):
            unmatched.append(("rename", i, pattern.pattern))
            sample = keys[:_SAMPLE]
            for earlier, earlier_replacement in zip(patterns[:i], replacements[:i]):
                sample = [earlier.sub(earlier_replacement, k) for k in sample]
            problems.append(dead_pattern(("rename", i), pattern.pattern, "source key",
                                  sample + keys[_SAMPLE:_SAMPLE + 1], later=i > 0))

    dropped: dict[int, tuple[str, str | None]] = {}
    included: set[int] = set()
    for field, compiled in (("include", includes), ("exclude", excludes)):
        for i, pattern in enumerate(compiled):
            hits = names.hits(pattern)
            if not hits:
                unmatched.append((field, i, pattern.pattern))
                problems.append(dead_pattern((field, i), pattern.pattern, "renamed key", names.names))
            if field == "exclude":
                for j in hits:
                    dropped.setdefault(j, ("exclude", pattern.pattern))
            else:
                included.update(hits)
    if includes:
        for j in sorted(set(range(len(keys))) - included - set(dropped)):
            dropped[j] = ("include", None)

    renamed = dict(zip(keys, names.names))
    excluded = {keys[j]: dropped[j] for j in sorted(dropped)}
    kept_mask = bytearray(b"\x01") * len(keys)
    for j in dropped:
        kept_mask[j] = 0
    kept_keys = list(compress(keys, kept_mask))
    kept_names = list(compress(names.names, kept_mask))
    kept = dict(zip(kept_names, kept_keys))
    collisions: dict[str, list[str]] = {}
    if len(kept) != len(kept_keys):  # rare: group by name to find the culprits; the first key wins
        groups: dict[str, list[str]] = {}
        for name, key in zip(kept_names, kept_keys):
            groups.setdefault(name, []).append(key)
        collisions = {name: keys_ for name, keys_ in groups.items() if len(keys_) > 1}
        kept = {name: keys_[0] for name, keys_ in groups.items()}
    for name, keys_ in sorted(collisions.items()):
        both = " and ".join(f"'{k}'" for k in keys_)
        problems.append((("rename",), (f"source keys {both} are all renamed to '{name}'; "
                                               "change the rename rules or exclude all but one")))
    return KeyMapping(renamed, excluded, kept, collisions, unmatched, problems)


@dataclass(frozen=True)
class PrefixFix:
    """The one rename that puts source keys onto model keys that differ from them by a prefix:
    ``strip`` it (a Lightning module's ``model.``, DDP's ``module.``), or ``add`` it."""

    strip: str = ""
    add: str = ""

    def rule(self) -> tuple[str, str]:
        """The ``(pattern, replacement)`` of ``source.rename``."""
        return ("^" + re.escape(self.strip), "") if self.strip else ("^", self.add.replace("\\", "\\\\"))

    def rule_json(self) -> str:
        """The rule as a recipe writes it: ``[["^model\\\\.", ""]]``."""
        return json.dumps([list(self.rule())])

    def describe(self) -> str:
        return f"'{self.strip}' in front" if self.strip else f"'{self.add}' left out in front"


def prefix_fix(source_keys: Collection[str], missing: Collection[str]) -> PrefixFix | None:
    """The prefix that, stripped from source keys or added to them, gives every ``missing`` model key; or None.

    Prefixes end at a dot: ``model.`` + ``layer1.0.conv1.weight``.
    """
    if not missing or not source_keys:
        return None
    source = set(source_keys)
    first = min(missing)
    for key in source:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            if all(prefix + name in source for name in missing):
                return PrefixFix(strip=prefix)
        if first.endswith("." + key):
            prefix = first[: -len(key)]
            if all(name.startswith(prefix) and name[len(prefix):] in source for name in missing):
                return PrefixFix(add=prefix)
    return None
