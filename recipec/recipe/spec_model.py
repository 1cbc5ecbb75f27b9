"""The model-side sections of a recipe: the base network, its new head, and the weights transferred in.

The root ``Recipe`` lives in :mod:`recipec.recipe.spec`, which re-exports every name here.
This module never imports torch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from recipec.recipe.archs import family_name
from recipec.recipe.presets import PresetName
from recipec.recipe._fields import MAX_CLASSES, FieldProblems, Regex, BaseSpec, pattern

__all__ = ["AdaptSpec", "HeadSpec", "ModelSpec", "SourceSpec"]

_ARCH = pattern(r"^([A-Za-z_][A-Za-z0-9_]*|timm/[A-Za-z0-9_]+|hf/[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"
                r"|hf/(\.{1,2}|~)?/.+|[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*)$",
                "must be a torchvision model name (e.g. resnet18), timm/<name>, hf/<repo id or ./folder> "
                "or package.module:factory")
_HEAD_AT = pattern(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)*$", "must be a dotted module path such as fc or classifier.6")
_WEIGHTS = pattern(r"^[A-Za-z0-9_]+$", "must be a weights name such as IMAGENET1K_V1 or DEFAULT, or null")
_SHA256 = pattern(r"^[0-9a-fA-F]{64}$", "must be 64 hexadecimal digits")
_GLOBAL = pattern(r"^[A-Za-z_][A-Za-z0-9_.]*$", "must be a dotted global name such as argparse.Namespace")


# --------------------------------------------------------------------------- model


class HeadSpec(BaseSpec):
    """The new classifier that replaces the architecture's own."""

    num_classes: int = Field(
        ge=1, le=MAX_CLASSES, description="Number of output logits of the new head (at most 1,000,000: the largest "
                                          "label sets in use, face identities, are about that; a head beyond it holds "
                                          "billions of weights).", examples=[5])
    type: Literal["linear", "mlp"] = Field(
        "linear", description="linear: one Linear layer. mlp: hidden Linear layers with activation and dropout, then the output Linear.",
        examples=["mlp"])
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] | None = Field(
        None, max_length=16, description="mlp only: sizes of the hidden layers (default [512]); at most 16 layers of "
                                         "65,536 (one such layer already holds 4 billion weights).", examples=[[512]])
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout probability: before the Linear of a linear head; after each hidden activation of an mlp head.", examples=[0.2])
    activation: Literal["relu", "gelu", "silu"] | None = Field(
        None, description="mlp only: activation between hidden layers (default relu).", examples=["gelu"])
    at: str | None = Field(
        None, pattern=_HEAD_AT,
        description="Dotted path of the module to replace (e.g. fc, classifier.6, heads.head); default: the family's classifier. "
                    "A negative index such as classifier.-1 counts from the end of a Sequential.",
        examples=["classifier.-1"])

    @model_validator(mode="after")
    def _mlp_options(self) -> HeadSpec:
        if self.type == "linear":
            wrong = [k for k in ("hidden", "activation") if getattr(self, k) is not None]
            if wrong:
                raise FieldProblems([((k,), "only applies to type: mlp (this head is type: linear); "
                                            "remove it or set type: mlp") for k in wrong])
        elif self.hidden is not None and not self.hidden:
            raise FieldProblems([(("hidden",), "an mlp head needs at least one hidden size, e.g. hidden: [512]")])
        return self


