"""What a training run records: Accelerate's trackers (W&B, offline without an account; TensorBoard),
history.jsonl and the PNG plots. Only the main process writes anything."""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..checkpoint.meta import BEST_NAME
from .environment import git_commit, package_versions
from ..files import write_text
from .hardware import hardware_name
from ..evaluation.metrics import confusion_matrix
from .plots import plot_confusion, plot_curves, plot_per_class
from .trackers import finish_trackers, start_trackers, tracker_names, wandb_init_kwargs, wandb_run
from .wandb_account import choose_wandb_mode

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..data.cifar10 import CIFAR10
    from ..recipes import Recipe

MISCLASSIFIED_SHOWN = 32
EPOCH_METRICS = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss",
                 "val_acc": "val/acc", "val_loss_ema": "val/loss_ema", "val_acc_ema": "val/acc_ema",
                 "lr": "train/epoch_lr", "images_per_s": "train/epoch_images_per_s",
                 "epoch_seconds": "time/epoch_seconds", "elapsed_seconds": "time/elapsed_seconds"}
SUMMARY_KEYS = {"test_acc": "test/acc", "test_acc_tta": "test/acc_tta", "test_loss": "test/loss",
                "test_nll": "test/nll", "test_ece": "test/ece",
                "best_val_acc": "best_val_acc", "best_epoch": "best_epoch", "num_params": "num_params",
                "train_seconds": "train_seconds", "images_per_s": "images_per_s"}


# curves.png costs ~0.5-1 s of matplotlib: redrawn after an epoch at most this often, and at the end
CURVES_EVERY_S = 60.0


@dataclass(frozen=True)
class TrackerSettings:
    """Where and as what a run is tracked: train.py's --run-name, --report-to, --wandb-project,
    --wandb-entity and --log-checkpoint."""

    run_name: str
    report_to: str
    project: str
    entity: str | None
    log_checkpoint: bool
    resume: bool              # continue the W&B run whose id the run directory keeps


def run_config(config: dict, recipe: Recipe, accelerator: Accelerator, data: CIFAR10, *, global_batch: int,
               resumed: bool, precision_probe: dict | None, time_budget: dict | None) -> dict:
    """What the trackers record when a run starts: `config` (config.yaml's dict, under "config") and
    what this run found: the whole recipe, the hardware, versions and data."""
    return {
        "config": config,
        "recipe": recipe.to_dict(),
        "hardware": {"device": hardware_name(accelerator), "num_processes": accelerator.num_processes,
                     "precision": accelerator.mixed_precision, "cuda": torch.version.cuda,
                     "cpu_count": os.cpu_count(), "global_batch": global_batch,
                     "grad_accum": config["grad_accum"], "lr_scaling": config["lr_scaling"],
                     "compile": config["compile"], "channels_last": config["channels_last"]},
        "versions": package_versions(),
        "git_commit": git_commit(),
        "data": {"source": data.source, "train": len(data.train), "val": len(data.val),
                 "test": len(data.test), "train_limit": config["train_limit"],
                 "eval_limit": config["eval_limit"]},
        "resumed": resumed,
        "checkpoint_every": config["checkpoint_every"],  # seconds between mid-epoch resume-state saves
        "precision_probe": precision_probe,
        "time_budget": time_budget,
    }


def write_history(run_dir: Path, history: list[dict]) -> None:
    """history.jsonl rewritten whole from the run's state, so an epoch repeated after --resume is
    never listed twice."""
    write_text(run_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))


