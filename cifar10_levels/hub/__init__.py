"""Publishing to the HF Hub: the export folder, the model card, the upload."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "export": ("check_push_ready", "export_model", "push_after_training", "push_export",),
})
