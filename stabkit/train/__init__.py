"""Real training: ZCA-whitened ResNet-18 on CIFAR-10 (``zca``, ``resnet``, ``loop``, ``preset``)."""

from .loop import DEFAULTS, OUTCOMES, train_many, train_run
from .preset import PRESETS, Preset, ZCAConfig, get_preset
from .resnet import ResNet18
from .zca import ZCAWhitening

__all__ = ["DEFAULTS", "OUTCOMES", "PRESETS", "Preset", "ResNet18", "ZCAConfig", "ZCAWhitening", "get_preset",
           "train_many", "train_run"]
