"""transformers vision models (``model.arch: hf/<repo id or folder>``): config, class, and a forward that gives logits.

transformers is an optional extra (``pip install 'recipec[hf]'``), imported only when a recipe names
an ``hf/`` model. A model is built from its ``config.json`` by transformers' own classes, chosen by
the config's ``model_type`` alone: ``AutoModelForImageClassification`` where the architecture has an
image classifier (ViT, DINOv2, ConvNeXt, Swin, ...), else ``AutoModel`` with recipec's head on the
pooled output (CLIP and SigLIP vision towers). Never ``trust_remote_code``: a config that names code
of its own (``auto_map``) or a ``model_type`` transformers does not implement is refused, whether it
comes from a repository or from an export's metadata (where it is data, never code).

:class:`HFClassifier` holds the transformers model at ``hf`` and returns logits, not a ``ModelOutput``.
Files are found by :mod:`recipec.model.hf_files`, weights read by :mod:`recipec.model.hf_weights`,
heads and layer groups by :mod:`recipec.model.hf_groups`.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from recipec.errors import ModelError
from recipec.model.hf_files import CONFIG, PROCESSOR, locate, read_json
from recipec.recipe.archs import HF_INSTALL, hf_config_problem

__all__ = ["RECORD_KEY", "HFClassifier", "build_hf", "hf_config", "hf_record", "hub_layout_problem", "import_transformers",
           "model_class", "quiet"]

RECORD_KEY = "hf_model"  # the export provenance key holding the config (and image processor) the model was built from
# config fields a recipe or a file must not set: code, kernels or quantisation backends would be chosen by them
_REFUSED = ("auto_map", "trust_remote_code", "quantization_config", "attn_implementation", "_attn_implementation")
# how each image classifier of transformers pools before its classifier (said in the plan)
_POOLING = {
    "vit": "the [CLS] token after the final layer norm",
    "deit": "the [CLS] token after the final layer norm",
    "dinov2": "the [CLS] token and the mean of the patch tokens, concatenated (as DINOv2's linear probes)",
    "dinov2_with_registers": "the [CLS] token and the mean of the patch tokens, concatenated (as DINOv2's linear probes)",
    "convnext": "the global average of the last feature map, layer-normed",
    "convnextv2": "the global average of the last feature map, layer-normed",
    "swin": "the average of the last stage's tokens after a layer norm",
    "swinv2": "the average of the last stage's tokens after a layer norm",
    "clip": "the mean of the patch tokens",
    "siglip": "the mean of the patch tokens",
    "clip_vision_model": "the [CLS] token after post_layernorm (pooler_output)",
    "siglip_vision_model": "SigLIP's attention-pooling head (pooler_output)",
}


def import_transformers() -> Any:
    """The ``transformers`` module, imported on first use.

    Raises:
        ModelError: at ``model.arch``: transformers is not installed (with the install command).
    """
    try:
        import transformers  # noqa: PLC0415  (optional extra, imported when a recipe names an hf/ model)
    except ImportError as exc:
        raise ModelError((("model", "arch"), (
            f"hf/ architectures need the hf extra (transformers), which is not installed ({exc}); run: {HF_INSTALL}"))) from exc
    return transformers


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """transformers' load reports, progress bars and warnings kept off the terminal (recipec reports itself)."""
    logging = import_transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


class HFClassifier(nn.Module):
    """A transformers vision model that maps images ``(batch, 3, H, W)`` to logits ``(batch, classes)``.

    Attributes:
        hf: the transformers model (its tensors are named ``hf.<transformers' own name>``).
        head: recipec's head on the pooled output, for a model without an image classifier of its
            own (``AutoModel``); None when ``hf`` is an ``...ForImageClassification`` whose ``logits`` are returned.
        pooling: ``pooler_output``, ``mean`` (of the tokens, or over the feature map) or ``logits``.
        width: features the pooled output has (the head's input).
        source: what an export records to rebuild it (:func:`hf_record`): the image processor config,
            the repository and its commit.
    """

    def __init__(self, hf: nn.Module, *, pooling: str, width: int, source: Mapping[str, Any]) -> None:
        super().__init__()
        self.hf = hf
        self.head: nn.Module | None = None
        self.pooling = pooling
        self.width = width
        self.source = dict(source)
        # ViT, CLIP, SigLIP check the image size against the config unless asked to resample their
        # position embeddings (DINOv2 always does): data.image_size may differ from the pretraining size
        self.interpolate = "interpolate_pos_encoding" in inspect.signature(hf.forward).parameters

    def forward(self, x: Tensor) -> Tensor:
        extra = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.hf(pixel_values=x, return_dict=True, **extra)
        if self.pooling == "logits":
            return out.logits  # (batch, classes)
        if self.head is None:
            raise RuntimeError("this hf/ model has no head yet: replace_head puts one on its pooled output")
        if self.pooling == "pooler_output":
            features = out.pooler_output.flatten(1)  # (batch, width)
        else:
            hidden = out.last_hidden_state  # (batch, tokens, width) or (batch, width, h, w)
            features = hidden.mean(1) if hidden.dim() == 3 else hidden.mean((2, 3))
        return self.head(features)  # type: ignore[no-any-return]

    @property
    def config(self) -> Any:
        """The transformers config of ``hf``."""
        return self.hf.config

    def describe(self) -> str:
        """One line for the plan: the transformers class, the Auto class that chose it, and the pooling."""
        model_type = str(getattr(self.config, "model_type", ""))
        words = _POOLING.get(model_type)
        name = type(self.hf).__name__
        if self.pooling == "logits":
            return (f"{name} (AutoModelForImageClassification); its classifier takes "
                    f"{words or 'what transformers pools for ' + model_type}")
        pooled = {"pooler_output": words or "its pooler_output", "mean": "the mean of its last hidden state"}[self.pooling]
        return (f"{name} (AutoModel: transformers has no image classifier for model_type {model_type}); "
                f"recipec's head takes {pooled}")


