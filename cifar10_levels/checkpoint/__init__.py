"""Checkpoints on disk: safetensors weights with their metadata, checks on the weight files users pass, `--weights` resolution, the run directory, and the resumable training state."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "file_checks": ("PICKLE_SUFFIXES", "check_pretrained_file", "refuse_pickle",),
    "io": ("load_checkpoint", "save_checkpoint",),
    "meta": ("BEST_NAME", "CheckpointMeta", "LAST_NAME", "FORMAT", "check_fits", "parse_meta", "read_header", "read_meta",),
    "run_dir": ("STATE_DIR", "check_run_name", "find_state_dir", "resolve_resume", "run_dir", "run_dir_problem", "run_name",),
    "run_store": ("RunStore", "make_checkpoint_meta",),
    "state_dict": ("clean_state_dict", "load_full_state_dict",),
    "train_state": ("TrainState",),
    "weights": ("EXPORT_CONFIG", "EXPORT_WEIGHTS", "META_KEY", "is_export_dir", "load_weights", "read_weights_meta", "resolve_weights",),
})
