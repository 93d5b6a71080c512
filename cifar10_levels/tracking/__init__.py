"""What a run reports: the run log, trackers and the W&B account, console lines, plots, results and the results table."""
