"""What a run reports: the run log, trackers and the W&B account, console lines, plots, results and the results table."""
from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "console": ("SlowRunWarning", "epoch_line", "format_duration", "progress_bar",),
    "environment": ("git_commit", "package_versions",),
    "hardware": ("hardware_name",),
    "plots": ("plot_confusion", "plot_reliability",),
    "results": ("make_results", "results_text",),
    "results_table": ("markdown_table", "read_results", "results_table",),
    "run_log": ("RunLog", "TrackerSettings", "run_config", "write_history",),
    "trackers": ("finish_trackers", "start_trackers", "tracker_names", "wandb_init_kwargs",),
    "wandb_account": ("choose_wandb_mode",),
})
