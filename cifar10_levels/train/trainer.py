"""A whole run, phase by phase: each epoch trained, validated and checkpointed, then the test set."""
from __future__ import annotations

import json
import time

import torch
from accelerate import skip_first_batches
from accelerate.utils import set_seed

from ..data.augment import Normalizer, TrainAugment
from ..tracking.console import SlowRunWarning, epoch_line, format_duration
from ..data.cifar10 import load_cifar10
from .ema import final_weights, make_ema
from ..errors import UserError
from ..evaluation.evaluate import evaluate
from ..files import write_json
from ..tracking.hardware import hardware_name
from ..evaluation.metrics import reliability_bins
from .loop import EpochStats, train_one_epoch
from ..models.factory import count_parameters, create_model, set_backbone_trainable, set_train_mode
from ..optim.factory import build_optimizer, build_scheduler, scaled_lr
from .options import RunOptions
from ..checkpoint.run_store import RunStore, checkpoint_meta
from ..tracking.plots import plot_reliability
from ..recipes import Phase, Recipe
from ..tracking.results import results_text, run_results
from .checkpoint_timer import CheckpointTimer
from .setup import check_batch_fits, make_accelerator, make_loaders, make_losses, ready_model, \
    uses_channels_last
from ..checkpoint.run_dir import STATE_DIR, run_dir
from .step_hooks import Diverged, StepHooks, StopFlag, Stopped
from ..runtime.time_budget import TrainingLength
from ..runtime.time_budget_probe import process_seconds, replan, run_plan
from ..tracking.run_log import RunLog, write_history
from ..checkpoint.train_state import TrainState


