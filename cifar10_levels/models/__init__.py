"""timm models: the factory, freezing, whether pretrained weights are at hand, and our own cifar_speednet."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "factory": ("check_arch", "count_parameters", "create_model", "known_arch", "set_backbone_trainable", "set_train_mode",),
    "pretrained": ("pretrained_weights_problem",),
})
