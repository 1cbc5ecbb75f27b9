"""Reading recipe files so that every key and value remembers where it was written.

YAML goes through a ``SafeLoader`` subclass that builds plain data from the node tree and
records ``file:line:col`` of each node; JSON is parsed by :mod:`json` (so it means exactly
what JSON means) and the YAML composer, which reads JSON too, supplies the positions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml

from recipec._files import read_regular
from recipec.errors import RecipeError, format_path

RecipePath = tuple[str | int, ...]

_MAP, _SEQ, _MERGE = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:merge"
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


class _Loader(yaml.SafeLoader):
    """Builds plain data from YAML nodes, recording each node's position and refusing duplicate keys."""

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
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
            try:
                return self.construct_object(node, deep=True)
            except (ValueError, OverflowError) as exc:  # e.g. a timestamp with month 13
                raise RecipeError(f"{self._pos(node)}: cannot read {node.value!r}: {exc}") from None
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
        key = self.construct_object(node, deep=True) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(key, (str, int)) and not isinstance(key, bool):
            return key
        if report:
            text = node.value if isinstance(node, yaml.ScalarNode) else "a collection"
            message = f"key {text!r} is not text or a whole number; quote it if it is a name"
            self.problems.append((self._pos(node), f"{format_path(path) or '(top level)'}: {message}"))
        return None


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
