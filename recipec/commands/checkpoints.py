"""Commands on the files of a run: convert, inspect, card, features."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from recipec import _json as clean_json
from recipec.commands._common import SET_HELP, TRUST_HELP
from recipec.errors import CheckpointError

__all__ = ["card", "convert", "features", "inspect"]


@click.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--to", type=click.Choice(["torch", "safetensors", "onnx"]), help="Output format (default: DST's suffix).")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), help="Cast floating tensors.")
@click.option("--recipe", type=click.Path(dir_okay=False),
              help="The recipe that describes the architecture, for files that carry none (needed for ONNX).")
@click.option("--shard-size", metavar="SIZE", help="Shard safetensors output above SIZE (e.g. 2GB).")
@click.option("--allow-global", "allow_globals", multiple=True, metavar="MODULE.NAME",
              help="A pickle global you trust in a torch source (repeatable).")
@click.option("--trust-factory", "trust_factories", multiple=True, metavar="PKG.MODULE:FACTORY",
              help=TRUST_HELP)
@click.option("--quantize", type=click.Choice(["dynamic", "static"]),
              help="Write an int8 copy of an ONNX SRC (onnxruntime.quantization); static calibrates on --recipe's "
                   "training split.")
@click.option("--state-dict-key", default="auto", show_default=True, metavar="KEY",
              help="Where the weights sit in a torch file or DCP directory (e.g. state_dict, model, dotted ema.model); "
                   "auto picks EMA weights first, as timm does.")
@click.option("--rename", "rename", multiple=True, nargs=2, metavar="FROM TO",
              help="Rename keys: re.sub(FROM, TO, key) on every key, in order (repeatable); FROM must match a key.")
@click.option("--strip-prefix", metavar="PREFIX",
              help="Remove PREFIX from the keys that start with it (model. of a Lightning module), before --rename.")
def convert(src: str, dst: str, to: str | None, dtype: str | None, recipe: str | None, shard_size: str | None,
            allow_globals: tuple[str, ...], trust_factories: tuple[str, ...], quantize: str | None,
            state_dict_key: str, rename: tuple[tuple[str, str], ...], strip_prefix: str | None) -> None:
    """Convert a checkpoint between torch, safetensors and ONNX (a .pt2 to its weights; ONNX to int8).

    The recipe and provenance a recipec export carries travel into the output. ONNX needs
    the architecture: from the checkpoint's own metadata or from --recipe; the graph is
    checked against torch with onnxruntime before it is written (exit 1 beyond tolerance).
    SRC may also be a Lightning .ckpt, a timm .pth.tar, a sharded *.bin.index.json, a DCP
    directory or an .onnx file (its initializers). When SRC is the checkpoint the --recipe's
    source: section names, its state_dict_key, preset, rename, include and exclude apply.

    \b
    Examples:
      recipec convert runs/quickstart/model.safetensors model.onnx
      recipec convert runs/quickstart/checkpoints/last.pt model.safetensors --dtype bfloat16
      recipec convert backbone.pth backbone.safetensors --shard-size 2GB
      recipec convert foreign.pth model.onnx --recipe recipes/quickstart.yaml
      recipec convert runs/quickstart/model.pt2 model.safetensors
      recipec convert model.onnx model.int8.onnx --quantize dynamic
      recipec convert model.onnx static.int8.onnx --quantize static --recipe recipes/quickstart.yaml
    """
    from recipec.convert.checkpoint import convert as run_convert

    with _flags_named({"state_dict_key": "--state-dict-key", "rename/include": "--rename"}):
        written = run_convert(src, dst, to=to, dtype=dtype, recipe=recipe, shard_size=shard_size,
                              allow_globals=allow_globals, trust_factories=trust_factories, quantize=quantize,
                              state_dict_key=state_dict_key, rename=rename, strip_prefix=strip_prefix)
    for path in written:
        click.echo(f"wrote {path}")


@contextlib.contextmanager
def _flags_named(flags: dict[str, str]) -> Iterator[None]:
    """A checkpoint error worded for the command line: the fix it names is a flag, not a recipe key
    (``--allow-global NAME`` for ``source.allow_globals``; ``flags``: other ``source.*`` keys)."""
    try:
        yield
    except CheckpointError as exc:
        refused = list(getattr(exc, "refused", ()))
        allow = f"add {refused!r} to source.allow_globals"
        messages = [m.replace(allow, "pass " + " ".join(f"--allow-global {name}" for name in refused))
                    if refused else m for m in exc.problems]
        for key, flag in flags.items():
            messages = [m.replace(f"source.{key}", flag) for m in messages]
        if messages == exc.problems:
            raise
        raise type(exc)(messages) from exc


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, every tensor included.")
@click.option("--allow-global", "allow_globals", multiple=True, metavar="MODULE.NAME",
              help="A pickle global you trust in a torch file (repeatable); nothing else is unpickled.")
def inspect(checkpoint: str, as_json: bool, allow_globals: tuple[str, ...]) -> None:
    """Show the tensors, shapes, dtypes, sizes and metadata of a checkpoint.

    Reads torch files (weights only, never arbitrary pickles), safetensors files, sharded
    safetensors and .bin (*.index.json), DCP directories and ONNX files without building any
    model; a training checkpoint's optimizer state is listed beside the weights.

    \b
    Examples:
      recipec inspect runs/quickstart/model.safetensors
      recipec inspect runs/quickstart/checkpoints/last.pt --json
    """
    from recipec.weights.inspect import format_inspect, inspect_checkpoint

    with _flags_named({}):
        report = inspect_checkpoint(checkpoint, allow_globals=allow_globals)
    click.echo(clean_json.dumps(report, indent=2) if as_json else format_inspect(report))


@click.command()
@click.argument("target", type=click.Path())
@click.option("--layers", required=True, metavar="NAME,...", help="Dotted module names, comma-separated (e.g. layer3,layer4).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
              help="Which part of the recipe's dataset.")
@click.option("--pool", type=click.Choice(["avg", "max"]), default="avg", show_default=True,
              help="How spatial (or token) outputs are pooled to one vector per example.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP + " Recipes only.")
@click.option("--device", help="Device to run the model on (default: the recipe's).")
@click.option("--batch-size", type=click.IntRange(min=1, max=65_536), help="Override data.batch_size (at most 65,536, as there).")
@click.option("--trust-factory", "trust_factories", multiple=True, metavar="PKG.MODULE:FACTORY",
              help=TRUST_HELP)
def features(target: str, layers: str, out: str, split: str, pool: str, overrides: tuple[str, ...],
             device: str | None, batch_size: int | None, trust_factories: tuple[str, ...]) -> None:
    """Extract pooled features of intermediate layers over a dataset into safetensors.

    TARGET is a recipe (the model is compiled with its weights and source) or a recipec
    export (the model and the dataset come from its embedded recipe). Augmentations are
    off and the order is the dataset's, so the file is deterministic: one (N, C) tensor per
    layer and `labels` (N,).

    \b
    Examples:
      recipec features runs/quickstart/model.safetensors --layers layer3,layer4 --out feats.safetensors
      recipec features recipes/quickstart.yaml --layers avgpool --split val --out val.safetensors
    """
    from recipec.pipeline.features import features as extract

    names = [name.strip() for name in layers.split(",") if name.strip()]
    path = extract(target, layers=names, out=out, split=split, overrides=overrides, device=device,
                   batch_size=batch_size, pool=pool, trust_factories=trust_factories)
    click.echo(f"wrote {path}")


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--template", type=click.Path(dir_okay=False), help="A Jinja2 template (default: the recipe's card.template, else the shipped one).")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write (default: RUN_DIR/README.md).")
def card(run_dir: str, template: str | None, out: str | None) -> None:
    """(Re)render the model card of a finished run from its files alone.

    The card has Hugging Face front matter (license, tags, base_model, datasets, metrics)
    and the sections of Mitchell et al.; what is unknown is left out, never filled with
    placeholders.

    \b
    Examples:
      recipec card runs/quickstart
      recipec card runs/quickstart --template my-card.md.j2 --out CARD.md
    """
    from recipec.card.render import write_card

    click.echo(f"wrote {write_card(run_dir, template=template, out=out)}")
