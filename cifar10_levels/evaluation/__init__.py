"""Evaluation passes over a loader (plain and test-time augmented), the test-time views, inference helpers and metrics."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "evaluate": ("EvalResult", "evaluate",),
    "inference": ("make_accelerator", "model_probabilities",),
    "metrics": ("confusion_matrix", "expected_calibration_error", "negative_log_likelihood", "per_class_accuracy", "reliability_bins",),
    "tta": ("TTA_SCHEMES", "TTA_VIEWS", "TtaScheme", "check_tta", "fewest_views", "tta_scheme", "tta_views",),
})
