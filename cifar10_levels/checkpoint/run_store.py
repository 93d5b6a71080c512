"""What a run keeps on disk: best/last checkpoints and the state --resume reads, and which processes
write them (the global main on a shared disk, each machine's main on machine-local disks)."""
from __future__ import annotations

import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file
from torch import nn

from .io import CheckpointMeta, read_meta, save_checkpoint
from .meta import BEST_NAME
from ..errors import UserError
from ..files import check_writable_dir, ensure_writable_dir, remove_stale_temporaries, write_json
from ..recipes import Recipe
from .resume_state import EMA_FILE, TRAIN_STATE_FILE, read_ema, read_train_state, save_ema, \
    state_problem, write_recipe
from .run_dir import RESULTS_NAME, STATE_DIR, clear_run_dir, find_state_dir, nothing_to_resume, replace_dir
from .state_dict import clean_state_dict, load_full_state_dict
from .train_state import TrainState


def on_every_process(accelerator: Accelerator, condition: bool) -> bool:
    flag = torch.tensor([float(condition)], device=accelerator.device)
    return bool(accelerator.gather(flag).min().item())


def make_checkpoint_meta(recipe: Recipe, class_names: list[str], epoch: int, val_acc: float,
                         test_acc: float | None = None, weights: str = "raw",
                         teachers: list[dict] | None = None) -> CheckpointMeta:
    """What a checkpoint of this run at `epoch` records: enough to rebuild the model from the file,
    and the teachers it was distilled from (train.distill's records)."""
    r = recipe
    distilled_from = [f"{t['arch']} {t['sha256'][:16]}" for t in teachers or []]
    return CheckpointMeta(arch=r.arch, level=r.level, img_size=r.img_size, num_classes=len(class_names),
                          class_names=class_names, mean=list(r.mean), std=list(r.std), seed=r.seed,
                          epoch=epoch, val_acc=val_acc, test_acc=test_acc, recipe=r.to_dict(),
                          weights=weights, distilled_from=distilled_from)


class RunFinished(Exception):
    """--resume auto of a finished run: nothing to do, and no error (a requeued job ends cleanly)."""