class Trainer:
    def __init__(self, recipe: Recipe, opts: RunOptions):
        self.recipe, self.opts = recipe, opts
        self.run_dir = run_dir(opts.output_dir, recipe, opts.run_name)
        self.accelerator, self.amp = make_accelerator(recipe, opts, self.run_dir)
        accelerator = self.accelerator
        self.store = RunStore(accelerator, self.run_dir, opts.overwrite)
        if opts.resume or opts.resume_auto:
            self.store.check_resumable(auto=opts.resume_auto)

        self.data = load_cifar10(opts.dataset, opts.train_limit, opts.eval_limit)
        self.global_batch = recipe.batch_size * accelerator.num_processes * opts.grad_accum
        check_batch_fits(recipe, self.data, accelerator.num_processes)

        set_seed(recipe.seed)  # the same initial weights on every process and world size
        model = create_model(recipe.arch, len(self.data.class_names), recipe.pretrained,
                             opts.pretrained_file)
        self.channels_last = uses_channels_last(recipe, opts, accelerator.device)
        self.model = self.base_model = ready_model(model, self.data, self.channels_last)
        self.num_params = count_parameters(self.base_model)
        self.ema = make_ema(accelerator, self.base_model, recipe.ema_decay)
        set_seed(recipe.seed, device_specific=True)  # a different augmentation stream per process

        self.normalize = Normalizer(recipe.img_size, recipe.mean, recipe.std, self.channels_last,
                                    recipe.tta_scheme)
        self.augment = TrainAugment(recipe.augment, self.normalize, recipe.label_smoothing,
                                    len(self.data.class_names), accelerator.device, recipe.seed)
        self.hard_loss, self.soft_loss = make_losses(recipe)
        loaders = make_loaders(self.data, recipe)
        self.train_loader, self.val_loader, self.test_loader = loaders.train, loaders.val, loaders.test
        self.state = TrainState()
        self.stop = StopFlag(accelerator)
        self.checkpoint_timer = CheckpointTimer(accelerator, opts.checkpoint_every) \
            if opts.checkpoint_every else None
        self.optimizer = self.scheduler = self.prepared_train = self.prepared_val = None
        self.plan = run_plan(self)  # --time-budget: the steps that fit, or on --resume the saved plan
        self.state.budget_plan = self.plan and self.plan.to_dict()
        self.length = TrainingLength(recipe, len(self.train_loader), opts.grad_accum, self.plan)
        total_steps = self.length.total_epochs * len(self.train_loader) // accelerator.num_processes
        self.warn_if_slow = SlowRunWarning(total_steps, self.device_name(), self.print)
        self.log = RunLog(self)

    def print(self, *args) -> None:
        if self.accelerator.is_main_process:  # accelerator.print prints once per machine
            print(*args, flush=True)

    def device_name(self) -> str:
        return hardware_name(self.accelerator)

    def save_state(self) -> None:
        self.store.save_state(self.state)
        if self.checkpoint_timer is not None:
            self.checkpoint_timer.saved()

    def save_checkpoint(self, name: str, epoch: int, val_acc: float, test_acc: float | None = None,
                        weights: str = "raw", model: torch.nn.Module | None = None) -> None:
        """`model` holds the `weights` named in the metadata (default: the model being trained)."""
        meta = checkpoint_meta(self.recipe, self.data.class_names, epoch, val_acc, test_acc, weights)
        self.store.save_checkpoint(self.model if model is None else model, name, meta)

    def fit(self) -> dict:
        accelerator, recipe = self.accelerator, self.recipe
        self.print(f"recipe: {json.dumps(recipe.to_dict())}")
        self.print(f"hardware: {self.device_name()}, precision {self.amp.name}; "
                   f"batch {recipe.batch_size}/device x {accelerator.num_processes} process(es) x "
                   f"{self.opts.grad_accum} accumulation = global batch {self.global_batch}")
        for planned in (self.amp.measured, self.plan):
            if planned is not None:
                self.print(planned.line())
        self.print(f"data: {self.data.source}: train {len(self.data.train)}, val {len(self.data.val)}, "
                   f"test {len(self.data.test)}")
        self.store.prepare_output_dir()
        resuming = self.opts.resume
        if resuming:
            self.state = self.store.load_train_state()
            if accelerator.is_main_process:  # drop epochs logged after the state was saved
                write_history(self.run_dir, self.state.history)
            self.print(f"resuming from {self.store.state_dir}: phase {self.state.phase + 1}, epoch "
                       f"{self.state.epoch + 1}, step {self.state.step}")
        self.log.start()
        started = time.perf_counter() - self.state.train_seconds
        with self.stop:
            try:
                for index, phase in enumerate(recipe.phases):
                    if self.length.epochs(index) == 0 or index < self.state.phase:
                        continue
                    if index > self.state.phase:
                        self.state.phase, self.state.epoch, self.state.step = index, 0, 0
                    self.prepare_phase(index, phase)
                    if resuming:
                        accelerator.load_state(str(self.store.state_dir))
                        resuming = False
                    self.run_phase(index, phase, started)
            except Stopped:
                self.print(f"stopped: state saved in {self.run_dir / STATE_DIR}; continue with the "
                           f"same command{'' if self.opts.resume_auto else ' and --resume'}")
                self.log.finish()
                raise
            except Diverged:
                self.log.finish()
                raise
        return self.finish(time.perf_counter() - started)

    def prepare_phase(self, index: int, phase: Phase) -> None:
        set_backbone_trainable(self.base_model, phase.train_backbone)
        lr = scaled_lr(phase.lr, self.recipe, self.global_batch, self.opts.lr_scaling)
        optimizer = build_optimizer(self.base_model, self.recipe, lr)
        scheduler = build_scheduler(optimizer, self.recipe, lambda: self.length.scheduler_steps(index),
                                    steps_per_epoch=len(self.train_loader) / self.opts.grad_accum)
        self.accelerator.free_memory()  # forget the previous phase's wrappers so save_state holds this one
        model = torch.compile(self.base_model) if self.opts.compile else self.base_model
        self.model, self.optimizer, self.scheduler, self.prepared_train, self.prepared_val = \
            self.accelerator.prepare(model, optimizer, scheduler, self.train_loader, self.val_loader)

    def train_epoch(self, phase: Phase, loader) -> EpochStats:
        """One epoch of `phase` over `loader` (the prepared train loader, less the batches done)."""
        hooks = StepHooks(self.accelerator, self.state, phase.name, max_nonfinite=self.opts.max_nonfinite,
                          best_checkpoint=self.store.best_checkpoint,
                          check_every_step=self.amp.scaler is None, stop=self.stop,
                          save_state=self.save_state, log_step=self.log.step,
                          warn_if_slow=self.warn_if_slow, progress=self.opts.progress,
                          checkpoint_timer=self.checkpoint_timer)
        mix = self.recipe.mixes(phase)
        return train_one_epoch(self.accelerator, self.model, self.optimizer, self.scheduler, loader,
                               self.augment, mix, self.soft_loss if mix else self.hard_loss, self.amp,
                               hooks, self.recipe.clip_grad, self.ema)

    def run_phase(self, index: int, phase: Phase, started: float) -> None:
        state = self.state
        while state.epoch < self.length.epochs(index):
            set_train_mode(self.model, phase.train_backbone)
            self.prepared_train.set_epoch(state.epochs_done)
            self.augment.set_epoch(state.epochs_done)
            loader = self.prepared_train
            if state.step:  # resuming mid-epoch: the same order, less the batches already done
                loader = skip_first_batches(loader, state.step)
            loader = self.length.limit(loader, index, state.epoch, state.step)
            stats = self.train_epoch(phase, loader)
            val = evaluate(self.accelerator, self.model, self.prepared_val, self.normalize,
                           autocast=self.amp.autocast)
            val_ema = self.ema.evaluate(self.accelerator, self.prepared_val, self.normalize, self.amp) \
                if self.ema else None
            state.train_seconds = time.perf_counter() - started
            state.epochs_done += 1
            weights, acc = ("ema", val_ema.acc) if val_ema and val_ema.acc > val.acc else ("raw", val.acc)
            improved = acc > state.best_val_acc
            if improved:
                state.best_val_acc, state.best_epoch, state.best_weights = acc, state.epochs_done, weights
                self.save_checkpoint("best", state.epochs_done, acc, weights=weights,
                                     model=self.ema.module if weights == "ema" else None)
            self.save_checkpoint("last", state.epochs_done, val.acc)
            if self.plan is not None:
                self.follow_pace(index, stats)
            eta = state.train_seconds / state.epochs_done * max(self.length.planned_epochs - state.epochs_done, 0)
            record = {"epoch": state.epochs_done, "phase": phase.name, "train_loss": stats.loss,
                      "train_acc": stats.acc, "val_loss": val.loss, "val_acc": val.acc,
                      **({"val_loss_ema": val_ema.loss, "val_acc_ema": val_ema.acc} if val_ema else {}),
                      "lr": self.scheduler.get_last_lr()[0],
                      "images_per_s": stats.images / max(stats.seconds, 1e-9),
                      "epoch_seconds": stats.seconds, "elapsed_seconds": state.train_seconds}
            state.history.append(record)
            self.print(epoch_line(record, self.length.total_epochs, self.recipe.mixes(phase), improved, eta))
            self.log.epoch(record)
            state.epoch += 1
            state.step = 0
            self.save_state()

    def follow_pace(self, index: int, stats: EpochStats) -> None:
        """--time-budget: re-fit the steps left to the time left; the schedule ends with them."""
        plan = replan(self, index, stats)
        if plan is not self.plan:
            pace = "slower" if plan.steps[index] < self.plan.steps[index] else "faster"
            self.plan = self.length.plan = plan
            self.state.budget_plan = plan.to_dict()
            self.print(f"time budget: {pace} than planned; now {plan.epochs(index):.2f} epochs of this "
                       f"phase ({plan.steps[index]} steps), planned end at "
                       f"{format_duration(plan.planned_seconds)}")

    def finish(self, seconds: float) -> dict:
        """The best weights on the test set (plain and TTA in one pass): results.json, the table, logs."""
        accelerator, recipe, state = self.accelerator, self.recipe, self.state
        if state.best_epoch < 0:
            raise UserError("every phase has 0 epochs: nothing to train; set --epochs")
        test_loader = accelerator.prepare_data_loader(self.test_loader)
        final = final_weights(accelerator, self.model, self.ema, test_loader, self.normalize, self.amp,
                              recipe.tta, state.history[-1]) if self.ema else None  # before load_best
        self.store.load_best(self.base_model)
        views = evaluate(accelerator, self.model, test_loader, self.normalize, max(recipe.tta, 1),
                         autocast=self.amp.autocast)
        test, tta = views.plain(), (views if recipe.tta > 1 else None)
        results = run_results(recipe, self.data, state, test, tta, seconds=seconds,
                              num_params=self.num_params, hardware=self.device_name(),
                              precision=self.amp.name, num_processes=accelerator.num_processes,
                              global_batch=self.global_batch)
        results["wandb_url"] = self.log.wandb_url
        if final:
            results["final_weights"] = final
        results["precision_probe"] = self.amp.measured and self.amp.measured.record()
        results["time_budget"] = self.plan and self.plan.results(process_seconds(), self.opts.resume)
        results["checkpoint_every"] = self.opts.checkpoint_every
        self.save_checkpoint("best", state.best_epoch, state.best_val_acc, test.acc, state.best_weights)
        if accelerator.is_main_process:
            plot_reliability(reliability_bins(test.probs, test.labels), self.run_dir / "reliability.png",
                             f"{recipe.arch}: test, plain")
            write_json(self.run_dir / "results.json", results)
        self.print(results_text(results, self.run_dir / "results.json"))
        self.log.final(results, test, self.data)
        self.log.finish()
        accelerator.wait_for_everyone()
        return results
