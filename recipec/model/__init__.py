"""What the network is: architectures and pretrained weights, heads, layer groups."""

from recipec.model.groups import LayerGroup, assign_groups, preset_groups
from recipec.model.heads import HeadInfo, build_head, default_head_path, replace_head
from recipec.model.pretrained import WeightsInfo, load_pretrained_state_dict, normalization_of
from recipec.model.zoo import build_architecture, list_architectures, set_input_channels

__all__ = [
    "HeadInfo",
    "LayerGroup",
    "WeightsInfo",
    "assign_groups",
    "build_architecture",
    "build_head",
    "default_head_path",
    "list_architectures",
    "load_pretrained_state_dict",
    "normalization_of",
    "preset_groups",
    "replace_head",
    "set_input_channels",
]
