"""The ``adapters:`` section: low-rank adapters (LoRA, DoRA through ``peft``) on base modules.

An adapted module's base weights never train; its adapter parameters train from epoch 0 and
belong to the module's layer group (its learning rate and weight-decay rules). The compiler
(:mod:`recipec.compiler.adapters`) resolves ``target`` on the model; this module checks what
needs no model. It never imports torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from recipec.recipe._fields import BaseSpec, Regex

__all__ = ["ADAPTER_PRESETS", "AdaptersSpec", "adapter_problems"]

# family-independent presets, resolved on module names by recipec.model.adapters
ADAPTER_PRESETS = ("attention", "mlp", "all-linear")


class AdaptersSpec(BaseSpec):
    """Low-rank adapters (the ``peft`` extra) on base modules: ``freeze`` governs every other weight."""

    method: Literal["lora", "dora"] = Field(
        "lora", description="lora: LoRA (W + B A * alpha / r). dora: weight-decomposed LoRA (PEFT's use_dora).",
        examples=["lora"])
    r: int = Field(8, ge=1, le=4096, description="Rank of the adapters.", examples=[8])
    alpha: float = Field(16.0, gt=0, le=1e6, description="LoRA alpha: the update is scaled by alpha / r.",
                         examples=[16])
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.", examples=[0.05])
    target: Literal["attention", "mlp", "all-linear"] | list[Regex] = Field(
        "attention", description="attention: the attention projections (timm qkv/proj, transformers query/key/value/"
                                 "attention output); mlp: the MLP layers (fc1/fc2, intermediate/output); all-linear: "
                                 "every nn.Linear outside the head; or a list of regexes searched in module names "
                                 "(nn.Linear and nn.Conv2d modules; e.g. ['layer4\\\\.\\\\d+\\\\.conv2$']).",
        examples=["attention", [r"blocks\.\d+\.attn\.qkv$"]])
    groups: list[str] | None = Field(
        None, min_length=1, description="Only adapt modules inside these layer groups; null: every group but the "
                                        "head's.", examples=[["blocks.10", "blocks.11"]])


def adapter_problems(recipe: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """What ``adapters:`` does not combine with (a :class:`recipec.recipe.spec.Recipe`'s cross-check)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if recipe.adapters is None:
        if recipe.export.adapters != "merged":
            problems.append((("export", "adapters"), f"{recipe.export.adapters} needs an adapters: section "
                                                     "(without adapters there is nothing to export separately)"))
        return problems
    if recipe.train.compile:
        problems.append((("train", "compile"), "is not supported with adapters yet (the PEFT layers' dispatch is not "
                                               "tested under torch.compile); set train.compile: false"))
    return problems
