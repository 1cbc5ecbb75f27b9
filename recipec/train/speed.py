"""Training throughput settings that leave the numbers alone: channels_last and torch.compile.

``train.compile`` wraps the training forward in :func:`torch.compile`; the module itself (its
``state_dict``, checkpoints, exports) is never the wrapper, so no ``_orig_mod.`` keys. Unfreezing
changes ``requires_grad`` and BatchNorm modes, which recompiles: once per phase of the freezing
schedule (counted per epoch in ``metrics.jsonl`` as ``compiles``). Loader workers and augmentation
seeds: :mod:`recipec.data.speed`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = ["compile_forward", "compiles_so_far", "to_channels_last"]


def to_channels_last(model: nn.Module) -> None:
    """Store the model's 4-d weights as NHWC (``torch.channels_last``), in place; values unchanged."""
    model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]


def compile_forward(model: nn.Module, mode: bool | str, phases: int) -> Any:
    """``model`` wrapped in :func:`torch.compile` for the training forward, or ``model`` when ``mode`` is False.

    ``mode``: True or ``"default"``, ``"reduce-overhead"``, ``"max-autotune"``. The backend is
    inductor; ``RECIPEC_COMPILE_BACKEND`` (``eager``, ``aot_eager``) replaces it for tests on
    machines without a C++ compiler. Dynamo's per-function cache is raised to hold one graph per
    phase of the freezing schedule (each phase changes ``requires_grad``), plus the last partial batch.
    """
    if mode is False:
        return model
    import torch._dynamo  # noqa: PLC0415 (dynamo takes seconds to import: only with train.compile)

    limit = max(8, 2 * phases + 2)
    config = torch._dynamo.config
    if hasattr(config, "recompile_limit"):
        config.recompile_limit = max(config.recompile_limit, limit)
    else:  # torch < 2.6
        config.cache_size_limit = max(config.cache_size_limit, limit)
    backend = os.environ.get("RECIPEC_COMPILE_BACKEND", "inductor")
    kwargs: dict[str, Any] = {"backend": backend}
    if mode not in (True, "default") and backend == "inductor":
        kwargs["mode"] = mode
    return torch.compile(model, **kwargs)


def compiles_so_far() -> int:
    """Frames torch.compile has compiled in this process (first compiles and recompiles)."""
    from torch._dynamo.utils import counters  # noqa: PLC0415 (as in compile_forward)

    return int(counters["frames"]["ok"])
