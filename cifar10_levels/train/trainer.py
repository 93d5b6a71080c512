"""A whole run, phase by phase: each epoch trained, validated and checkpointed, then the test set."""
from __future__ import annotations

import dataclasses
import json
import time

import torch
from accelerate import skip_first_batches
from accelerate.utils import set_seed

from ..checkpoint.run_dir import RESULTS_NAME, STATE_DIR
from ..checkpoint.run_store import RunStore, make_checkpoint_meta
from ..checkpoint.train_state import TrainState
from ..data.augment import TrainAugment
from ..data.normalize import Normalizer
from ..data.cifar10 import load_cifar10
from ..errors import UserError
from ..evaluation.evaluate import EvalResult, evaluate
from ..evaluation.metrics import reliability_bins
from ..files import write_json
from ..models.factory import count_parameters, set_backbone_trainable, set_train_mode
from ..optim.factory import build_optimizer, build_scheduler, scaled_lr
from ..recipes import Phase
from ..runtime.time_budget import BudgetPlan, TrainingLength
from ..runtime.time_budget_probe import ProbeParts, process_seconds, replan, resumed_plan, run_plan
from ..tracking.console import SlowRunWarning, epoch_line
from ..tracking.hardware import hardware_name
from ..tracking.plots import plot_reliability
from ..tracking.results import make_results, results_text
from ..tracking.run_log import RunLog, TrackerSettings, run_config
from .config import RunConfig, write_config
from .distill import load_teachers, same_teachers, with_teachers
from .ema import final_weights, make_ema
from .loop import EpochStats, train_one_epoch
from .preflight import batch_too_large
from .setup import make_accelerator, make_loaders, make_losses, make_model
from .step_hooks import Diverged, StepHooks, StopFlag, Stopped