class RunStore:
    """The run directory's checkpoints and state. Every method is called on every process."""

    def __init__(self, accelerator: Accelerator, run_dir: Path, overwrite: bool, recipe: Recipe):
        self.accelerator, self.run_dir, self.overwrite, self.recipe = accelerator, run_dir, overwrite, recipe
        self.ema = None  # the run's train.ema.WeightEma, once the model exists (with --ema)
        if accelerator.is_local_main_process:  # every machine writes its own copy unless the disk is shared
            check_writable_dir(run_dir)  # created in prepare_output_dir: bad input leaves nothing behind
        accelerator.wait_for_everyone()
        self.state_dir = find_state_dir(run_dir)
        self.writes_files = accelerator.is_main_process  # set per machine once the disk is known

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / BEST_NAME

    def check_resumable(self, auto: bool = False) -> None:
        """--resume: every process finds a saved state. `auto` (--resume auto, decided on each machine
        from its own disk): every process decided alike, to resume or to start."""
        if auto:
            if not on_every_process(self.accelerator, self.state_dir is not None) and \
                    not on_every_process(self.accelerator, self.state_dir is None):
                raise UserError(f"--resume auto: {self.run_dir} holds saved state on some machines "
                                "but not on others; copy it to every machine's --output-dir, or "
                                "start again with --overwrite")
            return
        if not on_every_process(self.accelerator, self.state_dir is not None):
            raise UserError(nothing_to_resume(self.run_dir, on_another_machine=self.state_dir is not None))

    def check_unfinished(self, epochs_left: bool, auto: bool, report) -> None:
        """--resume of a run with results.json and no epochs left: left as it is (re-evaluating it is
        cifar10-evaluate's job); `auto` (--resume auto): `report` says so and RunFinished is raised."""
        done = (self.run_dir / RESULTS_NAME).is_file() and not epochs_left
        if not on_every_process(self.accelerator, not done):
            if auto:
                report(f"--resume auto: the run in {self.run_dir} is finished ({RESULTS_NAME}); nothing to do")
                raise RunFinished()
            raise UserError(f"--resume: the run in {self.run_dir} is finished ({RESULTS_NAME}) and is "
                            f"left as it is; evaluate it again with cifar10-evaluate --weights {self.run_dir}")

    def prepare_output_dir(self) -> None:
        """Shared disk: the global main writes. Machine-local disks: each machine's main keeps a copy
        of best.safetensors and state/, which load_best and --resume read on that machine."""
        accelerator = self.accelerator
        if accelerator.is_main_process:
            self.make_run_dir()
        accelerator.wait_for_everyone()
        shared = self.output_dir_is_shared()
        self.writes_files = accelerator.is_main_process or (accelerator.is_local_main_process and not shared)
        accelerator.project_configuration.save_on_each_node = not shared  # Accelerate's save_state likewise
        if self.writes_files and not accelerator.is_main_process:
            self.make_run_dir()
        accelerator.wait_for_everyone()

    def output_dir_is_shared(self) -> bool:
        """Whether every process sees the global main's run dir: it leaves a token there, all look."""
        accelerator = self.accelerator
        name = [f".shared-{uuid.uuid4().hex}.tmp" if accelerator.is_main_process else None]
        if accelerator.num_processes > 1:
            broadcast_object_list(name)
        token = self.run_dir / name[0]
        if accelerator.is_main_process:
            token.touch()
        accelerator.wait_for_everyone()
        shared = on_every_process(accelerator, token.exists())
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            token.unlink()
        return shared

    def make_run_dir(self) -> None:
        """--overwrite removes the earlier run only now, after every check has passed."""
        if self.overwrite:
            clear_run_dir(self.run_dir)
        remove_stale_temporaries(ensure_writable_dir(self.run_dir))

    def save_state(self, state: TrainState) -> None:
        accelerator = self.accelerator
        tmp = self.run_dir / (STATE_DIR + ".tmp")
        if self.writes_files and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
            accelerator.wait_for_everyone()
            if self.writes_files:
                if self.ema is not None:
                    save_ema(tmp / EMA_FILE, self.ema.module.state_dict(), self.ema.updates)
                write_recipe(tmp, self.recipe.to_dict())
                write_json(tmp / TRAIN_STATE_FILE, asdict(state))
                replace_dir(tmp, self.run_dir / STATE_DIR)
        except OSError:  # a full disk: the saved state before this one stays, no half-written copy
            if self.writes_files:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        accelerator.wait_for_everyone()

    def check_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """--resume, before anything is written: every file of the saved state fits `model` and
        `optimizer` (built as the phase that goes on builds them); every process agrees."""
        fsdp = self.accelerator.distributed_type.name == "FSDP"
        problem = state_problem(self.state_dir, model, optimizer, self.ema and self.ema.module, fsdp)
        if not on_every_process(self.accelerator, problem is None):
            raise UserError(problem or f"--resume: the saved state of {self.run_dir} is damaged on "
                            "another machine; restore it from a copy, or start the run again with "
                            "--overwrite")

    def load_state(self) -> None:
        """The checked state into the prepared model, optimizer and scheduler, the random states and
        the EMA."""
        self.accelerator.load_state(str(self.state_dir))
        if self.ema is not None:
            weights, self.ema.updates = read_ema(self.state_dir / EMA_FILE, self.ema.module)
            self.ema.module.load_state_dict(weights)

    def load_train_state(self) -> TrainState:
        """The saved TrainState, its best raised to best.safetensors' when that one is better."""
        state = read_train_state(self.state_dir / TRAIN_STATE_FILE)
        best = self.best_checkpoint
        if best.exists():  # saved after the state: a kill in between must not let a worse one replace it
            meta = read_meta(best)
            if meta.val_acc > state.best_val_acc:
                state.best_val_acc, state.best_epoch, state.best_weights = meta.val_acc, meta.epoch, \
                    meta.weights
        return state

    def save_checkpoint(self, model: nn.Module, name: str, meta: CheckpointMeta) -> None:
        """Called on every process: under FSDP get_state_dict gathers the full weights."""
        state = self.accelerator.get_state_dict(model)
        if self.writes_files:
            save_checkpoint(self.run_dir / f"{name}.safetensors", clean_state_dict(state), meta)

    def load_best(self, model: nn.Module) -> None:
        self.accelerator.wait_for_everyone()
        load_full_state_dict(model, load_file(str(self.best_checkpoint)))
