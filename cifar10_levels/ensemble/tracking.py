"""The ensemble's one tracker run: its comparison table (members, votes, oracle) on W&B or
TensorBoard, next to the training runs of the same project."""
from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator

from .report import EnsembleReport
from ..tracking.environment import git_commit, package_versions
from ..tracking.results_table import markdown_table
from ..tracking.trackers import finish_trackers, start_trackers, tracker_names, wandb_init_kwargs
from ..tracking.wandb_account import choose_wandb_mode


def comparison_rows(report: EnsembleReport, labels: list[str]) -> tuple[list[str], list[list]]:
    """The printed table as rows, for W&B."""
    columns = ["name", "kind", "val_acc", "test_acc"]
    rows = [[label, f"member ({m['arch']}, {m['eval_img_size']} px)", m["val_acc"], m["test_acc"]]
            for label, m in zip(labels, report.members)]
    rows += [[v.name, f"vote: {v.description}", v.val_acc, v.test_acc] for v in report.votes]
    rows.append(["oracle", "any member right", None, report.oracle_test_acc])
    return columns, rows


def log_report(report: EnsembleReport, labels: list[str], results: dict, project: str,
               out_dir: str | os.PathLike) -> None:
    """--report-to wandb: the printed comparison as a table, the summary numbers as the config."""
    columns, rows = comparison_rows(report, labels)
    config = {k: results[k] for k in ("best_vote", "oracle_test_acc", "majority_ties", "tie_rule",
                                      "mean_disagreement_test", "tta_views", "dataset")}
    log_ensemble(rows, columns, project=project, report_to="wandb", out_dir=out_dir, config=config)


def log_ensemble(table_rows: list[list], columns: list[str], project: str = "cifar10-levels",
                 report_to: str = "wandb", out_dir: str | os.PathLike = ".", entity: str | None = None,
                 run_name: str = "ensemble", config: dict | None = None) -> None:
    """One run in `project` (group 'ensemble') holding the ensemble's comparison table, written
    under `out_dir`. Safe to call on every process: only the main one logs."""
    names = tracker_names(report_to)
    if not names:
        return
    accelerator = Accelerator(log_with=names, project_dir=str(out_dir))
    if not accelerator.is_main_process:
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    wandb_kwargs = None
    if "wandb" in names:
        mode = choose_wandb_mode()
        if mode.warning:
            print(mode.warning, flush=True)
        wandb_kwargs = wandb_init_kwargs(run_name, Path(out_dir), mode, entity, "ensemble",
                                         ["ensemble"], "ensemble")
    start_trackers(accelerator, project, {"versions": package_versions(), "git_commit": git_commit(),
                                          **(config or {})}, wandb_kwargs)
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb  # slow to import, and only a run that logs to W&B needs it
            table = wandb.Table(columns=list(columns), data=[list(r) for r in table_rows])
            tracker.log({"ensemble/comparison": table})
        elif tracker.name == "tensorboard":
            tracker.writer.add_text("ensemble/comparison", markdown_table(columns, table_rows))
    finish_trackers(accelerator)
