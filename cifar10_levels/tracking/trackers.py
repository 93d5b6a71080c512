"""Starting and ending Accelerate's trackers (W&B, TensorBoard) for training runs and the ensemble:
their configs, W&B's init arguments, and offline W&B runs that still get saved."""
from __future__ import annotations

import os
from pathlib import Path

from .wandb_account import WandbMode


def tracker_names(report_to: str) -> list[str]:
    """Accelerate `log_with` names for --report-to."""
    return {"wandb": ["wandb"], "tensorboard": ["tensorboard"], "all": ["wandb", "tensorboard"],
            "none": []}[report_to]


def tracker_problem(report_to: str) -> str | None:
    """Why a tracker --report-to names cannot start (Accelerate would only warn and log nothing);
    None when every one can."""
    import importlib.util

    from .wandb_account import online_mode_problem

    names = tracker_names(report_to)
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        return (f"--report-to {report_to}: {' and '.join(missing)} is not installed; pip install "
                f"{' '.join(missing)}, or pass --report-to none")
    return online_mode_problem() if "wandb" in names else None


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


def wandb_init_kwargs(name: str, out_dir: Path, mode: WandbMode, entity: str | None, group: str,
                      tags: list[str], job_type: str, run_id: str | None = None) -> dict:
    import wandb  # slow to import, and only a run that logs to W&B needs it

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
    if run is not None:  # finish() can return before W&B's service has written the run file
        import wandb
        wandb.teardown()
    if sync_dir:
        parts = list(sync_dir.parent.glob(f"offline-run-*-{run.id}"))  # one per --resume
        target = sync_dir if len(parts) <= 1 else sync_dir.parent / f"offline-run-*-{run.id}"
        print(f"W&B run saved offline; upload it with: wandb sync {target}", flush=True)
