"""The torch device of local training and evaluation: run config ``device``.

- ``cpu`` returns the CPU without touching ``torch.cuda``: no CUDA driver is loaded and no
  CUDA context is created, so a CPU-only node's cold start is what it was;
- ``auto`` (the default) asks ``torch.cuda.is_available()`` once per message: CUDA when a
  device is visible, else the CPU. In a Ray simulation a ClientApp sees a GPU only when the
  federation config gives it one (``client-resources-num-gpus`` > 0): Ray hides the GPUs
  from actors that reserved none;
- ``cuda`` requires CUDA and raises :class:`DeviceUnavailable`, naming the key, where there
  is none.

Used by the ClientApp (``task.train``, ``task.evaluate``, DP-SGD) and by the ServerApp's
evaluation on its test set. The server's aggregation of the ``(n, d)`` update matrix stays
on the CPU whatever the setting.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from fedapp.config.run import DEVICES, ConfigError


class DeviceUnavailable(ConfigError):
    """``device='cuda'`` where this process has no usable CUDA device."""


def resolve_device(setting: str) -> torch.device:
    """The ``torch.device`` for the run config's ``device`` value (see the module doc)."""
    if setting == "cpu":
        return torch.device("cpu")
    if setting not in DEVICES:
        raise ConfigError(f"device={setting!r} is not one of: {', '.join(DEVICES)}")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if setting == "auto":
        return torch.device("cpu")
    raise DeviceUnavailable(f"device='cuda' (run config key `device`) but {_why_no_cuda()}; "
                            "set device='auto' (CUDA when available, else CPU) or device='cpu'")


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = (f" (CUDA_VISIBLE_DEVICES={visible!r}; in a Ray simulation, give each ClientApp "
            "a GPU with client-resources-num-gpus > 0)" if visible is not None else "")
    return f"no CUDA device is available to this process{hint}"


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
