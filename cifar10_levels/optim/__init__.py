"""Optimizers (AdamW; Muon with SGD for cifar_speednet) and learning-rate schedules."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "factory": ("build_optimizer", "build_scheduler", "scaled_lr",),
    "muon": ("MUON_ARCHS", "MuonWithSGD", "muon_with_sgd", "orthogonalize",),
})
