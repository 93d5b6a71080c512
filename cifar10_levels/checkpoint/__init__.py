"""Checkpoints on disk: safetensors weights with their metadata, checks on the weight files users pass, `--weights` resolution, the run directory, and the resumable training state."""
from ..lazy import lazy_exports

# the documented public import; lazy, so that importing the folder's light modules (train.py --help)
# does not load torch
__getattr__, __dir__, __all__ = lazy_exports(__name__, {"io": ("load_checkpoint",)})
