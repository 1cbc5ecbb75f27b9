"""What the network is: model families (torchvision, timm, your own factory), heads, layer groups, pretrained weights."""

from recipec.model.families import (
    Family,
    build_architecture,
    default_head_path,
    family_of,
    load_pretrained_weights,
    preset_groups,
    replace_head,
    weights_normalization,
    weights_preprocessing,
)
from recipec.model.groups import LayerGroup, assign_groups
from recipec.model.heads import HeadInfo, build_head
from recipec.model.pretrained import WeightsInfo, load_pretrained_state_dict, normalization_of
from recipec.model.zoo import list_architectures, set_input_channels

__all__ = [
    "Family",
    "HeadInfo",
    "LayerGroup",
    "WeightsInfo",
    "assign_groups",
    "build_architecture",
    "build_head",
    "default_head_path",
    "family_of",
    "list_architectures",
    "load_pretrained_state_dict",
    "load_pretrained_weights",
    "normalization_of",
    "preset_groups",
    "replace_head",
    "set_input_channels",
    "weights_normalization",
    "weights_preprocessing",
]
