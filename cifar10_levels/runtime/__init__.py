"""How fast a step runs here: precision (autocast, fp16 scaling, the CPU probe), step timing, the time budget."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "precision": ("Amp", "default_precision",),
    "precision_probe": ("PrecisionVerdict", "agreed_cpu_precision",),
    "time_budget": ("TrainingLength",),
    "time_budget_probe": ("ProbeParts", "process_seconds", "replan", "resumed_plan", "run_plan",),
})
