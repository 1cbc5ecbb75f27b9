"""Your own architectures, ``model.arch: "package.module:factory"``: imported and called only when trusted."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import shlex
import sys
from collections.abc import Collection, Mapping
from typing import Any

from torch import nn

from recipec.errors import ModelError, RecipecError, UntrustedFactoryError
from recipec.recipe.archs import family_name
from recipec.model.offline import downloads_blocked

__all__ = ["build_factory", "check_factory_trust", "factory_names"]


def check_factory_trust(arch: str, trust_factories: bool | Collection[str], *, origin: str = "") -> None:
    """Refuse a custom factory (``"package.module:factory"``) the caller does not trust; import nothing.

    Importing a module runs its code, and so does calling a factory: a recipe that came from a
    file (an export's metadata, a training state) must not choose either. Trust is given per
    factory, by its exact name, as ``trust_remote_code`` is given per call in Hugging Face.

    Args:
        arch: ``model.arch``; torchvision names (no ``:``) pass, as they are looked up by name.
        trust_factories: ``True`` (the caller wrote the recipe), or the exact factory names trusted.
        origin: the file the recipe came from, named in the refusal.

    Raises:
        UntrustedFactoryError: ``arch`` is a custom factory not in ``trust_factories``.
    """
    if family_name(arch) != "factory" or trust_factories is True:
        return
    if arch in (() if trust_factories is False else factory_names(trust_factories)):
        return
    where = f"{origin}: " if origin else ""
    flag = shlex.quote(arch) if arch.isprintable() else repr(arch)
    raise UntrustedFactoryError(
        f"{where}refused to import the custom factory {arch!r} that the file's recipe names (model.arch): "
        f"a file must not name code that runs, and nothing was imported; if you trust {arch!r}, pass "
        f"--trust-factory {flag} (Python: trust_factories=[{arch!r}])")


def factory_names(trust_factories: str | Collection[str]) -> tuple[str, ...]:
    """``"m:f"`` or ``["m:f", ...]`` -> ``("m:f", ...)``: exact names, never ``True`` (trust everything).

    Raises:
        TypeError: not a name or a collection of names (a bool, a number, a non-str item).
    """
    names = (trust_factories,) if isinstance(trust_factories, str) else trust_factories
    if not isinstance(names, Collection) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"trust_factories must list 'package.module:factory' names, got {trust_factories!r}")
    return tuple(names)


def build_factory(arch: str, kwargs: Mapping[str, Any] | None = None, *,
                  trust_factories: bool | Collection[str] = True, origin: str = "") -> nn.Module:
    """Import and call your own factory, ``"package.module:factory"``, when it is trusted.

    Every factory is trusted when the recipe is the caller's own (``trust_factories=True``, what
    ``compile_recipe`` does); a recipe read from a file (an export's metadata, a training state)
    passes the exact factories its user trusts, and any other is refused before its module is
    imported (see :func:`check_factory_trust`). Even a trusted factory must be an ``nn.Module``
    subclass or a Python function, and return an ``nn.Module``. Nothing is downloaded while it
    runs (:func:`recipec.model.offline.downloads_blocked`).

    Args:
        arch: ``"package.module:factory"``, where factory may be a dotted attribute (``nets:Zoo.small``).
        kwargs: keyword arguments for the factory.
        trust_factories: ``True`` when the caller wrote the recipe, else the factory names the
            caller trusts (``()`` or ``False``: none).
        origin: where the recipe came from (a file), named in a refusal.

    Raises:
        ModelError: a factory that cannot be imported, found or called, one that is not an
            ``nn.Module`` class or a Python function (a builtin such as ``os:system``), one that
            does not return an ``nn.Module``, or arguments it rejects.
        UntrustedFactoryError: a factory that ``trust_factories`` does not name.
    """
    check_factory_trust(arch, trust_factories, origin=origin)
    return _build_custom(arch, dict(kwargs or {}))


def _build_custom(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    module_name, _, attr = arch.partition(":")
    package = module_name.partition(".")[0]
    if package == "transformers":  # its models take a config and return a ModelOutput, not logits
        raise ModelError((("model", "arch"), _TRANSFORMERS.format(arch=arch, hf=_hf_arch(kwargs))))
    if package in sys.stdlib_module_names:
        # os:popen, subprocess:run, shutil:rmtree are Python functions too, and build no model
        raise ModelError((("model", "arch"), (
            f"{arch!r} is in Python's standard library ({package!r}), which has no model factories; "
            "name a function or torch.nn.Module class of your own package, so nothing was imported")))
    try:
        module = _import_from_cwd(module_name)
    except (ImportError, SyntaxError) as exc:
        raise ModelError((("model", "arch"), (
            f"cannot import module {module_name!r} for factory {arch!r}: {type(exc).__name__}: {exc} "
            "(is its package installed, or its directory on PYTHONPATH?)"))) from exc
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            owner = getattr(factory, "__name__", module_name)
            close = difflib.get_close_matches(part, [n for n in dir(factory) if not n.startswith("_")], n=3)
            hint = f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
            raise ModelError((("model", "arch"), f"{owner!r} has no attribute {part!r} (factory {arch!r}){hint}"))
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelError((("model", "arch"), f"{arch!r} is a {type(factory).__name__}, not a callable factory"))
    if not _is_model_factory(factory):
        kind = "a class that is not a torch.nn.Module" if isinstance(factory, type) else f"a {type(factory).__name__}"
        raise ModelError((("model", "arch"), (
            f"{arch!r} is {kind}; a factory must be a torch.nn.Module subclass or a Python function "
            "that returns one, so nothing was called")))
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ModelError((("model", "kwargs"), f"factory {arch!r} rejected its arguments {kwargs!r}: {exc}")) from exc
    except ValueError:
        pass  # no signature to check (a builtin-backed class): the call says
    try:
        with downloads_blocked():  # timm:create_model with pretrained: true fetches nothing behind the policy
            model = factory(**kwargs)
    except RecipecError:
        raise  # the download refusal, located already
    except Exception as exc:  # the factory's own failure (a size mismatch in a checkpoint it loads, ...)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError((("model", "arch"), (
            f"factory {arch!r} raised {type(exc).__name__}: {detail} (with model.kwargs {kwargs!r}); "
            "fix the factory or its arguments"))) from exc
    if not isinstance(model, nn.Module):
        raise ModelError((("model", "arch"), (
            f"factory {arch!r} returned a {type(model).__name__}, not a torch.nn.Module")))
    if any(c.__module__.startswith("transformers.") for c in type(model).__mro__):
        raise ModelError((("model", "arch"), _TRANSFORMERS.format(arch=arch, hf=_hf_arch(kwargs))))
    return model


_TRANSFORMERS = ("{arch!r} builds a transformers model, whose forward returns a ModelOutput, not logits; "
                 "use model.arch: {hf}, which builds transformers vision models with their logits, layer groups "
                 "and weights read offline-first (model.weights: DEFAULT, or null for random initialisation)")


def _hf_arch(kwargs: Mapping[str, Any]) -> str:
    """``hf/<the repository or folder the factory's arguments name>``, or the grammar."""
    name = kwargs.get("pretrained_model_name_or_path")
    if not isinstance(name, str) or not name:
        return "hf/<repo id> or hf/./<folder>"
    if os.path.isdir(name) and not name.startswith((".", "/", "~")):
        return f"hf/./{name}"  # a folder in the working directory, not a repository id
    return f"hf/{name}"


def _import_from_cwd(module_name: str) -> Any:
    """Import as ``python -m`` would, the working directory first on ``sys.path`` (for this import only)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _is_model_factory(factory: Any) -> bool:
    """An nn.Module subclass, or a function written in Python (a static or class method too).

    Builtins (``os.system``), other classes (``subprocess.Popen``) and callable objects are not
    factories of models, whatever a recipe says.
    """
    if isinstance(factory, type):
        return issubclass(factory, nn.Module)
    if inspect.ismethod(factory):
        factory = factory.__func__
    return inspect.isfunction(factory)
