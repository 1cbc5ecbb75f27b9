"""timm backbones (``model.arch: timm/<name>``): architectures, pretrained weights, heads and groups.

timm is an optional extra (``pip install 'recipec[timm]'``) and is imported only here, when a
recipe names a timm model. Weights are read offline-first, by the policy torchvision's follow:
from the local Hugging Face hub cache (``$HF_HOME/hub/models--timm--<name>.<tag>/...``), or for
the few timm weights not on the hub from torch hub's cache, and downloaded only when
``RECIPEC_ALLOW_DOWNLOAD=1``. Files are read by :mod:`recipec.weights.formats` (safetensors, or
torch with ``weights_only=True``), never by timm's own loader.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from recipec.errors import ModelError, WeightsUnavailableError

__all__ = ["PREFIX", "build_timm", "downloads_blocked", "is_timm", "load_timm_weights", "replace_timm_head",
           "resolve_tag", "timm_groups", "timm_head_paths"]

PREFIX = "timm/"
INSTALL = "pip install 'recipec[timm]'"
# create_model arguments that would fetch or load weights behind model.weights
_WEIGHT_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "pretrained_strict")
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's load_state_dict_from_hf tries, in order


def is_timm(arch: str) -> bool:
    """Whether ``model.arch`` names a timm model (``timm/convnext_tiny``)."""
    return arch.startswith(PREFIX)


def _timm() -> Any:
    try:
        import timm
        import timm.models
    except ImportError as exc:
        raise ModelError((("model", "arch"), (
            f"timm architectures need the timm extra, which is not installed ({exc}); run: {INSTALL}"))) from exc
    return timm


def _name(arch: str) -> str:
    timm = _timm()
    name = arch[len(PREFIX):]
    if not timm.models.is_model(name) or "." in name:
        names = timm.list_models()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(PREFIX + n) for n in close)}? " if close else ""
        raise ModelError((("model", "arch"), (
            f"unknown timm architecture {name!r}; {hint}(any of timm's {len(names)} models, timm.list_models(); "
            "the pretrained tag goes in model.weights, not after a dot)")))
    return name


def resolve_tag(arch: str, weights: str) -> str:
    """The pretrained tag ``weights`` names for ``arch``: itself, or timm's default tag for ``DEFAULT``.

    Raises:
        ModelError: at ``model.weights``: no such tag (listing the model's tags), or none at all.
    """
    timm = _timm()
    name = _name(arch)
    tags = [p.partition(".")[2] for p in timm.list_pretrained(f"{name}.*")]
    if weights == "DEFAULT" and tags:
        return str(timm.models.get_pretrained_cfg(name).tag or tags[0])
    if weights not in tags:
        close = difflib.get_close_matches(weights, tags, n=2)
        hint = f"did you mean {' or '.join(repr(t) for t in close)}? " if close else ""
        listing = ", ".join(tags) if tags else "none: train it from model.weights: null"
        raise ModelError((("model", "weights"), (
            f"unknown pretrained tag {weights!r} for {arch}; {hint}timm's tags: {listing} (or DEFAULT, or null)")))
    return weights


def build_timm(arch: str, kwargs: Mapping[str, Any], *, weights: str | None = None) -> nn.Module:
    """``timm.create_model`` by name, random weights, nothing fetched.

    With ``weights`` the model is built from that tag's pretrained config (``in21k`` tags bring
    their 21,843 classes, 384-px tags their image size), so the weights fit it exactly.

    Raises:
        ModelError: timm missing, an unknown name or tag, or ``kwargs`` create_model rejects.
    """
    timm = _timm()
    name = _name(arch)
    bad = [k for k in _WEIGHT_KWARGS if k in kwargs]
    if bad:
        raise ModelError([(("model", "kwargs", k), (
            "recipec loads weights itself, offline-first: set model.weights to a pretrained tag (or DEFAULT), "
            "or load a file with source.checkpoint") ) for k in bad])
    full = f"{name}.{resolve_tag(arch, weights)}" if weights is not None else name
    try:
        with downloads_blocked():
            return timm.create_model(full, pretrained=False, **dict(kwargs))
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ModelError((("model", "kwargs"), f"{arch} rejected its arguments {dict(kwargs)!r}: {exc}")) from exc


@contextlib.contextmanager
def downloads_blocked() -> Iterator[None]:
    """No hub or URL download while building, unless ``RECIPEC_ALLOW_DOWNLOAD=1``.

    A ``package.module:factory`` (``timm:create_model`` with ``pretrained: true``) would otherwise
    fetch weights behind the offline policy: the hub is put offline (cached files still load) and
    torch hub's ``download_url_to_file`` refuses, so a missing file is an error naming it.
    """
    if os.environ.get("RECIPEC_ALLOW_DOWNLOAD") == "1":
        yield
        return
    import torch.hub

    hub_constants: Any = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants as hub_constants
    def refuse(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise WeightsUnavailableError((("model", "arch"), (
            f"refused to download {url} to {dst}: recipec downloads nothing unless RECIPEC_ALLOW_DOWNLOAD=1; "
            "put the file there, or set the environment variable")))

    saved_download, saved_offline = torch.hub.download_url_to_file, getattr(hub_constants, "HF_HUB_OFFLINE", None)
    torch.hub.download_url_to_file = refuse
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            raise WeightsUnavailableError((("model", "arch"), (
                f"the factory asked the Hugging Face hub for weights that are not in the local cache ({exc}); "
                "recipec downloads nothing unless RECIPEC_ALLOW_DOWNLOAD=1 (or use model.arch: timm/<name> "
                "with model.weights)"))) from exc
        raise
    finally:
        torch.hub.download_url_to_file = saved_download
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved_offline


def _hub_cache() -> Path:
    # read at call time: huggingface_hub fixes its own constants when first imported
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _locate(cfg: Any, hub_id: str) -> tuple[Path, str]:
    """The weights file of a pretrained config (downloading it only when allowed), and its URL."""
    allowed = os.environ.get("RECIPEC_ALLOW_DOWNLOAD") == "1"
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        repo = cfg.hf_hub_id.partition("@")[0]
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILES
        cache = _hub_cache()
        for file in files:
            found = try_to_load_from_cache(repo, file, cache_dir=cache)
            if isinstance(found, str):
                return Path(found), f"https://huggingface.co/{repo}/blob/main/{file}"
        url = f"https://huggingface.co/{repo}"
        if not allowed:
            raise WeightsUnavailableError((("model", "weights"), (
                f"weights {hub_id} are not in the local Hugging Face hub cache: expected hub repository {repo}, "
                f"file {files[0]} under {cache / ('models--' + repo.replace('/', '--'))}; download it there "
                f"(hf download {repo} {files[0]}, or set HF_HOME), set RECIPEC_ALLOW_DOWNLOAD=1, "
                "or set model.weights: null")))
        errors = []
        for file in files:
            try:
                return Path(hf_hub_download(repo, file, cache_dir=cache)), f"{url}/blob/main/{file}"
            except Exception as exc:  # network, missing file, disk: all mean "not available"
                errors.append(f"{file}: {type(exc).__name__}: {exc}")
        raise WeightsUnavailableError((("model", "weights"), (
            f"weights {hub_id} could not be downloaded from hub repository {repo} ({'; '.join(errors)}); "
            "download the file into the hub cache yourself, or set model.weights: null")))
    if cfg.url:
        from urllib.parse import urlparse

        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.suffix == ".npz":
            raise ModelError((("model", "weights"), (
                f"weights {hub_id} are published only as a JAX .npz file ({cfg.url}), which recipec does not read; "
                "pick another tag")))
        if not path.is_file():
            if not allowed:
                raise WeightsUnavailableError((("model", "weights"), (
                    f"weights {hub_id} are not in the local cache: expected {path}; download {cfg.url} there "
                    "(or set TORCH_HOME), set RECIPEC_ALLOW_DOWNLOAD=1, or set model.weights: null")))
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(cfg.url, str(path), progress=False)
            except Exception as exc:
                raise WeightsUnavailableError((("model", "weights"), (
                    f"weights {hub_id} could not be downloaded from {cfg.url}: {type(exc).__name__}: {exc}"))) from exc
        return path, cfg.url
    raise ModelError((("model", "weights"), f"timm publishes no file for weights {hub_id}; pick another tag"))


def preprocessing_of(cfg: Any) -> dict[str, Any]:
    """The input a pretrained config expects: size, interpolation, crop fraction and mode, mean, std."""
    return {"input_size": list(cfg.input_size), "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct,
            "crop_mode": cfg.crop_mode, "mean": list(cfg.mean), "std": list(cfg.std)}


def pretrained_cfg(arch: str, weights: str) -> Any:
    """timm's ``PretrainedCfg`` of ``arch`` with tag ``weights`` (``DEFAULT`` resolved)."""
    timm = _timm()
    return timm.models.get_pretrained_cfg(f"{_name(arch)}.{resolve_tag(arch, weights)}")


