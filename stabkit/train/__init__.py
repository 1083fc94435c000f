"""Real training: ZCA-whitened ResNet-18 on CIFAR-10 (``zca``, ``resnet``, ``loop``)."""

from .loop import DEFAULTS, OUTCOMES, train_many, train_run
from .resnet import ResNet18
from .zca import ZCAWhitening

__all__ = ["DEFAULTS", "OUTCOMES", "ResNet18", "ZCAWhitening", "train_many", "train_run"]
