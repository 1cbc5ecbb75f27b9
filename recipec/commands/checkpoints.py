"""Commands on the files of a run: convert, inspect, card, features."""

from __future__ import annotations

import click

from recipec import _json as clean_json
from recipec.commands._common import SET_HELP, TRUST_HELP

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
def convert(src: str, dst: str, to: str | None, dtype: str | None, recipe: str | None, shard_size: str | None,
            allow_globals: tuple[str, ...], trust_factories: tuple[str, ...]) -> None:
    """Convert a checkpoint between torch, safetensors and ONNX.

    The recipe and provenance a recipec export carries travel into the output. ONNX needs
    the architecture: from the checkpoint's own metadata or from --recipe; the graph is
    checked against torch with onnxruntime before it is written (exit 1 beyond tolerance).

    \b
    Examples:
      recipec convert runs/quickstart/model.safetensors model.onnx
      recipec convert runs/quickstart/checkpoints/last.pt model.safetensors --dtype bfloat16
      recipec convert backbone.pth backbone.safetensors --shard-size 2GB
      recipec convert foreign.pth model.onnx --recipe recipes/quickstart.yaml
    """
    from recipec.convert.checkpoint import convert as run_convert

    for path in run_convert(src, dst, to=to, dtype=dtype, recipe=recipe, shard_size=shard_size,
                            allow_globals=allow_globals, trust_factories=trust_factories):
        click.echo(f"wrote {path}")


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, every tensor included.")
@click.option("--allow-global", "allow_globals", multiple=True, metavar="MODULE.NAME",
              help="A pickle global you trust in a torch file (repeatable); nothing else is unpickled.")
def inspect(checkpoint: str, as_json: bool, allow_globals: tuple[str, ...]) -> None:
    """Show the tensors, shapes, dtypes, sizes and metadata of a checkpoint.

    Reads torch files (weights only, never arbitrary pickles), safetensors files and sharded
    safetensors (*.index.json) without building any model.

    \b
    Examples:
      recipec inspect runs/quickstart/model.safetensors
      recipec inspect runs/quickstart/checkpoints/last.pt --json
    """
    from recipec.weights.inspect import format_inspect, inspect_checkpoint

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