def load_timm_weights(arch: str, weights: str) -> tuple[dict[str, Tensor], Any]:
    """Read the pretrained weights ``weights`` (a tag or ``DEFAULT``) of ``arch`` from the local caches.

    Returns:
        The state dict on the CPU, and its :class:`~recipec.model.pretrained.WeightsInfo`
        (named by its hub id, ``timm/convnext_tiny.in12k_ft_in1k``, with the preprocessing).

    Raises:
        WeightsUnavailableError: not cached and downloads not allowed (naming repository and file).
        ModelError: unknown tag; a cached file that is corrupt or unsafe.
    """
    from recipec.errors import CheckpointError
    from recipec.model.pretrained import WeightsInfo
    from recipec.weights import formats

    cfg = pretrained_cfg(arch, weights)
    hub_id = f"{PREFIX}{_name(arch)}.{cfg.tag}"
    path, url = _locate(cfg, hub_id)
    try:
        state_dict = formats.load(path).state_dict
    except CheckpointError as exc:
        raise ModelError((("model", "weights"), (
            f"cached weights {path} of {hub_id} cannot be read ({'; '.join(exc.problems)}); "
            "delete the file and fetch it again"))) from exc
    info = WeightsInfo(name=hub_id, url=url, path=path, sha256_prefix=None, num_params=None,
                       num_categories=cfg.num_classes or None, normalization=(tuple(cfg.mean), tuple(cfg.std)),
                       recipe=None, license=cfg.license, preprocessing=preprocessing_of(cfg))
    return dict(state_dict), info


