"""Turning a recipe's ``device`` into a torch device that exists here."""

from __future__ import annotations

import torch

from recipec.errors import DeviceError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """Resolve ``auto | cpu | cuda | cuda:N | mps`` to a device present on this machine.

    ``auto`` picks the first CUDA device, else MPS, else the CPU.

    Raises:
        DeviceError: the device was asked for explicitly and is not here (located at ``device``).
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise DeviceError([(("device",), "mps was requested but this machine has no MPS device; "
                                              "use device: auto or cpu (or --device cpu)")])
        return torch.device("mps")
    if name.startswith("cuda"):
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError([(("device",), f"{name} was requested but this machine has no CUDA device; "
                                              "use device: auto or cpu (or --device cpu)")])
        if index >= count:
            raise DeviceError([(("device",), f"{name} was requested but this machine has {count} CUDA "
                                              f"device(s): cuda:0..cuda:{count - 1}")])
        return torch.device("cuda", index)
    raise DeviceError([(("device",), f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")])


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