class ModelSpec(BaseSpec):
    """The base network and its new head."""

    arch: str = Field(
        pattern=_ARCH,
        description='A torchvision classification model name (resnet18, vit_b_16, ...), timm/<name> for a timm model '
                    "(the timm extra: pip install 'recipec[timm]'), hf/<repo id> or hf/./<folder> for a transformers "
                    "vision model (the hf extra: pip install 'recipec[hf]'; a repository id is read from the local "
                    "Hugging Face cache, a folder from the working directory), or \"package.module:factory\" for your own.",
        examples=["resnet18", "timm/convnext_tiny", "hf/facebook/dinov2-small", "mypackage.nets:make_net"])
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the factory; hf/: fields of the repository's "
                                          "config to change (hidden_dropout_prob, drop_path_rate, ...).",
        examples=[{"dropout": 0.1}])
    weights: str | None = Field(
        None, pattern=_WEIGHTS,
        description="torchvision weights enum name (IMAGENET1K_V1, DEFAULT, ...), a timm pretrained tag "
                    "(in12k_ft_in1k, lvd142m, ...; read from the Hugging Face hub cache), hf/: DEFAULT for the repository's "
                    "weights or a revision (branch, tag or commit) of it, or null for random initialisation.",
        examples=["IMAGENET1K_V1", "DEFAULT", "in1k"])
    in_channels: int = Field(
        3, ge=1, le=1024, description="Input channels; when not 3, the first convolution is rebuilt and pretrained filters "
                                      "adapted (sum for 1 channel, repeat and rescale otherwise). At most 1024: "
                                      "hyperspectral sensors record a few hundred bands.", examples=[1])
    head: HeadSpec | None = Field(
        None, description="The new classifier; null keeps the architecture's own.", examples=[{"num_classes": 5}])
    group_matcher: Literal["coarse", "fine"] = Field(
        "coarse", description="timm/<name> only: the default layer groups come from the model's group_matcher, "
                              "coarse (stages) or fine (blocks, as timm's layer decay numbers them).", examples=["fine"])

    @model_validator(mode="after")
    def _timm(self) -> ModelSpec:
        import importlib.util

        # a non-default value, not merely a written one: a dumped recipe.yaml writes every field, defaults included
        if self.group_matcher != type(self).model_fields["group_matcher"].default and family_name(self.arch) != "timm":
            raise FieldProblems([(("group_matcher",), f"only applies to timm/<name> architectures, not {self.arch!r}; remove it")])
        if family_name(self.arch) == "timm" and importlib.util.find_spec("timm") is None:
            raise FieldProblems([(("arch",), f"{self.arch!r} needs the timm extra, which is not installed: "
                                             "pip install 'recipec[timm]'")])
        if family_name(self.arch) == "hf" and self.in_channels != 3:
            raise FieldProblems([(("in_channels",), f"hf/ models take 3-channel images ({self.arch!r}); "
                                                    "remove model.in_channels (grayscale images are repeated to 3 channels)")])
        return self

    @model_validator(mode="after")
    def _kwargs_classes(self) -> ModelSpec:
        # kwargs go to the factory as they are; the one size every classifier factory takes is bounded like the head's
        n = self.kwargs.get("num_classes")
        if isinstance(n, (int, float)) and not isinstance(n, bool) and not 1 <= n <= MAX_CLASSES:
            raise FieldProblems([(("kwargs", "num_classes"), f"must be from 1 to {MAX_CLASSES:,}, got {n}")])
        return self
    aux_loss_weight: float = Field(
        0.4, ge=0, le=1e3,
        description="googlenet / inception_v3 with kwargs.aux_logits: true: the training loss adds this times the "
                    "cross-entropy of each auxiliary classifier (they get the new class count), in the epochs their "
                    "group trains; evaluation and exports use the main output only.", examples=[0.3])


# --------------------------------------------------------------------------- source


_ADAPT_EXAMPLES: dict[str, Any] = {"match": r"^conv1\.weight$", "rule": "input_channels", "fuse": [r"(.*)\.q\.weight", r"\1.k.weight"],
                                   "split": r"(.*)\.qkv\.weight", "into": r"\1.qkv.weight"}


