"""CIFAR-10 on the device: loading and checks, the model's normalization, batched training augmentation and RandAugment."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "augment": ("TrainAugment", "translate",),
    "checks": ("dataset_problem",),
    "cifar10": ("CIFAR10", "ImageSet", "NUM_CLASSES", "cache_dir", "load_cifar10", "make_loader",),
    "normalize": ("Normalizer",),
})
