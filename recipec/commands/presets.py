"""The command that lists the shipped key-mapping presets: presets (torch-free)."""

from __future__ import annotations

import textwrap

import click

__all__ = ["presets"]

_WIDTH = 100
_INDENT = "    "


@click.command()
def presets() -> None:
    """List the shipped key-mapping presets a recipe names in source.preset.

    Each maps one family's checkpoint keys onto another's model (renames, excludes, q/k/v
    fused, Linear reshaped to 1x1 conv, ...); the recipe's own rename/exclude/adapt rules add
    to it. Each is tested on a random-init pair of models: equal outputs.

    \b
    Examples:
      recipec presets
    """
    from recipec.recipe.presets import PRESETS

    blocks = []
    for name, preset in PRESETS.items():
        lines = [name, f"{_INDENT}from  {preset.source}", f"{_INDENT}to    {preset.target}"]
        lines += textwrap.wrap(preset.description, _WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT)
        blocks.append("\n".join(lines))
    click.echo("\n\n".join(blocks))
    click.echo("\nuse: source: {checkpoint: FILE, preset: NAME}; rename, exclude and adapt add to it")
