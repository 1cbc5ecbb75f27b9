"""``recipec convert``: a checkpoint in another format, dtype or layout, its metadata carried along.

Sources are whatever :func:`recipec.weights.formats.load` reads (torch files, recipec training
states, Lightning and timm checkpoints, safetensors, sharded safetensors and ``.bin`` indexes, DCP
directories, ONNX initializers); its keys can be renamed on the way (``--rename``, ``--strip-prefix``,
and a ``--recipe``'s own ``source:`` section for the checkpoint it names); targets are torch, safetensors (optionally sharded) and
ONNX. An export's recipe and provenance stay in the output, so the result is as
self-describing as its source, plus a ``recipec.converted_from`` entry naming the source file
and its SHA-256. ONNX needs the architecture: the checkpoint's own recipe, or ``recipe``.

Two routes, one result. To safetensors, with no architecture to rebuild, the tensors' bytes are
copied from file to file without importing torch (:mod:`recipec.weights.raw`; about as fast as
hashing the source); everything else, and any source that route declines, goes through torch
(:mod:`recipec.convert.tensors`). Beside it: :mod:`recipec.convert.metadata` (what the output
carries about its source) and :mod:`recipec.convert.onnx` (the architecture rebuilt from a recipe,
exported to ONNX and verified).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from recipec._files import check_output, require_path, same_file
from recipec.convert.metadata import Sha256InBackground as _Sha256InBackground
from recipec.convert.metadata import carried_metadata as _carried_metadata
from recipec.convert.metadata import converted_from as _converted_from
from recipec.convert.metadata import moved_recipe as _moved_recipe
from recipec.errors import CheckpointError, TransferError, warn
from recipec.provenance import RECIPE_KEY
from recipec.weights import raw
from recipec.weights._keys import map_keys

if TYPE_CHECKING:
    from recipec.recipe.spec import Recipe
    from recipec.weights.formats import Checkpoint

__all__ = ["CONVERTED_FROM_KEY", "FORMATS", "convert"]

INDEX_SUFFIX = raw.INDEX_SUFFIX

FORMATS = ("torch", "safetensors", "onnx")
CONVERTED_FROM_KEY = "recipec.converted_from"
_DTYPES = ("float16", "bfloat16", "float32")
_SUFFIXES = {".safetensors": "safetensors", ".onnx": "onnx", **dict.fromkeys(raw.TORCH_SUFFIXES, "torch")}
T = TypeVar("T")


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str | None = None,
    dtype: str | None = None,
    recipe: str | os.PathLike[str] | None = None,
    shard_size: int | str | None = None,
    allow_globals: Sequence[str] = (),
    trust_factories: Sequence[str] = (),
    quantize: str | None = None,
    state_dict_key: str = "auto",
    rename: Sequence[Sequence[str]] = (),
    strip_prefix: str | None = None,
) -> list[Path]:
    """Convert a checkpoint; every file is written atomically and nothing is written on error.

    Args:
        src: a torch file (a training state's ``model`` weights, a Lightning ``.ckpt``, a timm
            ``.pth.tar`` included), a ``.safetensors`` file, a sharded ``*.safetensors.index.json``
            or ``*.bin.index.json``, a DCP directory, an ``.onnx`` file (its initializers), or a
            directory holding one.
        dst: the file to write; its suffix names the format unless ``to`` does.
        to: ``"torch"``, ``"safetensors"`` or ``"onnx"``; default from ``dst``'s suffix
            (``.pt/.pth/.bin/.ckpt``, ``.safetensors`` or ``.safetensors.index.json``, ``.onnx``).
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``: cast floating tensors (integer
            buffers such as ``num_batches_tracked`` keep theirs). ONNX graphs are always float32.
        recipe: a recipe file whose model section describes the architecture. Needed for ONNX
            when the checkpoint carries no recipe, and preferred to the one it carries; the
            tensors must fit it exactly, and the output then carries this recipe. When ``src`` is
            the checkpoint the recipe's ``source:`` section names, it is read as ``recipec build``
            reads it: its ``state_dict_key``, ``allow_globals``, ``preset``, ``rename``, ``include``,
            ``exclude`` and ``adapt`` apply (after ``rename``/``strip_prefix``).
        shard_size: bytes per shard (``"2GB"`` or an int): sharded safetensors with an index.
        allow_globals: ``"module.Name"`` pickle globals a torch source may contain.
        trust_factories: custom factories (``"package.module:factory"``, exact names) that the
            checkpoint's own recipe may import and call to rebuild the model (for ONNX); a
            factory named by the file and not listed is refused before anything is imported.
            ``recipe``, being yours, needs none.
        quantize: ``"dynamic"`` or ``"static"``: an int8 copy of an ONNX ``src`` (static calibrates on
            ``recipe``'s training split; see :mod:`recipec.convert.quantize`).
        state_dict_key: where the state dict sits in a torch file or DCP directory (as
            ``source.state_dict_key``): ``"auto"`` picks EMA weights first, as timm does (and says so).
        rename: ``(pattern, replacement)`` pairs applied to every key with ``re.sub``, in order (as
            ``source.rename``); a pattern that matches no key is an error.
        strip_prefix: a prefix to remove from the keys that start with it (``"model."`` of a
            Lightning module), before ``rename``.

    Returns:
        The files written (for a sharded output: the shards, then the index).

    Raises:
        CheckpointError: a missing, corrupt or unsafe source, a source and destination that
            overlap, an unknown suffix without ``to``, an option that does not fit the format,
            tensors that do not fit the recipe, or ONNX without a known architecture (exit 2).
        RecipeError: ``recipe`` is not a valid recipe (exit 2).
        TransferError: the recipe's ``source:`` mapping does not fit the checkpoint it names (exit 2).
        UntrustedFactoryError: the checkpoint's recipe names a custom factory not in
            ``trust_factories`` (exit 2).
        ExportError: the ONNX exporter failed or its outputs differ from torch's beyond
            ``export.onnx.atol`` (exit 1).

    Example:
        >>> convert("runs/flowers/model.safetensors", "model.onnx")
        [PosixPath('model.onnx')]
        >>> convert("runs/flowers/checkpoints/last.pt", "half.safetensors", dtype="float16")
        [PosixPath('half.safetensors')]
    """
    trusted: tuple[str, ...] = ()
    if not (isinstance(trust_factories, (tuple, list)) and not trust_factories):
        from recipec.model.factory import factory_names  # noqa: PLC0415 (torchvision, ~1.2 s: only when there are names)

        trusted = factory_names(trust_factories)
    # Path("") is the working directory: an empty path must not pick a file from it
    source = require_path(src, what="convert: the source", error=CheckpointError)
    target = require_path(dst, what="convert: the destination", error=CheckpointError)
    if quantize is not None:  # ONNX in, int8 ONNX out: nothing else applies
        return [_quantized(source, target, quantize, recipe, other=(to, dtype, shard_size, allow_globals))]
    fmt = _target_format(target, to)
    _check_dtype(dtype, fmt)
    shard = _check_shard_size(shard_size, fmt, target)
    if target.resolve() == source.resolve():
        raise CheckpointError(f"{target}: is the source checkpoint itself; write the conversion to another file")
    check_output(target, inputs=[source, recipe], what="the conversion", error=CheckpointError)
    if source.suffix == ".pt2" and source.is_file():  # a torch.export graph: its weights, checked before loading
        from recipec.convert.pt2 import convert_pt2  # noqa: PLC0415 (torch: only for a .pt2 source)

        return convert_pt2(source, target, fmt=fmt, dtype=dtype, shard_size=shard, converted_from_key=CONVERTED_FROM_KEY)
    keys = _key_rules(rename, strip_prefix)
    spec = None
    if recipe is not None:
        from recipec.recipe.load import load_recipe  # noqa: PLC0415 (pydantic, ~0.2 s: only with --recipe)

        spec = load_recipe(recipe)
    # the checkpoint the recipe's source: section names is read as recipec build reads it
    own = spec is not None and spec.source is not None and _same_checkpoint(spec.source.checkpoint, source)
    if own:
        assert spec is not None and spec.source is not None
        state_dict_key = spec.source.state_dict_key if state_dict_key == "auto" else state_dict_key
        allow_globals = (*allow_globals, *spec.source.allow_globals)
    fast = spec is None and not allow_globals and state_dict_key == "auto"
    loaded, state = _read_raw(source, target, dtype) if fast else (None, None)
    if loaded is not None and state is not None:
        _say_which(loaded.key, source)
        metadata = _output_metadata(loaded, source, target, fmt, spec)
        state = _renamed(state, keys)
        with _hashed(loaded) as late:
            return raw.save(state, target, metadata=metadata, shard_size=shard, late=late)
    # torch (~1.4 s to import) only where the bytes cannot simply be copied
    from recipec.convert import tensors  # noqa: PLC0415

    checkpoint = tensors.load(source, allow_globals, state_dict_key)
    if state_dict_key == "auto":
        _say_which(checkpoint.key, source)
    metadata = _output_metadata(checkpoint, source, target, fmt, spec)
    # --recipe is the user's own: its factory is trusted; the checkpoint's only as far as they say
    trust: bool | tuple[str, ...] = True if recipe is not None else trusted
    with _hashed(checkpoint) as late:
        return tensors.write(_renamed(tensors.cast(checkpoint.state_dict, dtype), keys), source,
                             tensors.Output(target, fmt, shard), metadata, tensors.Model(spec, trust, own), late)


def _key_rules(rename: Sequence[Sequence[str]], strip_prefix: str | None) -> list[tuple[str, str, str]]:
    """``--strip-prefix`` then ``--rename`` as ``(pattern, replacement, the flag as written)``."""
    rules = []
    if strip_prefix is not None:
        if not strip_prefix:
            raise CheckpointError("--strip-prefix: empty; give the prefix every key starts with, e.g. model.")
        rules.append(("^" + re.escape(strip_prefix), "", f"--strip-prefix {strip_prefix!r}"))
    for rule in rename:
        if len(rule) != 2 or not all(isinstance(part, str) for part in rule):
            raise CheckpointError(f"--rename: takes a pattern and a replacement, got {list(rule)!r}")
        rules.append((rule[0], rule[1], f"--rename {rule[0]!r} {rule[1]!r}"))
    return rules


def _renamed(state: dict[str, T], rules: Sequence[tuple[str, str, str]]) -> dict[str, T]:
    """``state`` under the names the rules give (``re.sub``, in order, as ``source.rename``); a rule that
    matches no key, or two keys renamed onto one name, is an error naming the flag."""
    if not rules:
        return state
    try:
        mapping = map_keys(list(state), rename=[(pattern, replacement) for pattern, replacement, _ in rules])
        found = TransferError(mapping.problems) if mapping.problems else None
    except TransferError as exc:  # not a regular expression, or a replacement it cannot take
        found = exc
    if found is not None:  # the problems name ("rename", i): the i-th rule, as the user wrote its flag
        raise CheckpointError([f"{rules[path[1]][2] if path and len(path) == 2 and isinstance(path[1], int) else '--rename'}"
                               f": {message}" for path, message in zip(found.paths, found.messages)])
    return {mapping.renamed[name]: value for name, value in state.items()}


def _same_checkpoint(named: str | None, source: Path) -> bool:
    if not named:
        return False
    try:
        return same_file(raw.resolve_file(named), raw.resolve_file(source))
    except CheckpointError:
        return False


def _say_which(key: str, source: Path) -> None:
    """Auto picks EMA weights first (as timm does): say so, since the file holds other weights too."""
    if key in ("state_dict_ema", "model_ema"):
        warn(f"{source}: converting the EMA weights at {key!r} (picked first, as timm does); "
             "--state-dict-key chooses another entry (inspect lists them)")


def _quantized(source: Path, target: Path, method: str, recipe: str | os.PathLike[str] | None,
               other: tuple[object, ...]) -> Path:
    if any(other):
        raise CheckpointError("--quantize writes an int8 ONNX file; leave out --to, --dtype, --shard-size and "
                              "--allow-global")
    if target.resolve() == source.resolve():
        raise CheckpointError(f"{target}: is the source itself; write the int8 model to another file")
    check_output(target, inputs=[source, recipe], what="the conversion", error=CheckpointError)
    from recipec.convert.quantize import quantize_file  # noqa: PLC0415 (onnxruntime: only with --quantize)
    from recipec.recipe.load import load_recipe  # noqa: PLC0415 (pydantic, ~0.2 s: only with --recipe)

    return quantize_file(source, target, method=method, recipe=None if recipe is None else load_recipe(recipe))


def _read_raw(source: Path, target: Path, dtype: str | None,
              ) -> tuple[raw.RawCheckpoint | None, dict[str, raw.RawTensor] | None]:
    """The source read as bytes when the output is safetensors (see :mod:`recipec.weights.raw`), else (None, None)."""
    if not target.name.endswith((".safetensors", INDEX_SUFFIX)):
        return None, None
    loaded = raw.load(source)
    return loaded, raw.cast(loaded.state_dict, dtype) if loaded is not None else None


def _output_metadata(loaded: raw.RawCheckpoint | Checkpoint, source: Path, target: Path, fmt: str,
                     spec: Recipe | None) -> dict[str, str]:
    """What the output carries: the source's metadata, its recipe following the file (or ``spec``'s)."""
    check_output(target, inputs=loaded.files, what="the conversion", error=CheckpointError)  # hard links too
    _refuse_overwrite(loaded.files, target, fmt)
    metadata = _carried_metadata(loaded.metadata, loaded.state_dict)
    if spec is not None:
        # The output describes the architecture its tensors were checked against.
        from recipec.recipe.load import dump_recipe  # noqa: PLC0415 (pydantic: only with --recipe)

        metadata[RECIPE_KEY] = dump_recipe(spec, relative_to=target.parent)
    elif isinstance(metadata.get(RECIPE_KEY), str):
        metadata[RECIPE_KEY] = _moved_recipe(metadata[RECIPE_KEY], source.parent, target.parent)
    return metadata


@contextlib.contextmanager
def _hashed(loaded: raw.RawCheckpoint | Checkpoint) -> Iterator[dict[str, raw.LateValue]]:
    """``recipec.converted_from`` as a late value: the source's SHA-256 is computed in a thread while the
    tensors are written (the hash and the copy each take about as long) and written into the header at the end."""
    file, found = loaded.files[0], loaded.format
    with _Sha256InBackground(file) as digest:
        yield {CONVERTED_FROM_KEY: raw.LateValue(placeholder=_converted_from(file, found, "0" * 64),
                                                 resolve=lambda: _converted_from(file, found, digest.result()))}


def _target_format(target: Path, to: str | None) -> str:
    implied = "safetensors" if target.name.endswith(INDEX_SUFFIX) else _SUFFIXES.get(target.suffix)
    if to is None:
        if implied is None:
            raise CheckpointError(f"{target}: cannot tell the output format from the suffix {target.suffix!r}; "
                                  f"pass --to {' | '.join(FORMATS)}, or name it .safetensors, .pt or .onnx")
        return implied
    if to not in FORMATS:
        raise CheckpointError(f"--to {to!r}: expected one of {', '.join(FORMATS)}")
    if implied is not None and implied != to:
        raise CheckpointError(f"{target}: the suffix {target.suffix!r} says {implied}, but --to says {to}; "
                              "give the file a suffix that fits, or leave --to out")
    return to


def _check_dtype(dtype: str | None, fmt: str) -> None:
    if dtype is None:
        return
    if dtype not in _DTYPES:
        raise CheckpointError(f"--dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
    if fmt == "onnx" and dtype != "float32":
        raise CheckpointError(f"--dtype {dtype}: ONNX graphs are written in float32 (fp16/bf16 graphs often fail on "
                              "onnxruntime CPU); convert to ONNX without --dtype")


def _check_shard_size(shard_size: int | str | None, fmt: str, target: Path) -> int | None:
    if shard_size is None:
        if target.name.endswith(INDEX_SUFFIX):
            raise CheckpointError(f"{target}: a sharded index needs --shard-size (e.g. 2GB)")
        return None
    if fmt != "safetensors" or not target.name.endswith((".safetensors", INDEX_SUFFIX)):
        raise CheckpointError(f"--shard-size: shards are written as safetensors; name the output .safetensors "
                              f"or *{INDEX_SUFFIX}, not {target.name!r}")
    try:
        from recipec.recipe.spec import parse_size  # noqa: PLC0415 (pydantic, ~0.2 s: only with --shard-size)

        size = parse_size(shard_size)
    except ValueError as exc:
        raise CheckpointError(f"--shard-size: {exc}") from exc
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= 10**12:  # as export.shard_size
        raise CheckpointError(f"--shard-size: must be a positive size up to 1TB such as 2GB or 500MB, got {shard_size!r}")
    return size


def _refuse_overwrite(sources: Sequence[Path], target: Path, fmt: str) -> None:
    """A safetensors save also removes same-stem shards, index or single file beside it."""
    files = {f.resolve() for f in sources}
    if target.resolve() in files:
        raise CheckpointError(f"{target}: is (part of) the source checkpoint; write the conversion to another file")
    if fmt != "safetensors" or not target.name.endswith((".safetensors", INDEX_SUFFIX)):
        return
    name = target.name
    stem = name[: -len(INDEX_SUFFIX)] if name.endswith(INDEX_SUFFIX) else name[: -len(".safetensors")]
    family = re.compile(re.escape(stem) + r"(-\d{5}-of-\d{5})?\.safetensors|" + re.escape(stem + INDEX_SUFFIX))
    directory = target.parent.resolve()
    clash = sorted(f.name for f in files if f.parent == directory and family.fullmatch(f.name))
    if clash:
        raise CheckpointError(f"{target}: writing it would replace or remove the source file {clash[0]!r} (same name "
                              "stem in the same directory); choose another name or directory")
