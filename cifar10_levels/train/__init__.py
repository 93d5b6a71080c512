"""One training run: the Trainer, its setup, the epoch loop with its step hooks, EMA, preflight."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "options": ("RunOptions",),
    "preflight": ("preflight",),
    "step_hooks": ("Stopped",),
    "trainer": ("Trainer",),
})
