"""Real training: ZCA-whitened ResNet-18 on CIFAR-10 (``zca``, ``resnet``, ``loop``, ``preset``; R runs at
once stacked in one network: ``stacked``, ``stacked_loop``).

The names below load on first use, so the GPU session's planner (``python -m stabkit.train.session``)
starts without importing torch.
"""

from __future__ import annotations

import importlib

#: public name → the submodule that defines it (imported on first access)
_FROM = {
    "DEFAULTS": "loop", "OUTCOMES": "loop", "train_many": "loop", "train_run": "loop", "train_stacked": "stacked_loop",
    "PRESETS": "preset", "Preset": "preset", "ZCAConfig": "preset", "get_preset": "preset",
    "ResNet18": "resnet", "ZCAWhitening": "zca",
}

__all__ = sorted(_FROM)


def __getattr__(name: str):
    if name in _FROM:
        value = getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
