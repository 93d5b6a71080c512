"""What a run records: Accelerate's trackers (W&B, offline without an account; TensorBoard),
history.jsonl and the PNG plots. Only the main process writes anything."""
from __future__ import annotations

import json
import netrc
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .errors import UserError
from .files import write_text
from .metrics import confusion_matrix

REPORT_CHOICES = ("wandb", "tensorboard", "all", "none")
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
KEY_CHECK_SECONDS = 5.0      # wandb itself waits ~90 s for a server that never answers
MISCLASSIFIED_SHOWN = 32
PACKAGES = ("torch", "timm", "accelerate", "datasets", "safetensors", "wandb", "numpy")
EPOCH_METRICS = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss",
                 "val_acc": "val/acc", "lr": "train/epoch_lr", "images_per_s": "train/epoch_images_per_s",
                 "epoch_seconds": "time/epoch_seconds", "elapsed_seconds": "time/elapsed_seconds"}
SUMMARY_KEYS = {"test_acc": "test/acc", "test_acc_tta": "test/acc_tta", "test_loss": "test/loss",
                "best_val_acc": "best_val_acc", "best_epoch": "best_epoch", "num_params": "num_params",
                "train_seconds": "train_seconds", "images_per_s": "images_per_s"}


def tracker_names(report_to: str) -> list[str]:
    """Accelerate `log_with` names for --report-to."""
    return {"wandb": ["wandb"], "tensorboard": ["tensorboard"], "all": ["wandb", "tensorboard"],
            "none": []}[report_to]


# ---- W&B mode: online only with a key the server accepts ------------------------------------
def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")


def wandb_api_key() -> str | None:
    """WANDB_API_KEY, else the ~/.netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(urlparse(wandb_base_url()).hostname)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def check_wandb_key(key: str, timeout: float = KEY_CHECK_SECONDS) -> str:
    """'ok', 'rejected' or 'unreachable', from one short GraphQL call (the query `wandb login` makes)."""
    import base64

    request = urllib.request.Request(
        wandb_base_url() + "/graphql", data=json.dumps({"query": "query { viewer { id } }"}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            viewer = json.loads(response.read() or b"{}").get("data", {}).get("viewer")
    except urllib.error.HTTPError as err:
        return "rejected" if err.code in (401, 403) else "unreachable"
    except (OSError, ValueError):
        return "unreachable"
    return "ok" if viewer else "rejected"


@dataclass
class WandbMode:
    mode: str | None          # None: the user's WANDB_MODE, left to wandb
    warning: str | None = None


def choose_wandb_mode(timeout: float = KEY_CHECK_SECONDS) -> WandbMode:
    """The user's WANDB_MODE wins; otherwise online only with a key the server accepts now."""
    user_mode = os.environ.get("WANDB_MODE")
    if user_mode == "":
        del os.environ["WANDB_MODE"]  # wandb rejects an empty mode; treat it as unset
    elif user_mode:
        if user_mode not in WANDB_MODES:
            raise UserError(f"WANDB_MODE={user_mode}: not a W&B mode; use online, offline or "
                            "disabled, or unset it")
        return WandbMode(None)
    key = wandb_api_key()
    if not key:
        return WandbMode("offline")
    status = check_wandb_key(key, timeout)
    if status == "ok":
        return WandbMode("online")
    host = urlparse(wandb_base_url()).hostname
    reason = "rejected the API key" if status == "rejected" else "could not be reached"
    return WandbMode("offline", f"warning: W&B ({host}) {reason}; logging offline instead")


