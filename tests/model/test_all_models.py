"""Every torchvision classification model builds, takes a new head and classifies a small batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from recipec.model import families, zoo

# Smallest input side each model accepts here (and the kwargs that make it that small).
# 28: stride-32 nets pool a 1x1 map. vit: image_size shrinks the position embedding, patches
# stay. maxvit: its partitions of 7 need a multiple of 224. inception_v3: 75 at least.
_SIZES: dict[str, int] = {
    "alexnet": 64,
    **dict.fromkeys(["convnext_base", "convnext_large", "convnext_small", "convnext_tiny"], 32),
    **dict.fromkeys(["densenet121", "densenet161", "densenet169", "densenet201"], 32),
    **dict.fromkeys([f"efficientnet_b{i}" for i in range(8)], 28),
    **dict.fromkeys(["efficientnet_v2_l", "efficientnet_v2_m", "efficientnet_v2_s"], 28),
    "googlenet": 28,
    "inception_v3": 75,
    "maxvit_t": 224,
    **dict.fromkeys(["mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"], 28),
    **dict.fromkeys(["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"], 28),
    **dict.fromkeys([f"regnet_{k}_{s}" for k in "xy" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")], 28),
    "regnet_y_128gf": 28,
    **dict.fromkeys(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"], 28),
    **dict.fromkeys(["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"], 28),
    **dict.fromkeys(["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"], 28),
    **dict.fromkeys(["squeezenet1_0", "squeezenet1_1"], 28),
    **dict.fromkeys(["swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"], 28),
    **dict.fromkeys([f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")], 32),
    **dict.fromkeys(["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32"], 32),
    "vit_h_14": 28,
}

# Over ~3 s to build and run here with one thread (random init of 100M+ parameters, mostly).
_SLOW = {
    "convnext_large", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l", "regnet_x_32gf", "regnet_y_128gf",
    "regnet_y_32gf", "swin_b", "swin_v2_b", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2",
}


def _kwargs(arch: str, size: int) -> dict[str, Any]:
    family = zoo.family_of(arch)
    if family == "vit":
        return {"image_size": size}
    if family == "maxvit":
        return {"input_size": (size, size)}
    return {}


def _params() -> list[Any]:
    return [pytest.param(arch, marks=pytest.mark.slow) if arch in _SLOW else arch for arch in zoo.list_architectures()]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Faster than the default here: the machine's cores are shared and these tensors are tiny.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_table_covers_every_architecture() -> None:
    assert sorted(_SIZES) == zoo.list_architectures()
    assert set(_SIZES) >= _SLOW


@pytest.mark.parametrize("arch", _params())
def test_new_head_classifies(arch: str) -> None:
    torch.manual_seed(0)
    size = _SIZES[arch]
    model = families.build_architecture(arch, _kwargs(arch, size))
    info = families.replace_head(model, arch, num_classes=7)
    model.eval()

    seen: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: seen.append(m)) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    for hook in hooks:
        hook.remove()

    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert seen[0] is model.get_submodule(zoo.first_conv_path(model))
    assert info.param_prefix == info.path + "."
    new_keys = [k for k in model.state_dict() if k.startswith(info.param_prefix)]
    assert new_keys and sum(model.state_dict()[k].numel() for k in new_keys) == info.num_params
    if hasattr(model, "num_classes"):
        assert model.num_classes == 7
