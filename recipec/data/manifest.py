"""Manifests: a CSV (``path,label[,split]``) or JSON-lines file that lists images, their labels and splits."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass

from recipec._files import read_regular
from recipec.errors import DatasetError
from recipec.data.examples import SHOWN_PROBLEMS, SPLITS, Examples, FileSamples, listed
from recipec.recipe.catalog import MANIFEST_MAX_BYTES, MANIFEST_SUFFIXES

__all__ = ["ManifestRow", "manifest_examples", "read_manifest"]



@dataclass(frozen=True)
class ManifestRow:
    """One row of a manifest: ``path`` resolved against the manifest's directory (an absolute path
    is kept as it is), its labels in the order written (none when the label is empty), its split
    (None when the row has none) and its line number in the file, for messages."""

    path: str
    labels: tuple[str, ...]
    split: str | None
    line: int = 0


def read_manifest(path: str | os.PathLike[str], *, at: tuple[str | int, ...] = ("root",)) -> list[ManifestRow]:
    """Read a manifest: a CSV file with the header ``path,label[,split]`` or JSON lines
    ``{"path": ..., "label": ...[, "split": ...]}`` (``.jsonl``).

    Paths are relative to the manifest's directory (absolute paths are taken as they are);
    ``label`` holds one label, several separated by ``;`` (a JSON line may give a list), or
    none (empty); ``split`` is ``train``, ``val``, ``test`` or empty. Other columns are ignored.
    Every listed file must exist, once.

    Returns:
        The rows in file order, blank lines left out.

    Args:
        path: the manifest file.
        at: the field the problems are located at (``("root",)``: the data's root, which the compiler
            relabels ``data.root``; ``()``: nowhere, for a file given on the command line).

    Raises:
        DatasetError: located at ``at``, one problem per bad line (``manifest.csv line 7: ...``):
            a missing column, an empty path, a file that is not there, an unknown split, a duplicate.

    Example:
        >>> rows = read_manifest("data/labels.csv")
        >>> rows[0]
        ManifestRow(path='/abs/data/images/0001.png', labels=('cat',), split='train', line=2)
    """
    file = os.fspath(path)
    name = os.path.basename(file)
    if not file.lower().endswith(MANIFEST_SUFFIXES):
        raise DatasetError([(at, f"{file}: a manifest is a .csv file (header path,label[,split]) or "
                                               "a .jsonl file (one JSON object per line); rename it so")])
    try:
        raw = read_regular(file, what="manifest", error=DatasetError, max_bytes=MANIFEST_MAX_BYTES)
    except DatasetError as exc:
        raise DatasetError([(at, p) for p in exc.problems]) from None
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's byte order mark is not part of the first column
    except UnicodeDecodeError as exc:
        raise DatasetError([(at, f"{file}: not UTF-8 text ({exc}); save the manifest as UTF-8")]) from None
    base = os.path.dirname(os.path.abspath(file))
    problems: list[str] = []
    entries = _jsonl_entries(text, name, problems) if file.lower().endswith((".jsonl", ".ndjson")) \
        else _csv_entries(text, name, problems)
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, where, label, split in entries:
        if not where.strip():
            problems.append(f"{name} line {line}: empty path")
            continue
        resolved = os.path.normpath(os.path.join(base, os.path.expanduser(where)))
        if split not in (None, *SPLITS):
            problems.append(f"{name} line {line}: unknown split {split!r}; use train, val, test or leave it empty")
        if not os.path.isfile(resolved):
            why = "is a directory" if os.path.isdir(resolved) else "no such file"
            problems.append(f"{name} line {line}: {where}: {why} ({resolved}; paths are relative to the manifest's "
                            f"directory {base}, absolute paths are taken as they are)")
        elif resolved in seen:
            problems.append(f"{name} line {line}: {where} is listed already on line {seen[resolved]}; list each "
                            "image once")
        seen.setdefault(resolved, line)
        labels = tuple(dict.fromkeys(part.strip() for part in label if part.strip()))
        rows.append(ManifestRow(resolved, labels, split, line))
    if not problems and not rows:
        problems.append(f"{file}: no rows; list one image per row (header path,label[,split])")
    if problems:
        problems.sort(key=lambda p: int(p[len(name) + 6:].split(":", 1)[0]) if p.startswith(f"{name} line ") else 0)
        shown = problems[:SHOWN_PROBLEMS]
        if len(problems) > SHOWN_PROBLEMS:
            shown.append(f"{name}: {len(problems) - SHOWN_PROBLEMS} more problem(s) not shown")
        raise DatasetError([(at, p) for p in shown])
    return rows


def _csv_entries(text: str, name: str, problems: list[str]) -> list[tuple[int, str, list[str], str | None]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        problems.append(f"{name}: empty; the first line is the header path,label[,split]")
        return []
    except csv.Error as exc:
        problems.append(f"{name} line 1: {exc}")
        return []
    missing = [c for c in ("path", "label") if c not in header]
    doubled = sorted({h for h in header if h and header.count(h) > 1})
    if missing or doubled:
        why = f"no column {' or '.join(missing)}" if missing else f"column {', '.join(doubled)} twice"
        problems.append(f"{name} line 1: the header {','.join(header)!r} has {why}; it must be path,label[,split]")
        return []
    at = {h: i for i, h in enumerate(header)}
    entries = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"{name} line {reader.line_num}: {exc}")
            break
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            problems.append(f"{name} line {reader.line_num}: {len(cells)} fields, the header has {len(header)}")
            continue
        split = cells[at["split"]].strip() if "split" in at else ""
        entries.append((reader.line_num, cells[at["path"]].strip(), cells[at["label"]].split(";"), split or None))
    return entries


def _jsonl_entries(text: str, name: str, problems: list[str]) -> list[tuple[int, str, list[str], str | None]]:
    entries = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            row = json.loads(content)
        except ValueError as exc:
            problems.append(f"{name} line {line}: not JSON ({exc})")
            continue
        if not isinstance(row, dict) or "path" not in row or "label" not in row:
            problems.append(f"{name} line {line}: needs an object with keys path and label (and split), got "
                            f"{content.strip()[:80]}")
            continue
        path, label, split = row["path"], row["label"], row.get("split")
        labels = [] if label is None else label if isinstance(label, list) else \
            label.split(";") if isinstance(label, str) else None
        if not isinstance(path, str) or labels is None or not all(isinstance(x, str) for x in labels) \
                or not (split is None or isinstance(split, str)):
            problems.append(f"{name} line {line}: path and split must be strings, label a string or a list of them")
            continue
        entries.append((line, path, labels, (split or "").strip() or None))
    return entries


def manifest_examples(path: str) -> Examples:
    """A multiclass dataset from a manifest: one label per row. Classes are the labels of the training
    rows (``train`` or no split), sorted; a val/test row with another label is an error."""
    rows = read_manifest(path)
    name = os.path.basename(path)
    problems = [f"{name} line {r.line}: {len(r.labels)} labels ({';'.join(r.labels) or 'empty'}); a multiclass "
                "dataset needs one label per row" for r in rows if len(r.labels) != 1]
    if problems:
        raise DatasetError([(("root",), p) for p in problems[:SHOWN_PROBLEMS]])
    names = sorted({r.labels[0] for r in rows if r.split in (None, "train")})
    to_index = {n: i for i, n in enumerate(names)}
    problems = [f"{name} line {r.line}: label {r.labels[0]!r} (split {r.split}) is on no training row "
                f"({listed(names) or 'there are none'}); the training rows fix the classes" for r in rows
                if r.labels[0] not in to_index]
    if problems:
        raise DatasetError([(("root",), p) for p in problems[:SHOWN_PROBLEMS]])
    samples = [(r.path, to_index[r.labels[0]]) for r in rows]
    with_split = any(r.split is not None for r in rows)
    origins = {s: f"manifest {path}, split column" for s in SPLITS if any(r.split == s for r in rows)}
    if not with_split:
        origins["train"] = f"manifest {path}"
    elif any(r.split is None for r in rows):
        origins["train"] = f"manifest {path}, " + ("split column and rows without a split" if "train" in origins
                                                    else "rows without a split")
    return Examples(None, [t for _, t in samples], names, FileSamples(samples, names),
                    [r.split or "train" for r in rows] if with_split else None, origins,
                    base=os.path.dirname(os.path.abspath(path)))