# ---- config ----------------------------------------------------------------------------------
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    found = {"python": sys.version.split()[0], "cifar10_levels": __version__}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_commit() -> str | None:
    """The commit of this checkout ('+dirty' with local changes), None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty else "")


def flat_config(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """TensorBoard's hparams take only flat scalars: nested keys joined with '.', None as 'none'."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, name + "."))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
            flat.update(flat_config({str(i): v for i, v in enumerate(value)}, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ", ".join(map(str, value))
        elif value is None:
            flat[name] = "none"
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def run_config(trainer) -> dict:
    acc, opts, data = trainer.accelerator, trainer.opts, trainer.data
    import torch

    return {
        "recipe": trainer.recipe.to_dict(),
        "hardware": {"device": trainer.device_name(), "num_processes": acc.num_processes,
                     "precision": acc.mixed_precision, "cuda": torch.version.cuda,
                     "cpu_count": os.cpu_count(), "global_batch": trainer.global_batch,
                     "grad_accum": opts.grad_accum, "lr_scaling": opts.lr_scaling,
                     "compile": opts.compile, "channels_last": trainer.channels_last},
        "versions": package_versions(),
        "git_commit": git_commit(),
        "data": {"source": data.source, "train": len(data.train), "val": len(data.val),
                 "test": len(data.test), "train_limit": opts.train_limit,
                 "eval_limit": opts.eval_limit},
        "resumed": opts.resume,
    }


# ---- starting and ending trackers (shared by training runs and the ensemble) -----------------
def wandb_init_kwargs(name: str, out_dir: Path, mode: WandbMode, entity: str | None, group: str,
                      tags: list[str], job_type: str, run_id: str | None = None) -> dict:
    import wandb

    kwargs = {"name": name, "group": group, "tags": tags, "job_type": job_type, "dir": str(out_dir),
              "entity": entity}
    if (mode.mode or os.environ.get("WANDB_MODE", "online")) != "online":
        kwargs["settings"] = wandb.Settings(silent=True)  # our one line says where the run went
    if mode.mode:
        kwargs["mode"] = mode.mode
    if run_id:
        kwargs.update(id=run_id, resume="allow")
    return kwargs


def start_trackers(accelerator, project: str, config: dict, wandb_kwargs: dict | None) -> None:
    """init_trackers with a nested config for W&B and a flat one for TensorBoard; if W&B fails
    online, log offline rather than lose the run."""
    init_kwargs = {"wandb": wandb_kwargs} if wandb_kwargs else {}
    try:
        accelerator.init_trackers(project, init_kwargs=init_kwargs)
    except Exception as err:  # wandb raises several kinds (CommError, UsageError, timeouts)
        if not wandb_kwargs or wandb_kwargs.get("mode") == "offline":
            raise
        print(f"warning: W&B could not start online ({type(err).__name__}: "
              f"{str(err).splitlines()[0][:160] if str(err) else ''}); logging offline instead",
              flush=True)
        accelerator.trackers.clear()  # W&B starts first, so nothing had started yet
        accelerator.init_trackers(project, init_kwargs={"wandb": {**wandb_kwargs, "mode": "offline"}})
    for tracker in accelerator.trackers:
        tracker.store_init_configuration(flat_config(config) if tracker.name == "tensorboard" else config)


def wandb_run(accelerator):
    """The wandb Run on the main process when W&B logs, else None."""
    if not accelerator.is_main_process:
        return None
    return next((t.tracker for t in accelerator.trackers if t.name == "wandb"), None)


def finish_trackers(accelerator) -> None:
    """End every tracker, printing how to upload an offline W&B run. Unlike end_training this keeps
    the process group: the trainer still synchronises afterwards."""
    run = wandb_run(accelerator)
    sync_dir = Path(run.settings.sync_dir) if run is not None and run.offline else None
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
    if sync_dir:
        parts = list(sync_dir.parent.glob(f"offline-run-*-{run.id}"))  # one per --resume
        target = sync_dir if len(parts) <= 1 else sync_dir.parent / f"offline-run-*-{run.id}"
        print(f"W&B run saved offline; upload it with: wandb sync {target}", flush=True)


def write_history(run_dir: Path, history: list[dict]) -> None:
    """history.jsonl rewritten whole from the run's state, so an epoch repeated after --resume is
    never listed twice."""
    write_text(run_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))


class RunLog:
    """A training run's records. Trackers exist on the main process only (Accelerate starts them
    there); the other processes only pass through."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.accelerator = trainer.accelerator
        self.run_dir: Path = trainer.run_dir
        recipe = trainer.recipe
        mixing = recipe.augment.mixup_alpha > 0 or recipe.augment.cutmix_alpha > 0
        self.mixing_phases = frozenset(p.name for p in recipe.phases if p.mix and mixing)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def run_name(self) -> str:
        from .rundir import run_name
        return run_name(self.trainer.recipe, self.trainer.opts.run_name)

    @property
    def title(self) -> str:
        r = self.trainer.recipe
        return f"{self.run_name}: level {r.level} {r.title}, {r.arch} @ {r.img_size}px"

    def start(self) -> None:
        acc, opts, recipe = self.accelerator, self.trainer.opts, self.trainer.recipe
        if not (self.main and acc.log_with):
            return
        wandb_kwargs = None
        if "wandb" in tracker_names(opts.report_to):
            mode = choose_wandb_mode()
            if mode.warning:
                print(mode.warning, flush=True)
            id_file = self.run_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if opts.resume and id_file.exists() else None
            tags = [f"level-{recipe.level}", recipe.arch,
                    "pretrained" if recipe.pretrained else "from-scratch"]
            wandb_kwargs = wandb_init_kwargs(self.run_name, self.run_dir, mode, opts.wandb_entity,
                                             f"level-{recipe.level}", tags, "train", run_id)
        start_trackers(acc, opts.wandb_project, run_config(self.trainer), wandb_kwargs)
        run = wandb_run(acc)
        if run is not None:
            write_text(self.run_dir / "wandb_run_id", run.id)
            run.define_metric("epoch")
            for name in ("train/loss", "train/acc", "val/*", "train/epoch_*", "time/*", "phase"):
                run.define_metric(name, step_metric="epoch")
            run.define_metric("val/acc", step_metric="epoch", summary="max")

    def step(self, metrics: dict, step: int) -> None:
        self.accelerator.log(metrics, step=step)

    def epoch(self, record: dict) -> None:
        if not self.main:
            return
        write_history(self.run_dir, self.trainer.state.history)
        values = {EPOCH_METRICS[k]: v for k, v in record.items() if k in EPOCH_METRICS}
        self.accelerator.log({"epoch": record["epoch"], "phase": record["phase"], **values},
                             step=self.trainer.state.global_step)
        from .plots import plot_curves
        plot_curves(self.trainer.state.history, self.run_dir / "curves.png", self.title,
                    self.mixing_phases)

    def final(self, results: dict, test, data) -> None:
        """Test results: PNGs in the run dir, scalars to every tracker, tables and images to W&B."""
        if not self.main:
            return
        from .plots import plot_confusion, plot_per_class

        names = data.class_names
        labels = test.labels.numpy()
        matrix = confusion_matrix(test.preds, test.labels, len(names)).numpy()
        shown = f"test acc {results['test_acc']:.2%} on {len(labels)} images"
        plot_confusion(matrix, names, self.run_dir / "confusion.png", f"{self.run_name}: {shown}")
        plot_per_class(results["per_class_acc"], results["test_acc"], self.run_dir / "per_class.png",
                       f"{self.run_name}: per-class {shown}")
        summary = {key: results[k] for k, key in SUMMARY_KEYS.items() if results.get(k) is not None}
        acc, step = self.accelerator, self.trainer.state.global_step
        acc.log({k: v for k, v in summary.items() if k.startswith("test/")}, step=step)
        for tracker in acc.trackers:
            if tracker.name == "tensorboard":  # W&B gets a table and a bar chart instead
                tracker.log({f"test/class_acc/{n}": a for n, a in results["per_class_acc"].items()},
                            step=step)
        run = wandb_run(acc)
        if run is not None:
            self._log_wandb_results(run, results, test, data, matrix)
            run.summary.update(summary)

    def _log_wandb_results(self, run, results: dict, test, data, matrix: np.ndarray) -> None:
        import wandb

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
        run.log(media, step=self.trainer.state.global_step)
        if self.trainer.opts.log_checkpoint:
            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", f"{self.run_name}-best"), type="model",
                                      metadata={k: results[k] for k in ("level", "arch", "test_acc",
                                                                        "best_val_acc", "best_epoch")})
            artifact.add_file(str(self.run_dir / "best.safetensors"))
            run.log_artifact(artifact, aliases=["best"])

    def finish(self) -> None:
        if self.main:
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


def log_ensemble(table_rows: list[list], columns: list[str], project: str = "cifar10-levels",
                 report_to: str = "wandb", out_dir: str | os.PathLike = ".", entity: str | None = None,
                 run_name: str = "ensemble", config: dict | None = None) -> None:
    """One run in `project` (group 'ensemble') holding the ensemble's comparison table, written
    under `out_dir`. Safe to call on every process: only the main one logs."""
    from accelerate import Accelerator

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
            import wandb
            table = wandb.Table(columns=list(columns), data=[list(r) for r in table_rows])
            tracker.log({"ensemble/comparison": table})
        elif tracker.name == "tensorboard":
            from .report import markdown_table
            tracker.writer.add_text("ensemble/comparison", markdown_table(columns, table_rows))
    finish_trackers(accelerator)

