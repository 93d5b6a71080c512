"""The commands: one module each for train, ensemble, evaluate, predict, export and report, and the argument helpers they share."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "arguments": ("Parser",),
    "train": ("ensemble_main", "train_main",),
})