def timm_head_paths(model: nn.Module) -> list[str]:
    """Dotted paths of the classifier layer(s) (``head``, ``head.fc``; distilled models: two)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    modules = dict(model.named_modules())
    found = [n for n in names if isinstance(modules.get(n), (nn.Linear, nn.Conv2d))]
    if found:
        return found
    heads = model.get_classifier()  # type: ignore[operator]
    heads = heads if isinstance(heads, tuple) else (heads,)
    by_id = {id(m): n for n, m in modules.items() if n}
    return [by_id[id(h)] for h in heads if id(h) in by_id]


def replace_timm_head(model: nn.Module, arch: str, *, num_classes: int, type: str = "linear",
                      hidden: list[int] | None = None, dropout: float = 0.0, activation: str | None = None) -> Any:
    """Replace the classifier through timm's interface: ``reset_classifier`` keeps timm's global
    pooling (and pre-logits norm), then recipec's head takes the classifier layer's place.

    A distilled model (DeiT, LeViT) has a second classifier, ``head_dist``, averaged with the
    first at inference: it gets the same new head (reported as the second prefix).

    Returns:
        :class:`~recipec.model.heads.HeadInfo`.
    """
    from recipec.model.heads import HeadInfo, _placement, _short, build_head, set_module

    if not hasattr(model, "reset_classifier"):
        raise ModelError((("model", "head"), f"{arch} has no reset_classifier(); set model.head.at to its classifier"))
    old_paths = timm_head_paths(model)
    old = {p: _short(model.get_submodule(p)) for p in old_paths}
    model.reset_classifier(num_classes)  # type: ignore[operator]
    paths = timm_head_paths(model)
    if not paths:
        raise ModelError((("model", "head"), f"{arch}: timm names no classifier layer; set model.head.at"))
    new_modules = []
    widths = []
    for path in paths:
        layer = model.get_submodule(path)
        conv = isinstance(layer, nn.Conv2d)
        width = int(layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features)  # type: ignore[arg-type]
        device, dtype = _placement(layer)
        head = build_head(width, num_classes=num_classes, type=type, hidden=hidden,  # type: ignore[arg-type]
                          dropout=dropout, activation=activation, conv=conv, device=device, dtype=dtype)  # type: ignore[arg-type]
        set_module(model, path, head)
        new_modules.append(head)
        widths.append(width)
    notes = tuple(f"distillation head {p}: {old.get(p, '?')}  ->  {_short(m)} (averaged with {paths[0]}'s logits)"
                  for p, m in zip(paths[1:], new_modules[1:]))
    main = new_modules[0]
    return HeadInfo(path=paths[0], in_features=widths[0], old=old.get(paths[0], old_paths[0] if old_paths else "?"),
                    new=_short(main), param_prefix=f"{paths[0]}.",
                    num_params=sum(p.numel() for m in new_modules for p in m.parameters()), notes=notes,
                    aux_prefixes=tuple(f"{p}." for p in paths[1:]))


def timm_groups(model: nn.Module, head_prefixes: list[str], *, fine: bool = False) -> list[tuple[str, list[str]]]:
    """Layer groups from the model's ``group_matcher``, as timm's layer decay numbers them.

    ``timm.models.group_parameters`` orders the parameters into layers (coarse: stages, fine:
    blocks); what no pattern matches (the classifier, its norm, ``head_dist``) is the last
    layer, here ``head``, together with the new head. The first group is ``stem``; the others
    are named after what the pattern matched (``layer1``, ``stages.2``, ``blocks.11``).

    Returns:
        (name, regexes) pairs, earliest first, head last.
    """
    from timm.models._manipulate import group_with_matcher

    from recipec.model.presets import _regexes

    if not hasattr(model, "group_matcher"):
        return []
    matcher = model.group_matcher(coarse=not fine)  # type: ignore[operator]
    params = [n for n, _ in model.named_parameters()]
    layer_of = group_with_matcher(((n, None) for n in params), matcher, reverse=True)
    last = max(layer_of.values(), default=-1) + 1
    in_head = [n for n in params if any(n.startswith(p) for p in head_prefixes)]
    for n in params:
        if n in in_head or n not in layer_of or _unmatched(n, matcher):
            layer_of[n] = last
    layers = sorted(set(layer_of.values()))
    groups: list[tuple[str, list[str]]] = []
    param_set, used = set(params), {"stem", "head"}
    for i, layer in enumerate(layers):
        members = [n for n in params if layer_of[n] == layer]
        if layer == last:
            name = "head"
        elif i == 0:
            name = "stem"
        else:
            name = _group_name(members[0], matcher, used)
        groups.append((name, _regexes(_outermost(members, params), param_set)))
    return groups


def _patterns(matcher: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for spec in matcher.values():
        if isinstance(spec, (list, tuple)):
            out += [s[0] for s in spec]
        elif spec is not None:
            out.append(spec)
    return out


def _unmatched(name: str, matcher: Any) -> bool:
    return isinstance(matcher, Mapping) and not any(re.match(p, name) for p in _patterns(matcher))


def _group_name(param: str, matcher: Any, used: set[str]) -> str:
    hits = [m.group(0) for p in _patterns(matcher) if (m := re.match(p, param))] if isinstance(matcher, Mapping) else []
    base = hits[0].rstrip(".") if hits and hits[0].strip(".") else param.rpartition(".")[0] or param
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip(".-") or "group"
    name, k = base, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def _outermost(members: list[str], params: list[str]) -> list[str]:
    """The shortest module prefixes (or parameter names) that cover ``members`` and nothing else."""
    member_set = set(members)
    under: dict[str, list[str]] = {}  # module prefix -> the parameters below it
    for param in params:
        parts = param.split(".")
        for k in range(1, len(parts)):
            under.setdefault(".".join(parts[:k]), []).append(param)
    out: list[str] = []
    for name in members:
        parts = name.split(".")
        chosen = name
        for k in range(1, len(parts)):
            prefix = ".".join(parts[:k])
            if all(p in member_set for p in under[prefix]):
                chosen = prefix
                break
        if chosen not in out:
            out.append(chosen)
    return out
