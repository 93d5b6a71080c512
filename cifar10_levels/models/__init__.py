"""timm models: the factory, freezing, and our own cifar_speednet."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "factory": ("PICKLE_SUFFIXES", "check_arch", "check_pretrained_file", "clean_state_dict", "count_parameters", "create_model", "known_arch", "load_full_state_dict", "pretrained_weights_problem", "refuse_pickle", "set_backbone_trainable", "set_train_mode",),
})