class AdaptSpec(BaseSpec):
    """One rule of source.adapt: a shape rule (match + rule) for source tensors whose renamed key matches,
    or a fuse (fuse + into) or split (split + into) that makes one model tensor of several source tensors or
    several of one."""

    # each branch names the properties it requires (ajv's strictRequired; the parent defines their types)
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"properties": {k: {"description": f"Required in a {keys[0]} rule ({' + '.join(keys)}).",
                            "examples": [_ADAPT_EXAMPLES[k]]} for k in keys},
         "required": list(keys)}
        for keys in (("match", "rule"), ("fuse", "into"), ("split", "into"))]})

    match: Regex | None = Field(
        None, description="Shape rules: regex searched in the renamed key; the first rule that matches a tensor whose "
                           "shape differs from the model's adapts it.", examples=[r"^conv1\.weight$"])
    rule: Literal["input_channels", "truncate_pad", "class_subset", "pos_embed", "reshape"] | None = Field(
        None,
        description="With match: input_channels: adapt a first conv to the model's input channels (timm adapt_input_conv). "
                    "truncate_pad: copy the overlapping block, zero the rest. "
                    "class_subset: keep the rows `indices` of a source classifier. "
                    "pos_embed: resample a ViT's absolute position embedding to the model's patch grid "
                    "(timm resample_abs_pos_embed: bicubic, prefix tokens kept). "
                    "reshape: the same elements in the model's shape, e.g. a Linear [out, in] as a 1x1 conv "
                    "[out, in, 1, 1] (the element count must agree; nothing is transposed).",
        examples=["input_channels"])
    indices: list[Annotated[int, Field(ge=0, lt=MAX_CLASSES)]] | None = Field(
        None, max_length=MAX_CLASSES,
        description="class_subset only: source rows (classes) to keep, in the model's class order (below 1,000,000, "
                    "the bound of num_classes).",
        examples=[[0, 3, 7]])
    fuse: list[str] | None = Field(
        None, min_length=2, max_length=64,
        description="The parts of one model tensor, in order: a regex that must match a whole renamed key "
                    "(re.fullmatch), then the other parts' keys as templates of that match (\\1, \\g<name>). "
                    "They are concatenated along dim into the key `into`; one rule covers every layer.",
        examples=[[r"(.*)\.q\.(weight|bias)", r"\1.k.\2", r"\1.v.\2"]])
    split: Regex | None = Field(
        None, description="A regex that must match a whole renamed key (re.fullmatch); that tensor is cut along dim "
                          "into the keys `into` (equal parts unless sizes): the reverse of fuse.",
        examples=[r"(.*)\.qkv\.(weight|bias)"])
    into: str | list[str] | None = Field(
        None, description="fuse: the template of the fused key; split: the templates of the parts' keys, in order.",
        examples=[r"\1.qkv.\2", [r"\1.q.\2", r"\1.k.\2", r"\1.v.\2"]])
    dim: int = Field(
        0, ge=-8, le=7, description="fuse and split: the dimension the parts are concatenated along or cut from "
                                    "(timm's qkv weight: 0, the output rows).", examples=[0])
    sizes: list[Annotated[int, Field(ge=1, le=1 << 31)]] | None = Field(  # 2**31: beyond any real tensor dimension
        None, max_length=64, description="split only: each part's size along dim, in the order of into "
                                         "(default: equal parts).", examples=[[768, 256, 256]])

    @model_validator(mode="after")
    def _one_kind(self) -> AdaptSpec:
        kinds = [k for k in ("match", "fuse", "split") if getattr(self, k) is not None]
        if not kinds:
            raise ValueError("needs match and rule (a shape rule), fuse and into, or split and into")
        if len(kinds) > 1:
            raise FieldProblems([((kinds[1],), f"one rule per item: {' and '.join(kinds)} cannot go together; "
                                               "write them as separate items")])
        kind = kinds[0]
        allowed = {"match": {"match", "rule", "indices"}, "fuse": {"fuse", "into", "dim"},
                   "split": {"split", "into", "dim", "sizes"}}[kind]
        problems: list[tuple[tuple[str | int, ...], str]] = [((k,), f"does not apply to a {kind} rule (only {', '.join(sorted(allowed))})")
                    for k in ("rule", "indices", "into", "sizes") if getattr(self, k) is not None and k not in allowed]
        if self.dim != 0 and "dim" not in allowed:
            problems.append((("dim",), "only applies to fuse and split rules"))
        if kind == "match" and self.rule is None:
            problems.append((("match",), "a shape rule needs rule: input_channels, truncate_pad, class_subset, "
                                         "pos_embed or reshape"))
        elif kind != "match":
            problems += self._templates(kind)
        if problems:
            raise FieldProblems(problems)
        return self

    def _templates(self, kind: str) -> list[tuple[tuple[str | int, ...], str]]:
        """into's shape for the kind, and every template parsed against the rule's regex (group references)."""
        into = self.into
        if kind == "fuse" and not isinstance(into, str):
            return [(("into",), "a fuse needs into: the template of the fused key, e.g. '\\1.qkv.\\2'")]
        if kind == "split" and (not isinstance(into, list) or len(into) < 2):
            return [(("into",), "a split needs into: a list of two or more templates of the parts' keys")]
        if kind == "split" and self.sizes is not None and len(self.sizes) != len(into or ()):
            return [(("sizes",), f"needs one size per part of into ({len(into or ())}), got {len(self.sizes)}")]
        first = self.fuse[0] if self.fuse is not None else self.split
        try:
            regex = re.compile(first or "")
        except (re.error, OverflowError, RecursionError) as exc:
            return [(("fuse", 0), f"{first!r} is not a valid regular expression: {exc}")]
        named: list[tuple[tuple[str | int, ...], str]] = [(("fuse", i), t) for i, t in enumerate((self.fuse or [])[1:], 1)]
        named += [(("into",), into)] if isinstance(into, str) else [(("into", i), t) for i, t in enumerate(into or ())]
        problems = []
        for path, template in named:
            try:
                regex.sub(template, "")  # parses the template's group references even without a match
            except (re.error, IndexError) as exc:
                problems.append((path, f"template {template!r} is not valid for '{first}': {exc}"))
        return problems

    @model_validator(mode="after")
    def _indices(self) -> AdaptSpec:
        if self.rule == "class_subset" and not self.indices:
            raise FieldProblems([(("rule",), "class_subset needs indices: the source classes to keep, e.g. indices: [0, 3, 7]")])
        if self.rule != "class_subset" and self.indices is not None:
            raise FieldProblems([(("indices",), f"only applies to rule class_subset (this rule is {self.rule})")])
        return self