class RunLog:
    """A training run's records. Trackers exist on the main process only (Accelerate starts them
    there); the other processes only pass through. `history` and `step` are the TrainState's."""

    def __init__(self, accelerator: Accelerator, run_dir: Path, config: dict, recipe: Recipe,
                 settings: TrackerSettings):
        self.accelerator, self.run_dir, self.config = accelerator, run_dir, config
        self.recipe, self.settings = recipe, settings
        self.mixing_phases = frozenset(p.name for p in recipe.phases if recipe.mixes(p))
        self.curves_drawn_at, self.curves_epochs = time.monotonic(), 0

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def run_name(self) -> str:
        return self.settings.run_name

    @property
    def title(self) -> str:
        r = self.recipe
        return f"{self.run_name}: level {r.level} {r.title}, {r.arch} @ {r.img_size}px"

    def start(self, history: list[dict]) -> None:
        """The trackers; and history.jsonl back to `history` (the state's: on a resume the epochs
        logged after its save go)."""
        accelerator, settings, recipe = self.accelerator, self.settings, self.recipe
        if self.main and (self.run_dir / "history.jsonl").exists():
            write_history(self.run_dir, history)
        if not (self.main and accelerator.log_with):
            return
        wandb_kwargs = None
        if "wandb" in tracker_names(settings.report_to):
            mode = choose_wandb_mode()
            if mode.warning:
                print(mode.warning, flush=True)
            id_file = self.run_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if settings.resume and id_file.exists() else None
            tags = [f"level-{recipe.level}", recipe.arch,
                    "pretrained" if recipe.pretrained else "from-scratch"]
            wandb_kwargs = wandb_init_kwargs(self.run_name, self.run_dir, mode, settings.entity,
                                             f"level-{recipe.level}", tags, "train", run_id)
        start_trackers(accelerator, settings.project, self.config, wandb_kwargs)
        run = wandb_run(accelerator)
        if run is not None:
            write_text(self.run_dir / "wandb_run_id", run.id)
            run.define_metric("epoch")
            for name in ("train/loss", "train/acc", "val/*", "train/epoch_*", "time/*", "phase"):
                run.define_metric(name, step_metric="epoch")
            run.define_metric("val/acc", step_metric="epoch", summary="max")

    @property
    def wandb_url(self) -> str | None:
        """The W&B run's page, for results.json and the model card; None offline or without W&B."""
        run = wandb_run(self.accelerator) if self.main else None
        return None if run is None or run.offline else run.url

    def step(self, metrics: dict, step: int) -> None:
        self.accelerator.log(metrics, step=step)

    def epoch(self, history: list[dict], step: int) -> None:
        """`history`: the run's epochs, the one just trained last."""
        if not self.main:
            return
        write_history(self.run_dir, history)
        record = history[-1]
        values = {EPOCH_METRICS[k]: v for k, v in record.items() if k in EPOCH_METRICS}
        self.accelerator.log({"epoch": record["epoch"], "phase": record["phase"], **values}, step=step)
        if time.monotonic() - self.curves_drawn_at >= CURVES_EVERY_S:
            self.draw_curves(history)

    def draw_curves(self, history: list[dict]) -> None:
        """curves.png up to the last epoch, unless it is drawn already."""
        if len(history) > self.curves_epochs:
            plot_curves(history, self.run_dir / "curves.png", self.title, self.mixing_phases)
            self.curves_drawn_at, self.curves_epochs = time.monotonic(), len(history)

    def final(self, results: dict, test, data: CIFAR10, history: list[dict], step: int) -> None:
        """Test results: PNGs in the run dir, scalars to every tracker, tables and images to W&B."""
        if not self.main:
            return
        self.draw_curves(history)
        names = data.class_names
        labels = test.labels.numpy()
        matrix = confusion_matrix(test.preds, test.labels, len(names)).numpy()
        shown = f"test acc {results['test_acc']:.2%} on {len(labels)} images"
        plot_confusion(matrix, names, self.run_dir / "confusion.png", f"{self.run_name}: {shown}")
        plot_per_class(results["per_class_acc"], results["test_acc"], self.run_dir / "per_class.png",
                       f"{self.run_name}: per-class {shown}")
        summary = {key: results[k] for k, key in SUMMARY_KEYS.items() if results.get(k) is not None}
        final = results.get("final_weights") or {}
        summary.update({f"final_{kind}/{m}": final[kind][m] for kind in ("raw", "ema") if kind in final
                        for m in ("test_acc", "test_acc_tta") if final[kind][m] is not None})
        accelerator = self.accelerator
        accelerator.log({k: v for k, v in summary.items() if k.startswith("test/")}, step=step)
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":  # W&B gets a table and a bar chart instead
                tracker.log({f"test/class_acc/{n}": a for n, a in results["per_class_acc"].items()},
                            step=step)
        run = wandb_run(accelerator)
        if run is not None:
            self._log_wandb_results(run, results, test, data, matrix, step)
            run.summary.update(summary)

    def _log_wandb_results(self, run, results: dict, test, data: CIFAR10, matrix: np.ndarray,
                           step: int) -> None:
        import wandb  # slow to import, and only a run that logs to W&B needs it

        names = data.class_names
        per_class = wandb.Table(columns=["class", "accuracy", "images"],
                                data=[[n, results["per_class_acc"][n], int(matrix[i].sum())]
                                      for i, n in enumerate(names)])
        media = {
            "test/confusion_matrix": wandb.plot.confusion_matrix(
                y_true=test.labels.tolist(), preds=test.preds.tolist(), class_names=names,
                title="Test confusion matrix"),
            "test/per_class_accuracy": wandb.plot.bar(per_class, "class", "accuracy",
                                                      title="Per-class test accuracy"),
            **{f"plots/{p}": wandb.Image(str(self.run_dir / f"{p}.png"))
               for p in ("curves", "confusion", "per_class")},
        }
        mistakes = misclassified_images(test, data, MISCLASSIFIED_SHOWN)
        if mistakes:
            media["test/misclassified"] = mistakes
        run.log(media, step=step)
        if self.settings.log_checkpoint:
            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", f"{self.run_name}-best"), type="model",
                                      metadata={k: results[k] for k in ("level", "arch", "test_acc",
                                                                        "best_val_acc", "best_epoch")})
            artifact.add_file(str(self.run_dir / BEST_NAME))
            run.log_artifact(artifact, aliases=["best"])

    def finish(self, history: list[dict]) -> None:
        """At the end, and when a run stops or diverges: curves.png up to the last epoch."""
        if self.main:
            self.draw_curves(history)
            finish_trackers(self.accelerator)


def misclassified_images(test, data, limit: int) -> list:
    """The most confident mistakes as captioned wandb Images (test images are in evaluation order)."""
    import wandb
    from PIL import Image

    if len(data.test) != len(test.labels):
        return []
    confidence, preds = test.probs.max(1)
    wrong = (preds != test.labels).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:limit]
    names = data.class_names
    shown = []
    for i in wrong.tolist():
        pixels = data.test.images[i].permute(1, 2, 0).numpy()
        image = Image.fromarray(pixels).resize((96, 96), Image.NEAREST)
        shown.append(wandb.Image(image, caption=f"pred {names[preds[i]]} ({confidence[i]:.0%}) / "
                                                f"true {names[test.labels[i]]}"))
    return shown