def hf_config(data: Mapping[str, Any], kwargs: Mapping[str, Any], *, where: str) -> Any:
    """The transformers config of ``config.json`` data, ``model.kwargs`` applied on top.

    Raises:
        ModelError: at ``model.arch``: code of its own (``auto_map``), a ``model_type`` the installed
            transformers does not implement, or a quantised model; at ``model.kwargs.<key>``: a key the
            config does not have, or one that would choose code (``trust_remote_code``, ``attn_implementation``).
    """
    transformers = import_transformers()
    problem = hf_config_problem(dict(data), where)
    if problem:
        raise ModelError((("model", "arch"), problem))
    model_type = str(data["model_type"])
    mapping = transformers.models.auto.configuration_auto.CONFIG_MAPPING
    if model_type not in mapping:
        raise ModelError((("model", "arch"), (
            f"{where}: model_type {model_type!r} is not one transformers {transformers.__version__} implements; "
            "recipec builds only transformers' own architectures (a model_type of the repository's own needs its "
            "code, which recipec never runs), or upgrade transformers")))
    if "quantization_config" in data:
        raise ModelError((("model", "arch"), f"{where}: a quantised model (quantization_config) cannot be fine-tuned here"))
    config_class = mapping[model_type]
    known = set(config_class().to_dict())
    bad = [(("model", "kwargs", key), _kwarg_problem(key, known, config_class.__name__))
           for key in kwargs if key in _REFUSED or key.endswith("_implementation") or key not in known]
    if bad:
        raise ModelError(bad)
    clean = {k: v for k, v in data.items() if not k.startswith("_") and k not in _REFUSED and not k.endswith("_implementation")}
    try:
        with quiet():
            return config_class.from_dict({**clean, **kwargs})
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError((("model", "kwargs") if kwargs else ("model", "arch"), (
            f"{where}: transformers' {config_class.__name__} rejected it{' with model.kwargs' if kwargs else ''}: "
            f"{type(exc).__name__}: {exc}"))) from exc