class SourceSpec(BaseSpec):
    """Weights to transfer into the model, applied after model.weights."""

    checkpoint: str | None = Field(
        None, description="Path (relative to the recipe) of a .pt/.pth/.bin/.ckpt/.pth.tar/.safetensors/.onnx file, a "
                          "sharded *.index.json (safetensors or .bin) or a DCP directory.",
        examples=["checkpoints/backbone.safetensors"])
    recipe: str | None = Field(
        None, description="Or: a recipe (relative path) whose built result is the source.", examples=["upstream.yaml"])
    preset: PresetName | None = Field(
        None, description="A shipped key mapping whose rename/exclude/adapt rules run before this section's own "
                          "(which add to them): Hugging Face ViT, DINOv2, CLIP vision and ConvNeXt into timm, "
                          "ViT into torchvision, timm <-> torchvision ResNet. `recipec presets` lists them.",
        examples=["hf_vit_to_timm"])
    state_dict_key: str = Field(
        "auto", description="Where the state dict sits in the file: auto tries state_dict_ema, model_ema, "
                            "model_state_dict, state_dict, model, then the raw mapping; or a dotted key.",
        examples=["auto", "model_state_dict"])
    sha256: str | None = Field(
        None, pattern=_SHA256, description="Optional pin; a file with another digest is an error.",
        examples=["9b2f1c8e0d4e6a7b3c5f1e2d8a9b0c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b"])
    rename: list[tuple[Regex, str]] = Field(
        default_factory=list, description="Ordered regex substitutions on source keys (re.sub; \\1 groups allowed).",
        examples=[[[r"^module\.", ""], [r"^backbone\.(\d+)\.", r"layer\1."]]])
    include: list[Regex] = Field(
        default_factory=list, description="Regexes on the renamed key; only matching keys are loaded. Empty: every key.",
        examples=[[r"^layer[1-4]\."]])
    exclude: list[Regex] = Field(
        default_factory=list, description="Regexes on the renamed key; matching keys are not loaded.",
        examples=[[r"^fc\."]])
    adapt: list[AdaptSpec] = Field(
        default_factory=list, description="Shape adaptations by renamed-key regex.",
        examples=[[{"match": r"^conv1\.weight$", "rule": "input_channels"}]])
    on_mismatch: Literal["error", "skip"] = Field(
        "error", description="What a shape mismatch not covered by adapt does: error stops, skip leaves the model tensor "
                             "as it was and reports it.", examples=["skip"])
    require_all: bool = Field(
        True, description="Every model tensor outside the new head must be loaded.", examples=[False])
    allow_globals: list[Annotated[str, Field(pattern=_GLOBAL)]] = Field(
        default_factory=list, description="Pickle globals (module.Name) a torch checkpoint may contain; nothing else is unpickled.",
        examples=[["argparse.Namespace"]])
    timm_filter: bool = Field(
        False, description="timm models only: run the installed timm's own checkpoint_filter_fn of model.arch on the "
                           "file's state dict first (official ViT, DeiT, ConvNeXt... layouts -> timm's), then rename, "
                           "include, exclude and adapt as usual.", examples=[True])

    @model_validator(mode="after")
    def _one_source(self) -> SourceSpec:
        if self.checkpoint and self.recipe:
            raise FieldProblems([(("recipe",), "set either checkpoint or recipe, not both")])
        if not self.checkpoint and not self.recipe:
            raise ValueError("needs checkpoint (a file) or recipe (an upstream recipe)")
        return self
