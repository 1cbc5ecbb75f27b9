"""``.pt2`` files (``torch.export``): written with the metadata as extra files, read without running their Python.

``torch.export.load`` trusts its file: it unpickles with ``weights_only=False`` where a payload says
``use_pickle``, falls back to a full unpickle when a weights-only load fails, compiles the graph's
``guards_code`` (Python source) into a function, resolves call targets by attribute path under
``torch`` and hands symbolic expressions to ``sympy.sympify`` (an ``eval``). :func:`check` reads the
archive first and refuses every one of those doors, so :func:`load` deserializes only a graph of
ATen/prims operators, raw tensor payloads and JSON, plus sample inputs that unpickle with
``weights_only=True``:

- members: only the names ``torch.export.save`` writes for one model (no legacy ``version`` layout,
  no AOTInductor shared libraries);
- payload configs: no ``use_pickle`` entry; constants are tensors only (no script or opaque objects);
- the graph: ``guards_code`` empty; every ``target`` an ``aten``/``prims`` operator, a ``torch.sym_*``
  function or arithmetic from ``operator``; every ``expr_str`` built from integers, ``+ - * / % ( ) ,``,
  symbols such as ``s31`` and sympy's constructor names;
- sample inputs: loadable by ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from recipec._atomic import atomic_write_bytes
from recipec._files import check_regular
from recipec.errors import CheckpointError

__all__ = ["SUFFIX", "check", "describe_pt2", "load", "save"]

SUFFIX = ".pt2"
_MODEL = "model"
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
          f"models/{_MODEL}.json", f"data/weights/{_MODEL}_weights_config.json",
          f"data/constants/{_MODEL}_constants_config.json", f"data/sample_inputs/{_MODEL}.pt"}
_PAYLOAD = re.compile(r"data/(weights/weight|constants/tensor)_\d+")
_EXTRA = re.compile(r"extra/[A-Za-z0-9._-]+")
_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|torch\.sym_[a-z_]+|"
                     r"_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|eq|ne|lt|le|gt|ge|and_|or_)")
_EXPR_NAMES = {"Symbol", "Integer", "positive", "integer", "True", "False", "Mod", "FloorDiv", "CeilToInt",
               "FloorToInt", "Max", "Min", "Mul", "Add", "Pow", "PythonMod", "CleanDiv", "IntTrueDiv", "TruncToInt"}
_EXPR = re.compile(r"[A-Za-z0-9_\s+\-*/%(),=']*")


def save(program: Any, path: str | os.PathLike[str], *, metadata: Mapping[str, str]) -> Path:
    """Write an ``ExportedProgram`` atomically, ``metadata`` (str -> str) as extra files named by its keys."""
    target = Path(path)
    buffer = io.BytesIO()  # torch names the archive after a file's stem and warns about a temporary's suffix
    torch.export.save(program, buffer, extra_files=dict(metadata))
    atomic_write_bytes(target, buffer.getvalue())
    return target


def check(path: str | os.PathLike[str]) -> dict[str, str]:
    """Refuse a ``.pt2`` file :func:`load` would have to run Python from (see the module docstring).

    Returns:
        Its extra files (the metadata of a recipec export), name -> text.

    Raises:
        CheckpointError: not a readable ``torch.export`` archive, or one with any of the refused parts.
    """
    file = Path(path)
    check_regular(file, what="pt2 file", error=CheckpointError)
    try:
        with zipfile.ZipFile(file) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            root = names[0].split("/", 1)[0] + "/" if names else ""
            inside = {n.removeprefix(root): n for n in names if n.startswith(root)}
            problems = [f"{file}: {n.removeprefix(root)!r} is not part of a torch.export archive recipec reads"
                        for n in names if not n.startswith(root) or not _allowed(n.removeprefix(root))]
            if "archive_format" not in inside or archive.read(inside["archive_format"]).strip() != b"pt2":
                problems.append(f"{file}: not a torch.export (pt2) archive")
            if problems:
                raise CheckpointError(problems[:10])
            problems += _payload_problems(file, archive, inside)
            problems += _graph_problems(file, json.loads(archive.read(inside[f"models/{_MODEL}.json"])))
            try:
                torch.load(io.BytesIO(archive.read(inside[f"data/sample_inputs/{_MODEL}.pt"])), weights_only=True)
            except Exception as exc:
                problems.append(f"{file}: its sample inputs are not plain tensors ({str(exc).splitlines()[0]})")
            if problems:
                raise CheckpointError([*problems[:10], "this .pt2 needs code run from the file to load; recipec "
                                                       "reads only plain torch.export graphs"])
            return {n.removeprefix("extra/"): archive.read(full).decode("utf-8")
                    for n, full in inside.items() if n.startswith("extra/")}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: not a readable torch.export (pt2) archive ({exc})") from exc


def load(path: str | os.PathLike[str]) -> tuple[Any, dict[str, str]]:
    """The ``ExportedProgram`` of a checked ``.pt2`` file (:func:`check`) and its metadata.

    Raises:
        CheckpointError: refused by :func:`check`, or torch cannot deserialize it.
    """
    metadata = check(path)
    logger = logging.getLogger("torch")  # torch logs what it cannot read before raising; the error says it
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        program = torch.export.load(os.fspath(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: torch cannot load this .pt2 ({str(exc).splitlines()[0]})") from exc
    finally:
        logger.setLevel(level)
    return program, metadata


def describe_pt2(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a ``.pt2`` holds, as ``recipec inspect`` shows it: inputs, operators, tensors and metadata.

    Returns:
        ``path``, ``format`` (``"pt2"``), ``inputs`` (each ``{name, shape}``, a symbolic dimension as its
        name), ``operators`` (name -> count), ``tensors`` (count), ``total_bytes``, ``parameters`` (elements),
        ``keys`` (every ``{key, shape, dtype}``) and ``metadata``.
    """
    program, metadata = load(path)
    graph = program.graph_module.graph
    operators: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_function":
            operators[str(node.target)] = operators.get(str(node.target), 0) + 1
    user_inputs = set(program.graph_signature.user_inputs)
    inputs = [{"name": node.name, "shape": [str(d) if not isinstance(d, int) else d
                                            for d in node.meta["val"].shape]}
              for node in graph.nodes if node.op == "placeholder" and node.name in user_inputs]
    state = dict(_tensors(program))
    return {"path": str(path), "format": "pt2", "inputs": inputs, "operators": dict(sorted(operators.items())),
            "tensors": len(state), "total_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "parameters": sum(t.numel() for t in state.values()),
            "keys": [{"key": k, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                     for k, t in state.items()],
            "metadata": metadata}


def _tensors(program: Any) -> Iterator[tuple[str, torch.Tensor]]:
    yield from program.state_dict.items()
    yield from ((k, v) for k, v in program.constants.items() if isinstance(v, torch.Tensor))


def _allowed(name: str) -> bool:
    return name in _FIXED or bool(_PAYLOAD.fullmatch(name) or _EXTRA.fullmatch(name))


def _payload_problems(file: Path, archive: zipfile.ZipFile, inside: dict[str, str]) -> list[str]:
    problems = []
    for kind in ("weights", "constants"):
        config = json.loads(archive.read(inside[f"data/{kind}/{_MODEL}_{kind}_config.json"])).get("config", {})
        for key, entry in config.items():
            if entry.get("use_pickle") or not _PAYLOAD.fullmatch(f"data/{kind}/{entry.get('path_name', '')}"):
                problems.append(f"{file}: {kind} {key!r} is a pickled object ({entry.get('path_name')})")
    return problems


def _graph_problems(file: Path, model: dict[str, Any]) -> list[str]:
    problems = [f"{file}: carries Python guard code ({len(model['guards_code'])} lines)"] if model.get("guards_code") else []
    for key, value in _strings(model):
        if key == "target" and not _TARGET.fullmatch(value):
            problems.append(f"{file}: calls {value!r}, which is not an ATen/prims operator")
        elif key == "expr_str" and not _plain_expression(value):
            problems.append(f"{file}: a symbolic shape {value[:80]!r} is not a plain integer expression")
    return problems


def _plain_expression(text: str) -> bool:
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)
    return bool(_EXPR.fullmatch(text)) and all(n in _EXPR_NAMES or re.fullmatch(r"[a-z]\d+", n) for n in names)


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node
