"""Using a fine-tuned model: its classes and its exact preprocessing, from one export file.

:func:`load_predictor` reads an export (``model.safetensors``, ``model.pt``, a sharded index,
or ``model.onnx`` run with onnxruntime) and returns a :class:`Predictor`: the model, the class
names in output order, and ``transform``, the torchvision v2 transform that turns a PIL image
into the tensor the model was trained on. The preprocessing is read from the export's
provenance (``data.resize``, ``data.in_channels``, ``normalization``), never re-derived from
the weights, so it is the one the run applied:

1. the image is converted to RGB (as ``ImageFolder`` reads files);
2. ``shorter_side`` rule (pretrained weights' eval transform, :mod:`recipec.data.crops`): the
   PIL image's shorter side (``crop_mode`` ``squash``: both sides; ``border``: the longer side,
   then padding with the recorded ``fill``) is resized to ``resize_size`` with the recorded
   interpolation and the centre ``image_size`` square cut out; then the values are scaled to [0, 1] floats;
3. ``square`` rule: the values are scaled to [0, 1] floats, then the image is resized to
   ``image_size`` squared (bilinear, antialiased);
4. channels: RGB -> 1 channel is luminance (0.299 R + 0.587 G + 0.114 B); other counts repeat
   or drop channels cyclically;
5. normalised with the recorded mean and std (when the run normalised).

``recipec predict`` uses this same object, so the command line and Python agree. The
preprocessing as plain data and in words is :mod:`recipec.inference.preprocessing` (torch-free).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from recipec._files import open_regular
from recipec.compiler.compile import resolve_preprocessing
from recipec.data.crops import eval_resize
from recipec.data.transforms import Channels  # the training rule: an image predicted is the image trained on
from recipec.device import resolve_device
from recipec.errors import CheckpointError, UnreadableImageError
from recipec.inference.hub import read_hub, timm_hub_model
from recipec.inference.preprocessing import Preprocessing, preprocessing_of
from recipec.inference.pt2 import is_pt2, read_pt2_export
from recipec.inference.restore import model_from, read_export, read_onnx_export
from recipec.weights.onnx import onnx_session

__all__ = ["Predictor", "image_transform", "load_predictor", "open_image"]

# decoding bombs: PIL refuses images over this many pixels (its default warns at 89 M and errors at 2x)
_MAX_IMAGE_BYTES = 512 << 20


class _ToRGB:
    """PIL image -> RGB, as torchvision's ImageFolder loader reads every file; tensors pass through."""

    def __call__(self, image: Any) -> Any:
        return image.convert("RGB") if hasattr(image, "convert") else image

    def __repr__(self) -> str:
        return "ToRGB()"


def image_transform(prep: Preprocessing) -> v2.Compose:
    """The eval transform of :func:`preprocessing_of`'s description: PIL image -> normalised float tensor (C, H, W)."""
    size = prep["image_size"]
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), Channels(prep["in_channels"])]
    steps: list[Any] = [_ToRGB()]
    if prep["rule"] == "shorter_side":  # on the decoded PIL image, as the pretraining transforms did
        steps += [eval_resize(size, prep["resize_size"], prep["interpolation"], prep["crop_mode"], prep.get("fill")),
                  *to_tensor]
    else:
        steps += [*to_tensor, v2.Resize((size, size), antialias=True)]
    norm = prep["normalization"]
    if norm:
        steps.append(v2.Normalize(norm["mean"], norm["std"]))
    return v2.Compose(steps)


def open_image(path: str | os.PathLike[str]) -> Any:
    """A PIL image, fully decoded, from a regular file.

    Raises:
        UnreadableImageError: not a regular file, or not an image PIL can decode (the message names it).
    """
    try:
        with open_regular(path, what="image", error=UnreadableImageError, max_bytes=_MAX_IMAGE_BYTES) as f:
            image = Image.open(f)
            image.load()
    except UnreadableImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = "not an image format PIL can decode" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise UnreadableImageError(f"{os.fspath(path)}: unreadable image ({reason})") from exc
    return image


