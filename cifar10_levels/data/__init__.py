"""CIFAR-10 on the device: loading and checks, the model's normalization, batched training augmentation and RandAugment."""
from ..lazy import lazy_exports

# the documented public import; lazy, so that importing the folder's light modules (train.py --help)
# does not load torch
__getattr__, __dir__, __all__ = lazy_exports(__name__, {"cifar10": ("load_cifar10",)})
