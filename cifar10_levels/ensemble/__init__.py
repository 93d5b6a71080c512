"""Voting across checkpoints: members, their cached predictions, the votes and the report."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "cache": ("file_sha256", "tensor_sha256",),
    "evaluation": ("MemberEval", "evaluate_members",),
    "members": ("find_checkpoints", "member_labels", "read_members",),
    "tracking": ("log_report",),
    "report": ("EnsembleReport", "build_report",),
})