@dataclass
class Predictor:
    """A model with what it needs to be used: class names and its exact preprocessing.

    Attributes:
        model: the ``nn.Module`` in eval mode (``None`` for an ONNX export: ``session`` runs it).
        classes: the class names, in the order of the model's outputs.
        transform: PIL image -> normalised tensor (C, H, W), exactly as training prepared images.
        preprocessing: the same as plain data (:func:`preprocessing_of`).
        device: where ``model`` runs.
        session: the onnxruntime session of an ONNX export.
        path: the export it came from.
        recipe: the export's resolved recipe; provenance: its provenance (plain data).

    Example:
        >>> predictor = recipec.load_predictor("runs/quickstart/model.safetensors")
        >>> predictor.predict(Image.open("cat.png"), top_k=3)
        [{'class': 'cat', 'score': 0.93}, {'class': 'dog', 'score': 0.05}, ...]
    """

    model: torch.nn.Module | None
    classes: list[str]
    transform: v2.Compose
    preprocessing: Preprocessing
    device: Any = "cpu"
    session: Any = None
    path: str = ""
    recipe: Any = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw outputs (batch, classes), float32 on the CPU, for a batch of transformed images."""
        if self.session is not None:
            return _onnx_logits(self.session, batch)
        assert self.model is not None
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        with torch.inference_mode():
            out = self.model(batch.to(self.device, dtype))
        if isinstance(out, (tuple, list)):  # an auxiliary-head model in train mode would return several
            out = out[0]
        return out.float().cpu()

    def predict(self, images: Any, *, top_k: int = 5) -> Any:
        """The ``top_k`` classes of each image, highest score (softmax probability; a multilabel model:
        each class's sigmoid, see :meth:`labels` for those above the threshold) first.

        Args:
            images: a PIL image or image path, or a sequence of them.
            top_k: classes per image (at most the class count).

        Returns:
            For one image, a list of ``{"class": name, "score": probability}``; for a sequence, one
            such list per image.

        Raises:
            UnreadableImageError: a path that is not an image.
        """

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        tensors = [self.transform(open_image(x) if isinstance(x, (str, os.PathLike)) else x) for x in items]
        tops = self.top(torch.stack(tensors), top_k=top_k) if tensors else []
        return tops[0] if single else tops

    @property
    def task(self) -> str:
        """``multiclass`` (softmax scores) or ``multilabel`` (a sigmoid per class), as the export's recipe says."""
        return str(getattr(self.recipe, "task", "multiclass"))

    @property
    def threshold(self) -> float:
        """multilabel: a class is predicted when its sigmoid score is at least this (``multilabel.threshold``)."""
        spec = getattr(self.recipe, "multilabel", None)
        return float(spec.threshold) if spec is not None else 0.5

    @property
    def thresholds(self) -> list[float] | None:
        """multilabel with ``multilabel.tune_thresholds``: each class's threshold, tuned on validation and
        recorded in the export's provenance; None otherwise (every class uses :attr:`threshold`)."""
        tuned = (self.provenance.get("multilabel") or {}).get("thresholds")
        if not isinstance(tuned, dict) or set(tuned) != set(self.classes):
            return None
        return [float(tuned[c]) for c in self.classes]

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """(batch, classes) float64 scores of a transformed batch: softmax probabilities, or for a
        multilabel model each class's sigmoid."""

        logits = self.logits(batch).double()
        return torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=1)

    def labels(self, scores: torch.Tensor) -> list[list[dict[str, Any]]]:
        """multilabel: per image the classes scoring at least their threshold (:attr:`thresholds` when tuned,
        else :attr:`threshold`), highest first, as ``{"class": name, "score": sigmoid}``."""
        cuts = self.thresholds or [self.threshold] * len(self.classes)
        return [[{"class": self.classes[i], "score": float(row[i])}
                 for i in row.argsort(descending=True, stable=True).tolist() if row[i] >= cuts[i]]
                for row in scores]

    def top(self, batch: torch.Tensor, *, top_k: int = 5, scores: torch.Tensor | None = None) -> list[list[dict[str, Any]]]:
        """The ``top_k`` classes of each image of an already transformed batch (or of its ``scores``)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        probs = self.scores(batch) if scores is None else scores
        scores, index = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [[{"class": self.classes[i], "score": float(s)} for s, i in zip(row_s.tolist(), row_i.tolist())]
                for row_s, row_i in zip(scores, index)]


def load_predictor(path: str | os.PathLike[str], *, trust_factories: Collection[str] = (),
                   device: str | None = None) -> Predictor:
    """A :class:`Predictor` from an export alone: ``model.safetensors``, ``model.pt``, an index, ``model.onnx``
    (``model.int8.onnx`` too) or ``model.pt2``.

    Args:
        path: the export (a run directory: its checkpoint export; a hub folder: ``RUN/hub`` or any timm
            hub folder, its classes and preprocessing from ``config.json``).
        trust_factories: custom factories the export's recipe may import (see :func:`recipec.load`);
            an ONNX export builds nothing and needs none.
        device: ``cpu`` (default), ``cuda``, ``cuda:N``, ``mps``; ONNX runs on onnxruntime's CPU provider.

    Raises:
        CheckpointError: unreadable or foreign file, or one that records no classes.
        UntrustedFactoryError: as :func:`recipec.load`.

    Example:
        >>> predictor = recipec.load_predictor("runs/quickstart/model.safetensors")
        >>> predictor.classes, predictor.transform
        >>> predictor.predict(["a.png", "b.png"], top_k=3)
    """
    file = Path(path)
    found = read_hub(file)
    session: Any = None
    torch_device: Any = "cpu"
    if found is not None:
        recipe, provenance = found.recipe, found.provenance
        torch_device = resolve_device(device or "cpu")
        model = (timm_hub_model(found) if recipe is None else  # a foreign timm folder: config.json describes it
                 model_from(recipe, found.checkpoint, found.file, trust_factories=trust_factories)).to(torch_device)
    elif is_pt2(file):  # the exported graph runs on the CPU, in float32
        recipe, provenance, model = read_pt2_export(file)
    elif file.suffix == ".onnx":
        recipe, provenance = read_onnx_export(file)
        session = onnx_session(file)
        model = None
    else:
        recipe, provenance, checkpoint = read_export(file)
        torch_device = resolve_device(device or "cpu")
        model = model_from(recipe, checkpoint, file, trust_factories=trust_factories).to(torch_device)
    classes = provenance.get("classes")
    if not isinstance(classes, list) or not classes:
        head = recipe.model.head if recipe is not None else None
        if head is None:
            raise CheckpointError(f"{file}: records no class names and has no head; cannot name its predictions")
        classes = [str(i) for i in range(head.num_classes)]  # the run trained on unnamed classes
    prep = preprocessing_of(provenance, fallback=None if recipe is None else lambda: resolve_preprocessing(recipe),
                            in_channels=3 if recipe is None else recipe.model.in_channels)
    return Predictor(model=model, classes=[str(c) for c in classes], transform=image_transform(prep),
                     preprocessing=prep, device=torch_device, session=session, path=str(file), recipe=recipe,
                     provenance=provenance)


def _onnx_logits(session: Any, batch: torch.Tensor) -> torch.Tensor:
    feed = session.get_inputs()[0]
    x = batch.float().cpu().numpy()
    if isinstance(feed.shape[0], int) and feed.shape[0] != x.shape[0]:  # a fixed batch dimension: one at a time
        outs = [session.run(None, {feed.name: x[i:i + feed.shape[0]]})[0] for i in range(0, len(x), feed.shape[0])]
        return torch.cat([torch.from_numpy(o) for o in outs]).float()
    return torch.from_numpy(session.run(None, {feed.name: x})[0]).float()

