"""Tensor adaptation rules: turn a source tensor into the shape the model needs.

Each rule is a pure function of tensors (nothing here knows about keys or recipes);
:func:`apply_rule` dispatches by the rule names a recipe's ``source.adapt`` uses and checks
that the rule really produces the model's shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from recipec.errors import TransferError

__all__ = ["RULES", "adapt_input_channels", "apply_rule", "class_subset", "pos_embed_grids", "resample_pos_embed",
           "reshape", "truncate_pad"]

RULES: tuple[str, ...] = ("input_channels", "truncate_pad", "class_subset", "pos_embed", "reshape")
_MAX_PREFIX_TOKENS = 8  # class, distillation and register tokens: timm's largest models keep 1 + 4 + ...


def _shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first convolution's weight to images with ``in_channels`` channels.

    This is timm's ``adapt_input_conv`` (weight ``(out, in, *kernel)``, computed in float32
    and cast back to the weight's dtype), with ``I`` the weight's input channels:

    - ``in_channels == I``: the weight, unchanged.
    - ``in_channels == 1``: the filters summed over their input channels, so that a grey image
      gives the same activations as that image replicated to every source channel. As in timm,
      a space-to-depth stem (``I > 3`` and a multiple of 3) sums each RGB triple instead and
      keeps ``I // 3`` channels.
    - otherwise the source channels are repeated cyclically up to ``in_channels`` and scaled by
      ``I / in_channels``, which keeps the expected activation of an input whose channels are
      alike. For ``I == 3`` this is exactly timm's ``repeat(...)[:, :in_channels] * (3 / in_channels)``;
      for other ``I`` (e.g. an RGBA source, timm #2445, which timm refuses) it is the same rule.

    Args:
        weight: convolution weight of shape ``(out, in, *kernel)``.
        in_channels: channels of the images the adapted convolution will see.

    Returns:
        A new tensor (or ``weight`` itself when nothing changes) of the weight's dtype.

    Raises:
        TransferError: the weight is not a convolution weight, or ``in_channels < 1``.
    """
    if weight.dim() < 3:
        raise TransferError(f"input_channels needs a convolution weight (out, in, *kernel), got shape {_shape(weight.shape)}")
    if in_channels < 1:
        raise TransferError(f"input_channels: in_channels must be >= 1, got {in_channels}")
    out_channels, source_in, *kernel = weight.shape
    if in_channels == source_in:
        return weight
    # Half-precision sums are slow or missing on CPU and lose precision.
    w = weight.float()
    if in_channels == 1:
        if source_in > 3 and source_in % 3 == 0:
            w = w.reshape(out_channels, source_in // 3, 3, *kernel).sum(dim=2)
        else:
            w = w.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_channels / source_in)
        w = w.repeat(1, repeats, *([1] * len(kernel)))[:, :in_channels] * (source_in / in_channels)
    return w.to(weight.dtype)