class Trainer:
    """A run set up in `__init__`'s named steps, in an order the seeds depend on; trained by `fit`."""

    def __init__(self, config: RunConfig):
        self.config, self.recipe = config, config.recipe
        self._setup_accelerator()
        self._setup_data()
        self._setup_teachers()
        self._setup_model()
        self._setup_augmentation()
        self._setup_loaders()
        self._setup_state()
        self._setup_budget()
        if self.saved_state_to_load is not None:
            self.check_saved_run()
        self._setup_logging()
        self.optimizer = self.scheduler = self.prepared_train = self.prepared_val = None  # prepare_phase's

    def _setup_accelerator(self) -> None:
        """The Accelerator and its precision (written into the config), the store of checkpoints and state."""
        self.run_dir = self.config.run_dir
        self.accelerator, self.amp, self.config = make_accelerator(self.config)
        self.hardware = hardware_name(self.accelerator)
        self.store = RunStore(self.accelerator, self.run_dir, self.config.overwrite, self.recipe)
        if self.config.resume or self.config.resume_auto:
            self.store.check_resumable(auto=self.config.resume_auto)

    def _setup_data(self) -> None:
        config = self.config
        self.data = load_cifar10(config.dataset, config.train_limit, config.eval_limit)

    def _setup_teachers(self) -> None:
        """--teachers, on every process, before the seeded steps: building a model draws from the
        RNGs that the seeds then reset."""
        self.teachers = load_teachers(self.config, self.data.class_names, self.accelerator.device,
                                      self.amp.unprepared_autocast) if self.config.teachers else None

    def _setup_model(self) -> None:
        self.model = self.base_model = make_model(self.config, self.data)
        self.num_params = count_parameters(self.base_model)
        self.ema = self.store.ema = make_ema(self.accelerator, self.base_model, self.recipe.ema_decay)

    def _setup_augmentation(self) -> None:
        """Normalisation, the training augmentation and the losses, after the per-process seed."""
        recipe = self.recipe
        set_seed(recipe.seed, device_specific=True)  # a different augmentation stream per process
        self.normalize = Normalizer(recipe.img_size, recipe.mean, recipe.std, self.config.channels_last,
                                    recipe.tta_scheme)
        self.augment = TrainAugment(recipe.augment, self.normalize, recipe.label_smoothing,
                                    len(self.data.class_names), self.accelerator.device, recipe.seed)
        self.hard_loss, self.soft_loss = make_losses(recipe)

    def _setup_loaders(self) -> None:
        """The batch over every process, checked against the data, and the loaders."""
        self.global_batch = self.recipe.batch_size * self.accelerator.num_processes * self.config.grad_accum
        if problem := batch_too_large(self.recipe.batch_size, self.accelerator.num_processes,
                                      len(self.data.train), self.data.source):
            raise UserError(problem)
        loaders = make_loaders(self.data, self.recipe)
        self.train_loader, self.val_loader, self.test_loader = loaders.train, loaders.val, loaders.test

    def _setup_state(self) -> None:
        """Where the run starts (on --resume, where it was saved), and the flag SIGTERM/SIGINT raise."""
        self.state = self.store.load_train_state() if self.config.resume else TrainState()
        self.saved_state_to_load = self.store.state_dir if self.config.resume else None
        self.state.teachers_sha256 = same_teachers(self.state, self.teachers, self.config)
        self.stop = StopFlag(self.accelerator)

    def _setup_budget(self) -> None:
        """--time-budget: the steps that fit, the net that trains best in them (Recipe.budget_net) and
        the recipe's settings for the epochs they buy; on --resume the plan saved with the run, as it
        is (the new process's clock cannot tell the time left); and how long each phase trains."""
        config = self.config
        if config.resume:
            self.plan = resumed_plan(self.state.budget_plan, config.time_budget, self.run_dir)
        elif config.time_budget:
            self.plan = self.budget_plan()
            bought = (self.recipe.arch, self.plan.total_epochs)
            if arch := self.recipe.net_for_budget(bought[1], config.pinned):
                self.adopt(config.with_net(arch), new_model=True)
                self.plan = dataclasses.replace(self.budget_plan(), instead_of=bought)
            batch = self.recipe.batch_size
            largest = len(self.data.train) // self.accelerator.num_processes
            # once: the later re-plans change the run's length only
            self.adopt(self.config.tuned_for(self.plan.total_epochs, largest))
            if self.recipe.batch_size != batch:  # the row's batch: its steps timed anew
                self.plan = dataclasses.replace(self.budget_plan(), instead_of=self.plan.instead_of,
                                                retimed_from=(batch, self.plan.total_epochs))
            self.state.budget_plan = self.plan.to_dict()
        else:
            self.plan = None
        self.replans = self.plan is not None and not config.resume
        self.length = TrainingLength(self.recipe, len(self.train_loader), config.grad_accum, self.plan)

    def budget_plan(self) -> BudgetPlan:
        parts = ProbeParts(self.base_model, self.data, with_teachers(self.augment, self.teachers),
                           self.normalize, self.hard_loss, self.amp.name, self.val_loader.batch_size)
        return run_plan(parts, self.recipe, self.accelerator, budget_seconds=self.config.time_budget,
                        grad_accum=self.config.grad_accum, train_batches=len(self.train_loader),
                        images_per_step=self.global_batch, run_dir=self.run_dir)

    def adopt(self, config: RunConfig, new_model: bool = False) -> None:
        """`config` from here on: its net built anew when `new_model`, its augmentation and losses, and
        its loaders where its batch differs."""
        if config != self.config or new_model:
            rebatched = config.recipe.batch_size != self.recipe.batch_size
            self.config, self.recipe, self.store.recipe = config, config.recipe, config.recipe
            if new_model:
                self._setup_model()
            self._setup_augmentation()
            if rebatched:
                self._setup_loaders()

    def _setup_logging(self) -> None:
        """The slow-run warning, the run log with the configuration its trackers record, and the step
        hooks that report to them and count the steps."""
        config, accelerator = self.config, self.accelerator
        total_steps = self.length.total_epochs * len(self.train_loader) // accelerator.num_processes
        self.warn_if_slow = SlowRunWarning(total_steps, self.hardware, self.print)
        teachers = {"teachers": self.teachers.records} if self.teachers else {}
        tracked = run_config({**config.to_dict(), **teachers}, self.recipe, accelerator, self.data,
                             global_batch=self.global_batch, resumed=config.resume,
                             precision_probe=self.amp.measured and self.amp.measured.record(),
                             time_budget=self.plan and self.plan.to_dict())
        settings = TrackerSettings(config.name, config.report_to, config.wandb_project,
                                   config.wandb_entity, config.log_checkpoint, config.resume)
        self.log = RunLog(accelerator, self.run_dir, tracked, self.recipe, settings)
        self.hooks = StepHooks(accelerator, config, check_every_step=self.amp.scaler is None, stop=self.stop,
                               log_step=self.log.step, warn_if_slow=self.warn_if_slow,
                               save_state=self.save_state_mid_epoch)

    def print(self, *args) -> None:
        if self.accelerator.is_main_process:  # accelerator.print prints once per machine
            print(*args, flush=True)

    def save_state(self) -> None:
        """The one path that saves the resume state."""
        self.store.save_state(self.state)
        self.hooks.saved()

    def save_state_mid_epoch(self) -> None:
        """During an epoch (SIGTERM/SIGINT, --checkpoint-every), at the same step on every process:
        the hooks' count so far and the epoch's totals into the state, then saved."""
        self.record_steps(self.hooks.totals.summed(self.accelerator))
        self.save_state()

    def record_steps(self, epoch_totals: dict | None) -> None:
        state, hooks = self.state, self.hooks
        state.step, state.global_step, state.nonfinite = hooks.step, hooks.global_step, hooks.nonfinite
        state.epoch_totals = epoch_totals

    def save_checkpoint(self, name: str, epoch: int, val_acc: float, test_acc: float | None = None,
                        weights: str = "raw", model: torch.nn.Module | None = None) -> None:
        """`model` holds the `weights` named in the metadata (default: the model being trained)."""
        meta = make_checkpoint_meta(self.recipe, self.data.class_names, epoch, val_acc, test_acc, weights,
                                    self.teachers.records if self.teachers else None)
        self.store.save_checkpoint(self.model if model is None else model, name, meta)

    def fit(self) -> dict:
        """Every phase's epochs from where the state stands, then the test set."""
        self.print_setup()
        self.store.prepare_output_dir()
        if self.accelerator.is_main_process:
            write_config(self.config)
        self.log.start(self.state.history)
        state = self.state
        started = time.perf_counter() - state.train_seconds
        with self.stop:
            try:
                for index, phase in self.phases_to_train():
                    self.prepare_phase(index, phase)
                    while state.epoch < self.length.epochs(index):
                        stats = self.train_epoch(phase, self.start_epoch(index, phase))
                        val, val_ema = self.validate()
                        state.train_seconds = time.perf_counter() - started
                        state.epochs_done += 1
                        improved = self.save_checkpoints(val, val_ema)
                        if self.replans:
                            self.follow_pace(index, stats)
                        self.log_epoch(phase, stats, val, val_ema, improved)
                        state.epoch += 1
                        state.step = 0
                        self.save_state()
            except Stopped:
                self.save_state_mid_epoch()
                self.print(f"stopped: state saved in {self.run_dir / STATE_DIR}; continue with the "
                           f"same command{'' if self.config.resume_auto else ' and --resume'}")
                self.log.finish(state.history)
                raise
            except Diverged:
                self.log.finish(state.history)
                raise
        return self.finish(time.perf_counter() - started)

    def phases_to_train(self):
        """(index, phase) from the state's phase on, skipping phases of 0 epochs; the state moves to
        the start of each phase after its own."""
        state = self.state
        for index, phase in enumerate(self.recipe.phases):
            if self.length.epochs(index) == 0 or index < state.phase:
                continue
            if index > state.phase:
                state.phase, state.epoch, state.step = index, 0, 0
            yield index, phase

    def print_setup(self) -> None:
        recipe, accelerator = self.recipe, self.accelerator
        self.print(f"recipe: {json.dumps(recipe.to_dict())}")
        self.print(f"hardware: {self.hardware}, precision {self.amp.name}; "
                   f"batch {recipe.batch_size}/device x {accelerator.num_processes} process(es) x "
                   f"{self.config.grad_accum} accumulation = global batch {self.global_batch}")
        plan_lines = self.plan.lines(recipe) if self.plan else ()
        for line in (self.amp.measured and self.amp.measured.line(), *plan_lines, recipe.tuning_line()):
            if line:
                self.print(line)
        self.print(f"data: {self.data.source}: train {len(self.data.train)}, val {len(self.data.val)}, "
                   f"test {len(self.data.test)}")
        if self.teachers is not None:
            self.print(self.teachers.line())
        if self.saved_state_to_load is not None:
            state = self.state
            self.print(f"resuming from {self.saved_state_to_load}: phase {state.phase + 1}, epoch "
                       f"{state.epoch + 1}, step {state.step}")

    def check_saved_run(self) -> None:
        """--resume, before anything is written: a finished run is left as it is (re-evaluating it is
        cifar10-evaluate's job), and the saved files fit the model and the optimizer of the phase that
        goes on (built here as prepare_phase builds it)."""
        state = self.state
        self.store.check_unfinished(any(self.length.epochs(i) > (state.epoch if i == state.phase else 0)
                                        for i in range(state.phase, len(self.recipe.phases))),
                                    self.config.resume_auto, self.print)
        index = next((i for i in range(state.phase, len(self.recipe.phases))
                      if self.length.epochs(i) > 0), state.phase)
        set_backbone_trainable(self.base_model, self.recipe.phases[index].train_backbone)
        self.store.check_state(self.base_model, self.phase_optimizer(index))

    def prepare_phase(self, index: int, phase: Phase) -> None:
        set_backbone_trainable(self.base_model, phase.train_backbone)
        optimizer = self.phase_optimizer(index)
        scheduler = build_scheduler(optimizer, self.recipe, lambda: self.length.scheduler_steps(index),
                                    steps_per_epoch=len(self.train_loader) / self.config.grad_accum)
        self.accelerator.free_memory()  # forget the previous phase's wrappers so save_state holds this one
        model = torch.compile(self.base_model) if self.config.compile else self.base_model
        self.model, self.optimizer, self.scheduler, self.prepared_train, self.prepared_val = \
            self.accelerator.prepare(model, optimizer, scheduler, self.train_loader, self.val_loader)
        if self.saved_state_to_load is not None:  # the saved phase's optimizer and schedule exist now
            self.store.load_state()
            self.saved_state_to_load = None

    def phase_optimizer(self, index: int) -> torch.optim.Optimizer:
        lr = scaled_lr(self.recipe.phases[index].lr, self.recipe, self.global_batch, self.config.lr_scaling)
        return build_optimizer(self.base_model, self.recipe, lr)

    def start_epoch(self, index: int, phase: Phase):
        """Train mode, this epoch's shuffle and augmentation, and the prepared train loader less the
        batches already done (resuming mid-epoch) and cut where a --time-budget plan ends it."""
        state = self.state
        set_train_mode(self.model, phase.train_backbone)
        self.prepared_train.set_epoch(state.epochs_done)
        self.augment.set_epoch(state.epochs_done)
        loader = self.prepared_train
        if state.step:  # the same order, less the batches already done
            loader = skip_first_batches(loader, state.step)
        return self.length.limit(loader, index, state.epoch, state.step)

    def train_epoch(self, phase: Phase, loader) -> EpochStats:
        """One epoch of `phase` over `loader` (the prepared train loader, less the batches done); the
        hooks' count of its steps then goes into the state."""
        mix = self.recipe.mixes(phase)
        self.hooks.count_from(phase.name, self.state)
        if self.teachers is not None:
            self.teachers.clock.take()  # the epoch's teacher seconds count from here
        stats = train_one_epoch(self.accelerator, self.model, self.optimizer, self.scheduler, loader,
                                self.augment, mix, self.soft_loss if mix else self.hard_loss, self.amp,
                                self.hooks, self.recipe.clip_grad, self.ema, self.teachers)
        self.record_steps(None)
        return stats

    def validate(self) -> tuple[EvalResult, EvalResult | None]:
        """The raw weights and (with --ema) their EMA on the validation set."""
        val = evaluate(self.accelerator, self.model, self.prepared_val, self.normalize,
                       autocast=self.amp.autocast)
        val_ema = self.ema.evaluate(self.accelerator, self.prepared_val, self.normalize, self.amp) \
            if self.ema else None
        return val, val_ema

    def save_checkpoints(self, val: EvalResult, val_ema: EvalResult | None) -> bool:
        """best (when the raw weights or their EMA beat the best so far) and last; whether it improved."""
        state = self.state
        weights, acc = ("ema", val_ema.acc) if val_ema and val_ema.acc > val.acc else ("raw", val.acc)
        improved = acc > state.best_val_acc
        if improved:
            state.best_val_acc, state.best_epoch, state.best_weights = acc, state.epochs_done, weights
            self.save_checkpoint("best", state.epochs_done, acc, weights=weights,
                                 model=self.ema.module if weights == "ema" else None)
        self.save_checkpoint("last", state.epochs_done, val.acc)
        return improved

    def follow_pace(self, index: int, stats: EpochStats) -> None:
        """--time-budget: re-fit the steps left to the time left; the schedule ends with them. (Not on
        --resume: the new process's clock cannot tell the time left, so it keeps the saved plan.)"""
        plan = replan(self.plan, index, self.state.epoch + 1, stats.images, stats.seconds, self.accelerator)
        if plan is not self.plan:
            self.print(plan.change_line(self.plan, index))
            self.plan = self.length.plan = plan
            self.state.budget_plan = plan.to_dict()

    def log_epoch(self, phase: Phase, stats: EpochStats, val: EvalResult, val_ema: EvalResult | None,
                  improved: bool) -> None:
        """The epoch's record in the history, its line on the console and its point in the trackers."""
        state = self.state
        epochs_left = max(self.length.planned_epochs - state.epochs_done, 0)
        eta = state.train_seconds / state.epochs_done * epochs_left
        record = {"epoch": state.epochs_done, "phase": phase.name, "train_loss": stats.loss,
                  "train_acc": stats.acc, "val_loss": val.loss, "val_acc": val.acc,
                  **({"val_loss_ema": val_ema.loss, "val_acc_ema": val_ema.acc} if val_ema else {}),
                  "lr": self.scheduler.get_last_lr()[0],
                  "images_per_s": stats.images / max(stats.seconds, 1e-9),
                  **(self.teachers.epoch_record(stats.images, stats.seconds) if self.teachers else {}),
                  "epoch_seconds": stats.seconds, "elapsed_seconds": state.train_seconds}
        state.history.append(record)
        self.print(epoch_line(record, self.length.total_epochs, self.recipe.mixes(phase), improved, eta))
        self.log.epoch(state.history, state.global_step)

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
        results = make_results(recipe, self.data, state, test, tta, seconds=seconds,
                               num_params=self.num_params, hardware=self.hardware,
                               precision=self.amp.name, num_processes=accelerator.num_processes,
                               global_batch=self.global_batch)
        results.update(wandb_url=self.log.wandb_url, **({"final_weights": final} if final else {}),
                       precision_probe=self.amp.measured and self.amp.measured.record(),
                       time_budget=self.plan and self.plan.results(process_seconds(), self.config.resume),
                       checkpoint_every=self.config.checkpoint_every, config=self.config.to_dict())
        if self.teachers:
            results["teachers"] = self.teachers.records
            results["teachers_vote"] = self.teachers.test_vote(accelerator, self.data.test, recipe.tta,
                                                               self.test_loader.batch_size)
        self.save_checkpoint("best", state.best_epoch, state.best_val_acc, test.acc, state.best_weights)
        if accelerator.is_main_process:
            plot_reliability(reliability_bins(test.probs, test.labels), self.run_dir / "reliability.png",
                             f"{recipe.arch}: test, plain")
            write_json(self.run_dir / RESULTS_NAME, results)
        self.print(results_text(results, self.run_dir / RESULTS_NAME))
        self.log.final(results, test, self.data, state.history, state.global_step)
        self.log.finish(state.history)
        accelerator.wait_for_everyone()
        return results
