"""Tensor adaptation rules: exact formulas, the properties that make them right, and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recipec.errors import TransferError
from recipec.weights.adapt import RULES, adapt_input_channels, apply_rule, class_subset, truncate_pad


@pytest.fixture
def rgb_weight() -> torch.Tensor:
    return torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))  # (out, in, kH, kW)


# --------------------------------------------------------------------------- input_channels


def test_one_channel_is_the_sum_over_input_channels(rgb_weight: torch.Tensor) -> None:
    assert torch.equal(adapt_input_channels(rgb_weight, 1), rgb_weight.sum(dim=1, keepdim=True))


def test_grey_image_gives_the_same_activations_as_its_rgb_replica(rgb_weight: torch.Tensor) -> None:
    grey = torch.randn(2, 1, 9, 9, generator=torch.Generator().manual_seed(1))
    expected = F.conv2d(grey.expand(-1, 3, -1, -1), rgb_weight)
    torch.testing.assert_close(F.conv2d(grey, adapt_input_channels(rgb_weight, 1)), expected)


@pytest.mark.parametrize("in_channels", [2, 4, 5, 7])
def test_more_channels_repeat_rgb_and_rescale_like_timm(rgb_weight: torch.Tensor, in_channels: int) -> None:
    expected = rgb_weight.repeat(1, math.ceil(in_channels / 3), 1, 1)[:, :in_channels] * (3 / in_channels)
    assert torch.equal(adapt_input_channels(rgb_weight, in_channels), expected)


def test_four_channels_keep_rgb_filters_scaled_and_reuse_red_for_the_fourth(rgb_weight: torch.Tensor) -> None:
    adapted = adapt_input_channels(rgb_weight, 4)
    assert adapted.shape == (8, 4, 3, 3)
    torch.testing.assert_close(adapted[:, :3], rgb_weight * 0.75)
    torch.testing.assert_close(adapted[:, 3], rgb_weight[:, 0] * 0.75)


def test_same_channels_return_the_weight_unchanged(rgb_weight: torch.Tensor) -> None:
    assert adapt_input_channels(rgb_weight, 3) is rgb_weight


def test_space_to_depth_stem_sums_each_rgb_triple_like_timm() -> None:
    weight = torch.randn(4, 12, 3, 3)
    expected = weight.reshape(4, 4, 3, 3, 3).sum(dim=2)
    assert torch.equal(adapt_input_channels(weight, 1), expected)


def test_rgba_source_to_grey_sums_all_channels() -> None:
    weight = torch.randn(4, 4, 3, 3)  # timm refuses N-channel sources other than 3 (#2445)
    assert torch.equal(adapt_input_channels(weight, 1), weight.sum(dim=1, keepdim=True))


def test_rgba_source_to_rgb_repeats_cyclically_and_rescales_by_source_over_target() -> None:
    weight = torch.randn(4, 4, 3, 3)
    assert torch.equal(adapt_input_channels(weight, 3), weight[:, :3] * (4 / 3))
    assert torch.equal(adapt_input_channels(weight, 6), torch.cat([weight, weight[:, :2]], dim=1) * (4 / 6))


def test_half_weights_are_computed_in_float_and_cast_back(rgb_weight: torch.Tensor) -> None:
    adapted = adapt_input_channels(rgb_weight.half(), 1)
    assert adapted.dtype == torch.float16
    assert torch.equal(adapted, rgb_weight.half().float().sum(dim=1, keepdim=True).half())


def test_conv1d_and_conv3d_weights_adapt_too() -> None:
    assert adapt_input_channels(torch.randn(4, 3, 5), 1).shape == (4, 1, 5)
    assert adapt_input_channels(torch.randn(4, 3, 2, 2, 2), 5).shape == (4, 5, 2, 2, 2)


def test_input_channels_rejects_non_conv_weights() -> None:
    with pytest.raises(TransferError, match=r"convolution weight .* got shape \[10\]"):
        adapt_input_channels(torch.randn(10), 1)


# --------------------------------------------------------------------------- truncate_pad


def test_truncate_pad_copies_the_overlap_and_zeroes_the_rest() -> None:
    source = torch.arange(6.0).reshape(2, 3)
    out = truncate_pad(source, (3, 2))
    assert torch.equal(out, torch.tensor([[0.0, 1.0], [3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == source.dtype


def test_truncate_pad_handles_any_rank() -> None:
    source = torch.ones(2, 2, 2, 2)
    out = truncate_pad(source, (1, 3, 2, 1))
    assert out.sum() == 1 * 2 * 2 * 1 and out[:, 2:].abs().sum() == 0
    assert torch.equal(truncate_pad(torch.tensor(5.0), ()), torch.tensor(5.0))


def test_truncate_pad_refuses_a_rank_change() -> None:
    with pytest.raises(TransferError, match=r"cannot change the rank: source \[2,3\] has 2 dims"):
        truncate_pad(torch.ones(2, 3), (6,))


# --------------------------------------------------------------------------- class_subset


def test_class_subset_keeps_rows_in_the_given_order() -> None:
    weight, bias = torch.arange(12.0).reshape(6, 2), torch.arange(6.0)
    assert torch.equal(class_subset(weight, [4, 0]), torch.tensor([[8.0, 9.0], [0.0, 1.0]]))
    assert torch.equal(class_subset(bias, [4, 0, 4]), torch.tensor([4.0, 0.0, 4.0]))


def test_class_subset_names_every_index_out_of_range() -> None:
    with pytest.raises(TransferError, match=r"out of range for 6 source classes \(0\.\.5\): 6, -1, 9"):
        class_subset(torch.zeros(6), [0, 6, -1, 9])


# --------------------------------------------------------------------------- reshape


def test_reshape_turns_a_linear_into_the_1x1_conv_that_computes_the_same() -> None:
    linear = torch.nn.Linear(40, 160, bias=False)
    x = torch.randn(2, 40, 3, 3, generator=torch.Generator().manual_seed(1))  # (batch, channels, h, w)
    weight = apply_rule("reshape", linear.weight.detach(), torch.Size([160, 40, 1, 1]))
    assert weight.shape == (160, 40, 1, 1)
    as_conv = F.conv2d(x, weight)
    as_linear = linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # channels-last Linear, as HF ConvNeXt does
    assert torch.allclose(as_conv, as_linear, atol=1e-6)
    back = apply_rule("reshape", weight, torch.Size([160, 40]))
    assert torch.equal(back, linear.weight.detach())


# --------------------------------------------------------------------------- apply_rule


def test_rules_are_the_recipe_choices() -> None:
    from typing import get_args

    from recipec.recipe.spec import AdaptSpec

    literal, _ = get_args(AdaptSpec.model_fields["rule"].annotation)  # Literal[...] | None
    assert RULES == get_args(literal) == ("input_channels", "truncate_pad", "class_subset", "pos_embed", "reshape")


def test_apply_rule_dispatches_and_checks_the_shape(rgb_weight: torch.Tensor) -> None:
    assert apply_rule("input_channels", rgb_weight, torch.Size([8, 1, 3, 3])).shape == (8, 1, 3, 3)
    assert apply_rule("truncate_pad", rgb_weight, torch.Size([4, 3, 5, 5])).shape == (4, 3, 5, 5)
    assert apply_rule("class_subset", rgb_weight, torch.Size([2, 3, 3, 3]), indices=[1, 7]).shape == (2, 3, 3, 3)


@pytest.mark.parametrize(("rule", "source", "target", "indices", "reason"), [
    ("input_channels", (8, 3, 3, 3), (16, 1, 3, 3), None, r"only changes dim 1 .* \[8,3,3,3\] and model \[16,1,3,3\]"),
    ("input_channels", (10, 3), (10, 1), None, "needs convolution weights"),
    ("input_channels", (4, 6, 3, 3), (4, 1, 3, 3), None, r"turns source \[4,6,3,3\] into \[4,2,3,3\]"),
    ("class_subset", (10, 4), (3, 4), [0, 1], "keeps 2 classes but the model has 3"),
    ("class_subset", (10, 4), (2, 5), [0, 1], "only selects rows of dim 0"),
    ("class_subset", (10, 4), (2, 4), None, "needs indices"),
    ("truncate_pad", (10, 4), (40,), None, "cannot change the rank"),
    ("reshape", (160, 40), (160, 40, 2), None, r"keeps the element count, .* \[160,40\] has 6,400 elements and the "
                                                r"model's \[160,40,2\] 12,800"),
    ("resample", (10, 4), (40,), None, "unknown adapt rule 'resample'"),
])
def test_apply_rule_says_why_it_cannot_produce_the_shape(
        rule: str, source: tuple[int, ...], target: tuple[int, ...], indices: list[int] | None, reason: str) -> None:
    with pytest.raises(TransferError, match=reason):
        apply_rule(rule, torch.zeros(source), torch.Size(target), indices=indices)
