"""Reading recipe files so that every key and value remembers where it was written.

YAML is read with the YAML 1.2 core schema, as editors read it (yaml-language-server, the
engine of VS Code's YAML extension, reads YAML 1.2 unless told otherwise): ``true``/``false``
are the only booleans, ``010`` is ten and ``0o10`` eight, and ``yes``, ``on``, ``1:30``,
``1_000`` or ``2024-01-01`` are text. PyYAML alone reads YAML 1.1, where each of those means
something else, and the same text must never mean two things in the editor and in recipec.
A loader built from PyYAML's parts with a 1.2 resolver builds plain data from the node tree
and records ``file:line:col`` of each node; :func:`dump_yaml` writes text both versions read
alike. JSON is parsed by :mod:`json` (so it means exactly what JSON means) and the YAML
composer, which reads JSON too, supplies the positions.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver, Resolver
from yaml.scanner import Scanner

from recipec._files import read_regular
from recipec.errors import RecipeError, format_path

RecipePath = tuple[str | int, ...]

_MAP, _SEQ, _MERGE = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:merge"
_STR, _INT, _FLOAT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_BOOL, _NULL = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"
_MAX_NODES = 50_000  # aliases can expand exponentially ("billion laughs")
MAX_RECIPE_BYTES = 4 << 20  # a recipe is a page of YAML; 4 MiB is far beyond any real one


class Position(NamedTuple):
    """Where a value was written: a file (or ``--set KEY=VALUE``) and, when known, line and column (1-based)."""

    file: str
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}:{self.col}"


@dataclass
class SourceMap:
    """Positions of the values (and of the mapping keys) of recipe data, by path.

    ``values[("optimizer", "lr")]`` is where the value of ``optimizer.lr`` starts;
    ``keys[("optimizer", "lr")]`` is where the key ``lr`` itself is written.
    """

    values: dict[RecipePath, Position] = field(default_factory=dict)
    keys: dict[RecipePath, Position] = field(default_factory=dict)

    def locate(self, path: RecipePath, *, key: bool = False) -> Position | None:
        """The position of ``path`` (of its key when ``key``), else of its nearest known parent."""
        path = tuple(path)
        if key and (found := _lookup(self.keys, path)) is not None:
            return found
        while (found := _lookup(self.values, path)) is None and path:
            path = path[:-1]
        return found

    def drop(self, path: RecipePath) -> None:
        """Forget ``path`` and everything below it."""
        n = len(path)
        for table in (self.values, self.keys):
            for p in [p for p in table if p[:n] == path]:
                del table[p]

    def assign(self, path: RecipePath, value: Any, position: Position) -> None:
        """Record that ``value``, all of it, now sits at ``path`` and was written at ``position``."""
        self.drop(path)
        for sub, in_mapping in iter_paths(value, path):
            self.values[sub] = position
            if in_mapping:
                self.keys[sub] = position
        if path:
            self.keys[path] = position


def _lookup(table: dict[RecipePath, Position], path: RecipePath) -> Position | None:
    if path in table:
        return table[path]
    # A JSON key "3" and the int 3 pydantic reports for it name the same value.
    wanted = tuple(map(str, path))
    return next((pos for p, pos in table.items() if len(p) == len(path) and tuple(map(str, p)) == wanted), None)


def iter_paths(value: Any, path: RecipePath = ()) -> Iterator[tuple[RecipePath, bool]]:
    """Every path inside ``value`` (itself included), with whether it is the value of a mapping key."""
    stack: list[tuple[Any, RecipePath, bool]] = [(value, path, False)]
    while stack:
        item, where, in_mapping = stack.pop()
        yield where, in_mapping
        if isinstance(item, dict):
            stack.extend((v, (*where, k), True) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, (*where, i), False) for i, v in enumerate(item))


def read_recipe_file(path: str) -> tuple[dict[str | int, Any], SourceMap]:
    """Read one recipe file (YAML, or JSON by its ``.json`` extension) into a mapping and its positions.

    Raises:
        RecipeError: the file is missing, unreadable, not UTF-8, not valid YAML/JSON, has
            duplicate or non-text keys, or is not a mapping at top level.
    """
    if os.path.isdir(path):
        raise RecipeError(f"{path}: is a directory, not a recipe file")
    # a FIFO or /dev/zero is refused before it can block or fill memory
    raw = read_regular(path, what="recipe", error=RecipeError, max_bytes=MAX_RECIPE_BYTES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "save the file as UTF-8") from None
    try:
        if path.lower().endswith(".json"):
            data, sources = _read_json(text, path)
        else:
            data, sources = _read_yaml(text, path)
    except RecursionError:
        raise RecipeError(f"{path}: nested too deeply to be a recipe") from None
    if not isinstance(data, dict):
        what = "an empty document" if data is None and () not in sources.values else _kind(data)
        raise RecipeError(f"{sources.locate(()) or path}: a recipe must be a mapping at top level "
                          f"(name: ..., model: ...), got {what}")
    return data, sources


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    return f"a number ({value})" if isinstance(value, (int, float)) else f"a {type(value).__name__} ({value})"


# The YAML 1.2 core schema (yaml.org/spec/1.2.2 section 10.3.2), as the `yaml` npm package under
# yaml-language-server reads it; any other plain scalar is text.
_CORE_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")
_CORE_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")
_CORE_NULL = re.compile(r"~|null|Null|NULL|")
_DIGITS = list("-+0123456789")


class _CoreResolver(BaseResolver):
    """Plain scalars resolved by the YAML 1.2 core schema (and ``<<`` merge keys, which editors expand too)."""


def _whole(regex: re.Pattern[str]) -> re.Pattern[str]:
    return re.compile(f"^(?:{regex.pattern})$")


# each with the first characters its scalars can start with
_CoreResolver.add_implicit_resolver(_BOOL, _whole(_CORE_BOOL), list("tTfF"))
_CoreResolver.add_implicit_resolver(_INT, _whole(_CORE_INT), _DIGITS)
_CoreResolver.add_implicit_resolver(_FLOAT, _whole(_CORE_FLOAT), [*_DIGITS, "."])
_CoreResolver.add_implicit_resolver(_NULL, _whole(_CORE_NULL), ["~", "n", "N", ""])
_CoreResolver.add_implicit_resolver(_MERGE, re.compile(r"^(?:<<)$"), ["<"])


class _CoreConstructor(SafeConstructor):
    """Scalars as the core schema means them; an explicit tag (``!!int 010``) follows the same rules."""

    def _text(self, node: yaml.Node, pattern: re.Pattern[str], what: str) -> str:
        value = self.construct_scalar(node)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ConstructorError(None, None, f"{value!r} is not {what} in YAML 1.2", node.start_mark)
        return value

    def construct_core_int(self, node: yaml.Node) -> int:
        value = self._text(node, _CORE_INT, "a whole number")
        base = {"0o": 8, "0x": 16}.get(value[:2], 10)
        return int(value[2:] if base != 10 else value, base)

    def construct_core_float(self, node: yaml.Node) -> float:
        value = self._text(node, _CORE_FLOAT, "a number")
        if value.lstrip("+-").lower() == ".inf":
            return -math.inf if value.startswith("-") else math.inf
        return math.nan if value.lower() == ".nan" else float(value)

    def construct_core_bool(self, node: yaml.Node) -> bool:
        return self._text(node, _CORE_BOOL, "true or false").lower() == "true"

    def construct_core_null(self, node: yaml.Node) -> None:
        self._text(node, _CORE_NULL, "null")


_CoreConstructor.add_constructor(_INT, _CoreConstructor.construct_core_int)
_CoreConstructor.add_constructor(_FLOAT, _CoreConstructor.construct_core_float)
_CoreConstructor.add_constructor(_BOOL, _CoreConstructor.construct_core_bool)
_CoreConstructor.add_constructor(_NULL, _CoreConstructor.construct_core_null)
_SCALAR_TAGS = (_STR, _INT, _FLOAT, _BOOL, _NULL)


class _Loader(Reader, Scanner, Parser, Composer, _CoreConstructor, _CoreResolver):
    """Builds plain data from YAML nodes, recording each node's position and refusing duplicate keys."""

    def __init__(self, text: str, file: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _CoreConstructor.__init__(self)
        _CoreResolver.__init__(self)
        self.file = file
        self.sources = SourceMap()
        self.problems: list[tuple[Position, str]] = []
        self._nodes = 0
        self._open: set[int] = set()

    def _pos(self, node: yaml.Node) -> Position:
        return Position(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: RecipePath) -> Any:
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise RecipeError(f"{self.file}: too large once aliases are expanded (over {_MAX_NODES} values)")
        self.sources.values[path] = self._pos(node)
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:  # !!timestamp, !!binary, !custom: not plain data
                raise RecipeError(f"{self._pos(node)}: unsupported tag {node.tag!r}; write a plain value")
            try:
                return self.construct_object(node, deep=True)
            except ValueError as exc:  # a whole number of over 4300 digits
                raise RecipeError(f"{self._pos(node)}: cannot read {node.value[:40]!r}: {exc}") from None
        if id(node) in self._open:
            raise RecipeError(f"{self._pos(node)}: an alias refers to a node that contains it")
        if node.tag not in (_MAP, _SEQ):
            raise RecipeError(f"{self._pos(node)}: unsupported tag {node.tag!r}; write a plain mapping or list")
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self._build_mapping(node, path)
        finally:
            self._open.discard(id(node))

    def _build_mapping(self, node: yaml.MappingNode, path: RecipePath) -> dict[str | int, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag != _MERGE and (key := self._key(key_node, path)) is not None:
                if key in first:
                    message = f"duplicate key {key!r} (first at line {first[key]}); keep only one"
                    self.problems.append((self._pos(key_node), f"{format_path((*path, key))}: {message}"))
                first.setdefault(key, key_node.start_mark.line + 1)
        self.flatten_mapping(node)  # YAML merge keys (<<: *base); explicit keys come last and win
        result: dict[str | int, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path, report=False)
            if key is None:
                continue
            if key in result:
                self.sources.drop((*path, key))
            at = (*path, key)  # a name, not a starred subscript: mypy reads that as Python 3.11 syntax
            self.sources.keys[at] = self._pos(key_node)
            result[key] = self.build(value_node, at)
        return result

    def _key(self, node: yaml.Node, path: RecipePath, report: bool = True) -> str | int | None:
        key = None
        if isinstance(node, yaml.ScalarNode) and node.tag in _SCALAR_TAGS:
            try:
                key = self.construct_object(node, deep=True)
            except ValueError:  # a whole number of over 4300 digits
                key = None
        if isinstance(key, float) and key.is_integer():
            key = int(key)  # `2.0:` is the key 2, as an editor's String(2.0) is "2"
        if isinstance(key, (str, int)) and not isinstance(key, bool):
            return key
        if report:
            text = node.value if isinstance(node, yaml.ScalarNode) else "a collection"
            message = f"key {text!r} is not text or a whole number; quote it if it is a name"
            self.problems.append((self._pos(node), f"{format_path(path) or '(top level)'}: {message}"))
        return None


class _Dumper(yaml.SafeDumper):
    """Writes text that YAML 1.1 and 1.2 readers read alike: a string either would take for
    something else (``yes``, ``1_000``, ``0o10``, ``1e3``) is quoted."""

    yaml_implicit_resolvers: ClassVar[dict[Any, list[tuple[str, re.Pattern[str]]]]] = {
        first: [*_CoreResolver.yaml_implicit_resolvers.get(first, []), *Resolver.yaml_implicit_resolvers.get(first, [])]
        for first in {*_CoreResolver.yaml_implicit_resolvers, *Resolver.yaml_implicit_resolvers}}


def dump_yaml(data: Any) -> str:
    """Plain data as block-style YAML that reads back, in recipec or any YAML reader, as ``data``."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=10**9)


def parse_value(text: str, label: str) -> Any:
    """A YAML value written on the command line, read like a file (no duplicate keys, no recursive aliases).

    Raises:
        RecipeError: ``label: value:line:col: ...`` when it is not valid YAML.
    """
    try:
        return _read_yaml(text, "value")[0]
    except RecipeError as exc:
        raise RecipeError([f"{label}: {problem}" for problem in exc.problems]) from None
    except RecursionError:
        raise RecipeError(f"{label}: nested too deeply") from None


def read_embedded(text: str, origin: str) -> Any:
    """Recipe text that came inside a file recipec did not get from the user (an export's metadata,
    a training state, a run directory's recipe.yaml), read with a recipe file's limits: plain
    mappings and lists only, no tags, no self-referring or exploding aliases, no duplicate keys.

    Raises:
        RecipeError: ``origin: ...`` when the text is not such YAML.
    """
    if not isinstance(text, str):
        raise RecipeError(f"{origin}: the recipe is a {type(text).__name__}, not text")
    try:
        return _read_yaml(text, origin)[0]
    except RecursionError:
        raise RecipeError(f"{origin}: the recipe is nested too deeply") from None


def _read_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    try:
        loader = _Loader(text, file)  # checks for unprintable characters already
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.build(node, ())
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise RecipeError(_yaml_problem(exc, file, text)) from None
    if loader.problems:
        raise RecipeError([f"{where}: {text}" for where, text in sorted(loader.problems)])
    return data, loader.sources


def _yaml_problem(exc: yaml.YAMLError, file: str, text: str) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        message = exc.problem or "invalid YAML"
        if exc.context and message.startswith("but "):  # "expected a single document ..., but found another"
            message = f"{exc.context}, {message}"
        elif exc.context:
            at = f" at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
            message = f"{message} ({exc.context}{at})"
        return f"{file}:{mark.line + 1}:{mark.column + 1}: {message}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - text.rfind("\n", 0, exc.position)
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return f"{file}:{line}:{col}: character {char!r} is not allowed in a YAML file"
    return f"{file}: {exc}"


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs, duplicates kept, so they can be reported."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; write a number or null")


def _read_json(text: str, file: str) -> tuple[Any, SourceMap]:
    try:
        data = json.loads(text, object_pairs_hook=_Pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{file}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise RecipeError(f"{file}: {exc}") from None
    try:
        # JSON strings cannot hold a raw tab, so tabs are whitespace and spaces keep every column.
        node = yaml.compose(text.replace("\t", " "), Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        node = None  # still valid JSON: positions fall back to the file alone
    sources = SourceMap()
    problems: list[str] = []
    result = _locate_json(data, node, (), file, sources, problems)
    if problems:
        raise RecipeError(problems)
    return result, sources


def _locate_json(value: Any, node: yaml.Node | None, path: RecipePath, file: str,
                 sources: SourceMap, problems: list[str]) -> Any:
    def pos(n: yaml.Node | None) -> Position:
        return Position(file, n.start_mark.line + 1, n.start_mark.column + 1) if n is not None else Position(file)

    sources.values[path] = pos(node)
    if isinstance(value, _Pairs):
        pairs = node.value if isinstance(node, yaml.MappingNode) and len(node.value) == len(value) else None
        result: dict[str | int, Any] = {}
        for i, (key, item) in enumerate(value):
            key_node, value_node = pairs[i] if pairs else (None, None)
            at = (*path, key)
            if key in result:
                first = sources.keys[at].line
                problems.append(f"{pos(key_node)}: {format_path(at)}: duplicate key {key!r}"
                                f"{f' (first at line {first})' if first else ''}; keep only one")
                sources.drop(at)
            sources.keys[at] = pos(key_node)
            result[key] = _locate_json(item, value_node, at, file, sources, problems)
        return result
    if isinstance(value, list):
        items = node.value if isinstance(node, yaml.SequenceNode) and len(node.value) == len(value) else None
        return [_locate_json(v, items[i] if items else None, (*path, i), file, sources, problems)
                for i, v in enumerate(value)]
    return value