def truncate_pad(source: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Copy the block ``source`` shares with ``shape`` into a zero tensor of that shape.

    Every dimension is sliced to the smaller of the two sizes; what the source lacks stays 0.

    Args:
        source: tensor of any rank.
        shape: the wanted shape, of the same rank.

    Returns:
        A new tensor of ``shape`` with the source's dtype and device.

    Raises:
        TransferError: the ranks differ.
    """
    shape = tuple(int(d) for d in shape)
    if source.dim() != len(shape):
        raise TransferError(
            f"truncate_pad cannot change the rank: source {_shape(source.shape)} has {source.dim()} dims, "
            f"the model's {_shape(shape)} has {len(shape)}")
    out = source.new_zeros(shape)
    block = tuple(slice(0, min(a, b)) for a, b in zip(source.shape, shape))
    out[block] = source[block]
    return out


def class_subset(source: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """Keep the rows ``indices`` (source classes, in the model's class order) along dim 0.

    Works for a classifier weight ``(classes, features)`` and its bias ``(classes,)`` alike.

    Args:
        source: tensor whose first dimension counts classes.
        indices: source rows to keep, in order; repeats are allowed.

    Returns:
        A new tensor of shape ``(len(indices), *source.shape[1:])``.

    Raises:
        TransferError: the source is a scalar, ``indices`` is empty, or an index is out of range.
    """
    if source.dim() == 0:
        raise TransferError("class_subset needs a tensor with a class dimension, got a scalar")
    if not indices:
        raise TransferError("class_subset needs at least one index")
    classes = source.shape[0]
    bad = [i for i in indices if not 0 <= i < classes]
    if bad:
        raise TransferError(
            f"class_subset indices out of range for {classes} source classes (0..{classes - 1}): "
            + ", ".join(str(i) for i in bad))
    return source.index_select(0, torch.as_tensor(list(indices), dtype=torch.long, device=source.device))


def reshape(source: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The same elements in ``shape``, in row-major order: ``source.reshape(shape)``.

    A Linear weight ``(out, in)`` and a 1x1 convolution's ``(out, in, 1, 1)`` hold the same
    numbers (ConvNeXt's pointwise layers: Hugging Face writes Linear, timm's ``conv_mlp`` models
    1x1 convs); so do CLIP's class embedding ``(dim,)`` and timm's ``cls_token`` ``(1, 1, dim)``.
    Nothing is transposed: a shape that needs a permutation is not this rule's.

    Raises:
        TransferError: the element counts differ.
    """
    shape = tuple(int(d) for d in shape)
    if source.numel() != math.prod(shape):
        raise TransferError(
            f"reshape keeps the element count, but source {_shape(source.shape)} has {source.numel():,} elements "
            f"and the model's {_shape(shape)} {math.prod(shape):,}")
    return source.reshape(shape)


def pos_embed_grids(source_len: int, target_len: int) -> tuple[int, int, int]:
    """``(prefix tokens, source side, target side)`` of two square-grid position embeddings.

    The prefix (class, distillation, register tokens kept before the patches) is the smallest
    count, up to 8, that leaves a square number of patch positions on both sides: 197 and 17
    tokens are 1 + 14x14 and 1 + 4x4.

    Raises:
        TransferError: no such count (a non-square grid; resample it yourself).
    """
    for prefix in range(min(_MAX_PREFIX_TOKENS, source_len - 1, target_len - 1) + 1):
        old, new = math.isqrt(source_len - prefix), math.isqrt(target_len - prefix)
        if old * old == source_len - prefix and new * new == target_len - prefix and old and new:
            return prefix, old, new
    raise TransferError(
        f"pos_embed: {source_len} and {target_len} positions are not a few prefix tokens plus two square "
        "patch grids; only square grids are resampled")


def resample_pos_embed(posemb: torch.Tensor, new_grid: int, *, prefix_tokens: int) -> torch.Tensor:
    """Resample an absolute position embedding ``(1, prefix + h*w, dim)`` to a ``new_grid`` square grid.

    timm's ``resample_abs_pos_embed`` (bicubic, antialiased, computed in float32 and cast back):
    the prefix tokens are kept as they are, the ``h x w`` patch positions are interpolated as an
    image with ``dim`` channels. Works for timm ViTs (``pos_embed``) and torchvision's
    (``encoder.pos_embedding``), so a ViT can be fine-tuned at another resolution.
    """
    dim = posemb.shape[-1]
    prefix, grid = posemb[:, :prefix_tokens], posemb[:, prefix_tokens:]
    side = math.isqrt(grid.shape[1])
    image = grid.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)   # (1, dim, h, w)
    image = F.interpolate(image, size=(new_grid, new_grid), mode="bicubic", antialias=True)
    grid = image.permute(0, 2, 3, 1).reshape(1, -1, dim).to(posemb.dtype)
    return torch.cat([prefix, grid], dim=1)


def apply_rule(
    rule: str, source: torch.Tensor, target_shape: torch.Size | Sequence[int], *, indices: Sequence[int] | None = None
) -> torch.Tensor:
    """Apply the adaptation ``rule`` to ``source`` and check it yields ``target_shape``.

    Args:
        rule: one of :data:`RULES`.
        source: the source tensor.
        target_shape: the shape of the model tensor it will be copied into.
        indices: ``class_subset`` only: the source rows to keep.

    Returns:
        A tensor of ``target_shape`` (in the source's dtype; the caller casts on copy).

    Raises:
        TransferError: an unknown rule, or one that cannot produce ``target_shape``; the message
            says why (e.g. which dimensions the rule cannot change).
    """
    target = tuple(int(d) for d in target_shape)
    have, want = _shape(source.shape), _shape(target)
    if rule == "input_channels":
        if source.dim() < 3 or source.dim() != len(target):
            raise TransferError(
                f"input_channels needs convolution weights (out, in, *kernel) of the same rank; source {have}, model {want}")
        if source.shape[0] != target[0] or tuple(source.shape[2:]) != target[2:]:
            raise TransferError(
                f"input_channels only changes dim 1 (input channels), but source {have} and model {want} "
                "also differ in output channels or kernel size")
        out = adapt_input_channels(source, target[1])
    elif rule == "truncate_pad":
        out = truncate_pad(source, target)
    elif rule == "class_subset":
        if indices is None:
            raise TransferError("class_subset needs indices: the source classes to keep, e.g. indices: [0, 3, 7]")
        if source.dim() != len(target) or tuple(source.shape[1:]) != target[1:]:
            raise TransferError(
                f"class_subset only selects rows of dim 0, but source {have} and model {want} differ in other dims")
        if len(indices) != target[0]:
            raise TransferError(
                f"class_subset keeps {len(indices)} classes but the model has {target[0]} (model shape {want}); "
                f"give exactly {target[0]} indices")
        out = class_subset(source, indices)
    elif rule == "pos_embed":
        if source.dim() != 3 or len(target) != 3 or source.shape[0] != 1 or target[0] != 1 or source.shape[2] != target[2]:
            raise TransferError(
                f"pos_embed resamples a position embedding (1, tokens, dim) of the same dim; source {have}, model {want}")
        prefix, _, new_grid = pos_embed_grids(source.shape[1], target[1])
        out = resample_pos_embed(source, new_grid, prefix_tokens=prefix)
    elif rule == "reshape":
        out = reshape(source, target)
    else:
        raise TransferError(f"unknown adapt rule {rule!r}; choose one of: {', '.join(RULES)}")
    if tuple(out.shape) != target:
        raise TransferError(f"{rule} turns source {have} into {_shape(out.shape)}, not the model's {want}")
    return out
