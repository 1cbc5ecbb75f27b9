"""Stand-ins for transformers vision models on the Hugging Face Hub: tiny random models saved with
``save_pretrained`` (and their image processors'), in a local folder or in the exact hub cache layout
(``models--org--name/snapshots/<commit>/...`` plus ``refs/main``), offline.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
SIDE = 32  # the image side every tiny model is configured for


def _tiny(kind: str) -> tuple[Any, Any]:
    """(a tiny random transformers model, its image processor) of one family."""
    import transformers as t

    attention = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": SIDE,
                 "patch_size": 8}
    if kind == "vit":
        return (t.ViTForImageClassification(t.ViTConfig(intermediate_size=32, num_labels=7, **attention)),
                t.ViTImageProcessor(size={"height": SIDE, "width": SIDE}))
    if kind == "dinov2":
        return (t.Dinov2Model(t.Dinov2Config(mlp_ratio=2, **attention)),   # a backbone repository, as facebook/dinov2-*
                t.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": SIDE, "width": SIDE}))
    if kind == "convnext":
        return (t.ConvNextForImageClassification(t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                                                  num_labels=4)),
                t.ConvNextImageProcessor(size={"shortest_edge": SIDE}, crop_pct=0.875))
    if kind == "swin":
        return (t.SwinForImageClassification(t.SwinConfig(image_size=SIDE, patch_size=4, embed_dim=8, depths=[1, 1],
                                                          num_heads=[1, 2], window_size=4, num_labels=3)),
                t.ViTImageProcessor(size={"height": SIDE, "width": SIDE}, resample=3))
    if kind == "clip":
        return (t.CLIPVisionModel(t.CLIPVisionConfig(intermediate_size=32, **attention)),
                t.CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}))
    if kind == "siglip":
        return (t.SiglipVisionModel(t.SiglipVisionConfig(intermediate_size=32, **attention)),
                t.SiglipImageProcessor(size={"height": SIDE, "width": SIDE}))
    raise ValueError(kind)


KINDS = ("vit", "dinov2", "convnext", "swin", "clip", "siglip")


def save_folder(folder: Path, kind: str, *, seed: int = 7) -> dict[str, torch.Tensor]:
    """A tiny random model of ``kind`` saved with save_pretrained into ``folder``; its state dict."""
    import transformers

    torch.manual_seed(seed)
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        model, processor = _tiny(kind)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_to_cache(cache: Path, repo: str, kind: str, *, seed: int = 7) -> dict[str, torch.Tensor]:
    """The same, laid out where the hub cache (``HF_HUB_CACHE``) keeps ``repo`` at ``main``."""
    base = cache / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / COMMIT
    state = save_folder(snapshot, kind, seed=seed)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(COMMIT)
    return state


def as_bin_only(folder: Path) -> None:
    """Replace a folder's model.safetensors by pytorch_model.bin (a legacy repository)."""
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def remove(folder: Path) -> None:
    shutil.rmtree(folder)