def _kwarg_problem(key: str, known: set[str], config_name: str) -> str:
    if key in _REFUSED or key.endswith("_implementation"):
        return "chooses code, kernels or a quantisation backend, which a recipe does not (recipec builds transformers' own eager/sdpa model)"
    close = difflib.get_close_matches(key, sorted(known), n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"not a field of {config_name}; {hint}hf/ kwargs change fields of the repository's config.json"


def model_class(config: Any) -> tuple[str, Any]:
    """``("AutoModelForImageClassification" or "AutoModel", transformers class)`` for a config, by its type alone.

    Raises:
        ModelError: at ``model.arch``: transformers has no model for it, or not a vision one (no ``pixel_values``).
    """
    auto = import_transformers().models.auto.modeling_auto
    kinds = [(name, mapping) for name, mapping in (
        ("AutoModelForImageClassification", auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING),
        ("AutoModel", auto.MODEL_MAPPING)) if type(config) in mapping]
    if not kinds:
        raise ModelError((("model", "arch"), f"transformers has no model for model_type {config.model_type!r}"))
    name, mapping = kinds[0]
    found = mapping[type(config)]
    if isinstance(found, (list, tuple)):  # as transformers picks: the one config.architectures names
        named = [c for c in found if c.__name__ in (getattr(config, "architectures", None) or ())]
        found = (named or list(found))[0]
    if "pixel_values" not in inspect.signature(found.forward).parameters:
        raise ModelError((("model", "arch"), (
            f"{found.__name__} (model_type {config.model_type!r}) is not a vision model: its forward takes no "
            "pixel_values; recipec fine-tunes image classifiers")))
    return name, found


def build_hf(arch: str, kwargs: Mapping[str, Any], *, weights: str | None,
             recorded: Mapping[str, Any] | None = None) -> HFClassifier:
    """The transformers model ``arch`` names, random weights, in training mode; nothing downloaded
    unless ``RECIPEC_ALLOW_DOWNLOAD=1``.

    Args:
        arch: ``hf/<repo id>`` (read from the local Hugging Face cache) or ``hf/./<folder>``.
        kwargs: config fields to change (``model.kwargs``).
        weights: ``model.weights``: the revision whose ``config.json`` is read (``DEFAULT``/None: ``main``).
        recorded: an export's provenance: its ``hf_model`` record is built from instead of the
            repository, which need not be there (see :func:`hf_record`).

    Raises:
        ModelError: transformers missing, a config refused (see :func:`hf_config`), or one transformers cannot build.
        WeightsUnavailableError: the repository is not in the local cache, downloads not allowed.
    """
    record = (recorded or {}).get(RECORD_KEY)
    if isinstance(record, Mapping) and isinstance(record.get("config"), Mapping):
        data, where = record["config"], f"the {RECORD_KEY} config recorded in the export"
        source = {k: v for k, v in record.items() if k != "config"}
    else:
        files = locate(arch, weights, with_weights=False)
        data, where = read_json(files.folder, CONFIG, required=True), str(files.folder / CONFIG)
        source = {"repo": files.repo, "commit": files.commit,
                  "image_processor": read_json(files.folder, PROCESSOR, required=False)}
    assert data is not None
    config = hf_config(data, kwargs, where=where)
    auto, cls = model_class(config)
    transformers = import_transformers()
    try:
        with quiet():
            # float32 whatever dtype the config names (a bfloat16 checkpoint's): recipec trains in float32
            hf = getattr(transformers, auto).from_config(config).float()
    except (TypeError, ValueError, AttributeError, AssertionError, RuntimeError, KeyError, IndexError) as exc:
        raise ModelError((("model", "kwargs") if kwargs else ("model", "arch"), (
            f"{arch}: transformers could not build {cls.__name__} from {where}: {type(exc).__name__}: {exc}"))) from exc
    assert type(hf) is cls, (type(hf), cls)
    pooling, width = ("logits", 0) if auto == "AutoModelForImageClassification" else _probe(hf, config)
    return HFClassifier(hf, pooling=pooling, width=width, source=source).train()


def _probe(hf: nn.Module, config: Any) -> tuple[str, int]:
    """How to pool a model without a classifier, and the width of what it gives: one forward of a blank image."""
    size = getattr(config, "image_size", 224)
    side = int(size[0] if isinstance(size, (list, tuple)) else size)
    was = hf.training
    hf.eval()
    try:
        with torch.no_grad(), quiet():
            out = hf(pixel_values=torch.zeros(1, int(getattr(config, "num_channels", 3)), side, side), return_dict=True)
    finally:
        hf.train(was)
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return "pooler_output", int(pooled.flatten(1).shape[1])
    hidden = out.last_hidden_state  # (1, tokens, width) or (1, width, h, w)
    return "mean", int(hidden.shape[-1] if hidden.dim() == 3 else hidden.shape[1])


def hub_layout_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot have a hub folder in transformers' ``save_pretrained`` layout (None when it can).

    Only an ``...ForImageClassification`` can: recipec's head on a tower without one (CLIP, SigLIP vision
    models) takes ``pooler_output``, while transformers' ``CLIPForImageClassification`` and
    ``SiglipForImageClassification`` pool the mean of the last hidden state's (patch) tokens, so their
    logits would differ.
    """
    if not isinstance(model, HFClassifier) or model.pooling == "logits":
        return None
    name = type(model.hf).__name__
    pooled = {"pooler_output": "pooler_output", "mean": "mean of the last hidden state"}[model.pooling]
    return (f"{name} has no image classifier in transformers whose pooling is recipec's: recipec's head takes its "
            f"{pooled}, transformers' {name.replace('VisionModel', '')}ForImageClassification the mean of the "
            "last hidden state's tokens, which gives other logits; drop hub from export.formats "
            "(model.safetensors loads with recipec.load)")


def hf_record(model: nn.Module) -> dict[str, Any]:
    """What an export of an ``hf/`` model carries in its provenance (under ``hf_model``) so that
    ``recipec.load`` rebuilds it from the file alone: the config it was built from (``model.kwargs`` and
    the new class count applied), the image processor config, the repository and its commit.
    Empty for any other model."""
    if not isinstance(model, HFClassifier):
        return {}
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}
    return {RECORD_KEY: {"config": config, "class": type(model.hf).__name__, **model.source}}
