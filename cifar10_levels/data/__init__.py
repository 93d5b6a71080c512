"""CIFAR-10 on the device: loading and checks, normalization, batched augmentation and RandAugment."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "augment": ("Normalizer", "TTA_SCHEMES", "TTA_VIEWS", "TrainAugment", "tta_scheme", "tta_views",),
    "checks": ("dataset_problem",),
    "cifar10": ("CIFAR10", "ImageSet", "NUM_CLASSES", "cache_dir", "load_cifar10", "make_loader",),
})
