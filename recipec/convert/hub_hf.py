"""The hub folder of an ``hf/`` run: transformers' ``save_pretrained`` layout (:func:`hf_hub_files`).

``config.json`` is the model's transformers config with the run's classes (``id2label``, ``label2id``,
``num_labels``) and ``architectures`` naming the image classifier recipec built; ``model.safetensors``
holds transformers' own tensor names (recipec's ``hf.`` prefix stripped: the head sits in the
classifier's place, ``classifier.weight``/``bias``); ``preprocessor_config.json`` is the run's eval
preprocessing as a ``BitImageProcessor`` config. So::

    AutoModelForImageClassification.from_pretrained("RUN/hub")   # the run's logits
    AutoImageProcessor.from_pretrained("RUN/hub")                # the run's eval transform

Only a model transformers builds whole can have the layout: an ``...ForImageClassification`` (ViT,
DINOv2, ConvNeXt, Swin) whose classifier recipec replaced by a linear head (with or without dropout:
the same keys). An mlp head, or recipec's head on a vision tower without a classifier (``AutoModel``:
CLIP, SigLIP) is refused: transformers' ``CLIPForImageClassification`` and ``SiglipForImageClassification``
pool the mean of the last hidden state's (patch) tokens, where recipec's head takes ``pooler_output``
(CLIP's [CLS] token after ``post_layernorm``, SigLIP's attention-pooling head), so their logits would differ.

The image processor resizes the decoded 8-bit image (torchvision on a uint8 tensor, antialiased):
recipec's resize (of the PIL image, or of the float image for the square resize of a run without
pretrained weights) gives the same sizes, and pixels at most 1/255 apart before normalisation. The
centre crop can sit one pixel apart: torchvision rounds its offset, transformers truncates it, so
where the margin (resized minus cropped side) is 3 mod 4 the two crops differ by a one-pixel shift.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from recipec.errors import ExportError
from recipec.inference.preprocessing import Preprocessing
from recipec.model.hf import HFClassifier, hub_layout_problem, quiet

__all__ = ["PROCESSOR_FILE", "hf_hub_files"]

PROCESSOR_FILE = "preprocessor_config.json"
_PREFIX = "hf."
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL's numbers, as image processor configs write them


def hf_hub_files(model: nn.Module, state: Mapping[str, torch.Tensor], *, classes: list[str],
                 prep: Preprocessing) -> tuple[Any, dict[str, Any], dict[str, torch.Tensor]]:
    """What ``save_pretrained`` would write for ``model``: its config, its image processor config, its tensors.

    Args:
        model: the fine-tuned :class:`recipec.model.hf.HFClassifier`.
        state: the exported tensors (``export.dtype`` applied), under recipec's names (``hf.<...>``).
        classes: the class names in output order.
        prep: the run's eval preprocessing.

    Returns:
        ``(config, processor, tensors)``: a transformers config to write with ``to_json_file``, the
        ``preprocessor_config.json`` data, and the tensors under transformers' names.

    Raises:
        ExportError: not a transformers image classifier with a linear head, or a resize transformers'
            image processor cannot do.
    """
    if not isinstance(model, HFClassifier):
        raise ExportError(f"hub folder: expected the model recipec builds for hf/, got {type(model).__name__}")
    name = type(model.hf).__name__
    why = hub_layout_problem(model)
    if why:
        raise ExportError(f"hub folder: {why}")
    tensors = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    assert len(tensors) == len(state), sorted(set(state) - {_PREFIX + k for k in tensors})[:5]
    config = copy.deepcopy(model.config)
    config.num_labels = len(classes)  # resets id2label/label2id to LABEL_i: set them after
    config.id2label = dict(enumerate(classes))
    config.label2id = {c: i for i, c in enumerate(classes)}
    config.architectures = [name]
    dtype = next((v.dtype for v in tensors.values() if v.is_floating_point()), torch.float32)
    config.dtype = str(dtype).removeprefix("torch.")  # from_pretrained's dtype="auto" reads it
    _check_fits(model, config, tensors)
    return config, processor_config(prep), tensors


def processor_config(prep: Preprocessing) -> dict[str, Any]:
    """The run's eval preprocessing as a ``BitImageProcessor`` config (``preprocessor_config.json``).

    ``square``: both sides to ``image_size``; ``shorter_side``: the shorter side to ``resize_size``
    (``squash``: both sides), then the centre ``image_size`` square.

    Raises:
        ExportError: a ``border`` crop (a padded longer side), which transformers' processors do not do.
    """
    size, resized = prep["image_size"], prep["resize_size"]
    if prep["rule"] == "shorter_side" and prep["crop_mode"] == "border":
        raise ExportError("hub folder: data.resize crop_mode border pads the image, which transformers' image "
                          "processors cannot; use crop_mode center or squash, or drop hub from export.formats")
    if prep["rule"] == "square":
        resize: dict[str, int] = {"height": size, "width": size}
    elif prep["crop_mode"] == "squash":
        resize = {"height": resized, "width": resized}
    else:
        resize = {"shortest_edge": resized}
    norm = prep["normalization"]
    return {
        "image_processor_type": "BitImageProcessor", "do_convert_rgb": True,
        "do_resize": True, "size": resize, "resample": _RESAMPLE[prep["interpolation"]],
        "do_center_crop": resize != {"height": size, "width": size}, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": norm is not None,
        "image_mean": list(norm["mean"]) if norm else [0.0, 0.0, 0.0],
        "image_std": list(norm["std"]) if norm else [1.0, 1.0, 1.0],
    }


def _check_fits(model: HFClassifier, config: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """The tensors against the model transformers builds from ``config``: the same keys and shapes."""
    name = type(model.hf).__name__
    try:
        with quiet(), torch.device("meta"):  # shapes only: nothing is allocated
            expected = type(model.hf)(config).state_dict()
    except (RuntimeError, NotImplementedError):  # a model whose construction computes on its tensors
        with quiet():
            expected = type(model.hf)(config).state_dict()
    library = f"transformers' {name}"
    problems = [f"{library} has {k!r}, which the model lacks" for k in sorted(set(expected) - set(tensors))[:10]]
    problems += [f"the model has {k!r}, which {library} lacks" for k in sorted(set(tensors) - set(expected))[:10]]
    problems += [f"{k!r} has shape {list(tensors[k].shape)}, {library} {list(v.shape)}"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape][:10]
    if problems:
        raise ExportError([*(f"hub folder: {p}" for p in problems),
                           f"hub folder: {library} (a linear classifier) would not load these weights; use "
                           "model.head.type: linear, or drop hub from export.formats"])
