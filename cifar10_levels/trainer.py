"""A whole run: data, model, phases, checkpoints, resume, final test evaluation."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .augment import Normalizer, TrainAugment
from .checkpoint import CheckpointMeta, save_checkpoint
from .data import CIFAR10, load_cifar10, make_loader
from .errors import UserError
from .files import check_writable_dir, ensure_writable_dir, remove_stale_temporaries, write_json
from .hardware import hardware_name
from .console import format_duration
from .evaluation import evaluate
from .loop import Diverged, StopFlag, Stopped, TrainState, train_one_epoch
from .optim import build_optimizer, build_scheduler, scaled_lr
from .options import RunOptions
from .metrics import per_class_accuracy
from .models import (clean_state_dict, count_parameters, create_model, load_full_state_dict,
                     set_backbone_trainable, set_train_mode)
from .precision import Amp, default_precision
from .recipes import Phase, Recipe
from .rundir import STATE_DIR, clear_run_dir, find_state_dir, replace_dir, run_dir
from .tracking import write_history

def run_dir_for(recipe: Recipe, opts: RunOptions) -> Path:
    return run_dir(opts.output_dir, recipe, opts.run_name)


def check_one_process_group(accelerator) -> None:
    """A launcher that started N processes which did not join one group: N runs on the same files."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:
        raise UserError(f"the launcher started {launched} processes but each one trains alone (no GPU "
                        "for --multi_gpu?); for CPU processes launch with ACCELERATE_USE_CPU=1 "
                        "accelerate launch --multi_gpu ... (see docs/distributed.md)")


def check_fsdp_formed(accelerator) -> None:
    """Accelerate 1.15 turns an FSDP launch on CPUs into plain DDP (MULTI_CPU) without a word."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" \
            and accelerator.distributed_type.name != "FSDP":
        raise UserError(f"the launch asks for FSDP but Accelerate formed {accelerator.distributed_type.name}"
                        " (it runs FSDP on GPUs only, not on a CPU); on a CPU launch with "
                        "accelerate_configs/cpu_2proc.yaml instead (see docs/distributed.md)")


class Trainer:
    def __init__(self, recipe: Recipe, opts: RunOptions):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, set_seed

        from .tracking import tracker_names

        self.recipe, self.opts = recipe, opts
        self.run_dir = run_dir_for(recipe, opts)
        precision = opts.mixed_precision or default_precision(recipe)
        self.accelerator = Accelerator(
            mixed_precision=precision, gradient_accumulation_steps=opts.grad_accum,
            # data_seed: the same shuffle on every process (the global seed differs per process)
            dataloader_config=DataLoaderConfiguration(
                use_seedable_sampler=True, data_seed=recipe.seed,
                non_blocking=torch.cuda.is_available()),
            log_with=tracker_names(opts.report_to) or None, project_dir=str(self.run_dir))
        acc = self.accelerator
        self.amp = Amp.for_accelerator(acc, precision)
        check_one_process_group(acc)
        check_fsdp_formed(acc)
        if acc.is_local_main_process:  # every machine writes its own copy unless the disk is shared
            check_writable_dir(self.run_dir)  # created in fit(): bad input leaves nothing behind
        acc.wait_for_everyone()
        self.state_dir = find_state_dir(self.run_dir)
        if opts.resume and not self.on_every_process(self.state_dir is not None):
            raise UserError(f"--resume: nothing to resume in {self.run_dir} (no saved state"
                            f"{'' if self.state_dir is None else ' on another machine'}); "
                            "start without --resume")
        self.writes_files = acc.is_main_process  # set per machine in fit(), once the disk is known

        self.data: CIFAR10 = load_cifar10(opts.dataset, opts.train_limit, opts.eval_limit)
        self.global_batch = recipe.batch_size * acc.num_processes * opts.grad_accum
        if len(self.data.train) < recipe.batch_size * acc.num_processes:
            raise UserError(f"--batch-size {recipe.batch_size}: larger than the {len(self.data.train)} "
                            f"training images split over {acc.num_processes} process(es); lower it")

        set_seed(recipe.seed)  # the same initial weights on every process and world size
        model = create_model(recipe.arch, len(self.data.class_names), recipe.pretrained,
                             opts.pretrained_file)
        if hasattr(model, "init_from_data"):
            model.init_from_data(self.data.train.images)
        self.channels_last = opts.channels_last if opts.channels_last is not None else (
            acc.device.type == "cuda" or recipe.channels_last_cpu)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model: nn.Module = model
        self.base_model = model
        self.num_params = count_parameters(model)
        set_seed(recipe.seed, device_specific=True)  # a different augmentation stream per process

        self.normalize = Normalizer(recipe.img_size, recipe.mean, recipe.std, self.channels_last)
        self.augment = TrainAugment(recipe.augment, self.normalize, recipe.label_smoothing,
                                    len(self.data.class_names), acc.device)
        self.hard_loss = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        from timm.loss import SoftTargetCrossEntropy
        self.soft_loss = SoftTargetCrossEntropy()
        eval_batch = max(recipe.batch_size, 256)
        self.train_loader = make_loader(self.data.train, recipe.batch_size, True, recipe.seed)
        self.val_loader = make_loader(self.data.val, eval_batch, False, recipe.seed)
        self.test_loader = make_loader(self.data.test, eval_batch, False, recipe.seed)
        self.state = TrainState()
        self.stop = StopFlag(acc)
        self.optimizer = self.scheduler = None
        self.prepared_val = None
        self.slow_warned = False

        from .tracking import RunLog
        self.log = RunLog(self)

    def on_every_process(self, condition: bool) -> bool:
        flag = torch.tensor([float(condition)], device=self.accelerator.device)
        return bool(self.accelerator.gather(flag).min().item())

    def output_dir_is_shared(self) -> bool:
        """Whether every process sees the global main's run dir: it leaves a token there, all look."""
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        name = [f".shared-{uuid.uuid4().hex}.tmp" if acc.is_main_process else None]
        if acc.num_processes > 1:
            broadcast_object_list(name)
        token = self.run_dir / name[0]
        if acc.is_main_process:
            token.touch()
        acc.wait_for_everyone()
        shared = self.on_every_process(token.exists())
        acc.wait_for_everyone()
        if acc.is_main_process:
            token.unlink()
        return shared

    def prepare_output_dir(self) -> None:
        """Shared disk: the global main writes. Machine-local disks: each machine's main keeps a copy
        of best.safetensors and state/, which load_best and --resume read on that machine."""
        acc = self.accelerator
        if acc.is_main_process:
            self.make_run_dir()
        acc.wait_for_everyone()
        shared = self.output_dir_is_shared()
        self.writes_files = acc.is_main_process or (acc.is_local_main_process and not shared)
        acc.project_configuration.save_on_each_node = not shared  # Accelerate's save_state likewise
        if self.writes_files and not acc.is_main_process:
            self.make_run_dir()
        acc.wait_for_everyone()

    def make_run_dir(self) -> None:
        """--overwrite removes the earlier run only now, after every check has passed."""
        if self.opts.overwrite:
            clear_run_dir(self.run_dir)
        remove_stale_temporaries(ensure_writable_dir(self.run_dir))

    # ---- printing -------------------------------------------------------------------------
    def print(self, *args) -> None:
        if self.accelerator.is_main_process:  # accelerator.print prints once per machine
            print(*args, flush=True)

    def progress_bar(self, total: int, initial: int, desc: str):
        if not (self.opts.progress and self.accelerator.is_local_main_process):
            return None
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                    file=sys.stderr)

    def warn_if_slow(self, seconds_per_step: float) -> None:
        if self.slow_warned:
            return
        self.slow_warned = True
        steps = sum(p.epochs for p in self.recipe.phases) * len(self.train_loader) \
            // self.accelerator.num_processes
        estimate = seconds_per_step * steps
        if estimate > 2 * 3600:
            self.print(f"warning: this recipe will take about {format_duration(estimate)} on "
                       f"{self.device_name()}; for a quick run try --level fast, or "
                       "--arch resnet18 --img-size 32 --no-pretrained --epochs 0 3")

    def device_name(self) -> str:
        return hardware_name(self.accelerator)

    def log_step(self, loss: float, lr: float, images_per_s: float) -> None:
        self.log.step({"train/step_loss": loss, "train/lr": lr, "train/images_per_s": images_per_s},
                      self.state.global_step)

    def check_divergence(self, phase: Phase, streak: torch.Tensor, loss: torch.Tensor) -> None:
        """`streak`: non-finite losses in a row, kept on the device between checks."""
        self.state.nonfinite = int(streak.item())
        if self.state.nonfinite >= self.opts.max_nonfinite:
            best = self.run_dir / "best.safetensors"
            kept = f"best checkpoint kept: {best}" if best.exists() else "no checkpoint saved yet"
            raise Diverged(
                f"loss was non-finite ({loss.item()}) for {self.state.nonfinite} steps in a row, up to "
                f"step {self.state.global_step} in phase '{phase.name}'; {kept}; "
                "try --mixed-precision bf16 (where supported) or no, or a lower --lr")

    # ---- state ----------------------------------------------------------------------------
    def save_state(self) -> None:
        acc = self.accelerator
        tmp = self.run_dir / (STATE_DIR + ".tmp")
        if self.writes_files and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if self.writes_files:
            write_json(tmp / "train_state.json", asdict(self.state))
            replace_dir(tmp, self.run_dir / STATE_DIR)
        acc.wait_for_everyone()

    def load_state(self) -> None:
        saved = json.loads((self.state_dir / "train_state.json").read_text())
        self.state = TrainState(**saved)
        from .checkpoint import read_meta
        best = self.run_dir / "best.safetensors"
        if best.exists():  # saved after the state: a kill in between must not let a worse one replace it
            meta = read_meta(best)
            if meta.val_acc > self.state.best_val_acc:
                self.state.best_val_acc, self.state.best_epoch = meta.val_acc, meta.epoch
        if self.accelerator.is_main_process:  # drop epochs logged after the state was saved
            write_history(self.run_dir, self.state.history)

    def meta(self, epoch: int, val_acc: float, test_acc: float | None = None) -> CheckpointMeta:
        r = self.recipe
        return CheckpointMeta(arch=r.arch, level=r.level, img_size=r.img_size,
                              num_classes=len(self.data.class_names),
                              class_names=self.data.class_names, mean=list(r.mean), std=list(r.std),
                              seed=r.seed, epoch=epoch, val_acc=val_acc, test_acc=test_acc,
                              recipe=r.to_dict())

    def save_checkpoint(self, name: str, meta: CheckpointMeta) -> None:
        """Called on every process: under FSDP get_state_dict gathers the full weights."""
        state = self.accelerator.get_state_dict(self.model)
        if self.writes_files:
            save_checkpoint(self.run_dir / f"{name}.safetensors", clean_state_dict(state), meta)

    # ---- the run --------------------------------------------------------------------------
    def prepare_phase(self, phase: Phase) -> None:
        acc = self.accelerator
        set_backbone_trainable(self.base_model, phase.train_backbone)
        lr = scaled_lr(phase.lr, self.recipe, self.global_batch, self.opts.lr_scaling)
        optimizer = build_optimizer(self.base_model, self.recipe, lr)
        total = phase.epochs * len(self.train_loader) // self.opts.grad_accum
        scheduler = build_scheduler(optimizer, self.recipe, total)
        acc.free_memory()  # forget the previous phase's wrappers so save_state holds this one
        model = self.base_model
        if self.opts.compile:
            model = torch.compile(model)
        self.model, self.optimizer, self.scheduler, self.prepared_train, self.prepared_val = \
            acc.prepare(model, optimizer, scheduler, self.train_loader, self.val_loader)

    def fit(self) -> dict:
        acc, recipe = self.accelerator, self.recipe
        self.print(f"recipe: {json.dumps(recipe.to_dict())}")
        self.print(f"hardware: {self.device_name()}, precision {self.amp.name}; "
                   f"batch {recipe.batch_size}/device x {acc.num_processes} process(es) x "
                   f"{self.opts.grad_accum} accumulation = global batch {self.global_batch}")
        self.print(f"data: {self.data.source}: train {len(self.data.train)}, val {len(self.data.val)}, "
                   f"test {len(self.data.test)}")
        self.prepare_output_dir()
        resuming = self.opts.resume
        if resuming:
            self.load_state()
            self.print(f"resuming from {self.state_dir}: phase {self.state.phase + 1}, epoch "
                       f"{self.state.epoch + 1}, step {self.state.step}")
        self.log.start()
        started = time.perf_counter() - self.state.train_seconds
        with self.stop:
            try:
                for index, phase in enumerate(recipe.phases):
                    if phase.epochs == 0 or index < self.state.phase:
                        continue
                    if index > self.state.phase:
                        self.state.phase, self.state.epoch, self.state.step = index, 0, 0
                    self.prepare_phase(phase)
                    if resuming:
                        acc.load_state(str(self.state_dir))
                        resuming = False
                    self.run_phase(phase, started)
            except Stopped:
                self.print(f"stopped: state saved in {self.run_dir / STATE_DIR}; "
                           "continue with the same command and --resume")
                self.log.finish()
                raise
            except Diverged:
                self.log.finish()
                raise
        return self.finish(time.perf_counter() - started)

    def run_phase(self, phase: Phase, started: float) -> None:
        acc, state = self.accelerator, self.state
        while state.epoch < phase.epochs:
            set_train_mode(self.model, phase.train_backbone)
            self.prepared_train.set_epoch(state.epochs_done)
            loader = self.prepared_train
            if state.step:
                from accelerate import skip_first_batches
                loader = skip_first_batches(loader, state.step)
            stats = train_one_epoch(self, phase, loader, state.step)
            val = evaluate(acc, self.model, self.prepared_val, self.normalize, autocast=self.amp.autocast)
            state.train_seconds = time.perf_counter() - started
            state.epochs_done += 1
            improved = val.acc > state.best_val_acc
            if improved:
                state.best_val_acc, state.best_epoch = val.acc, state.epochs_done
                self.save_checkpoint("best", self.meta(state.epochs_done, val.acc))
            self.save_checkpoint("last", self.meta(state.epochs_done, val.acc))
            total_epochs = sum(p.epochs for p in self.recipe.phases)
            eta = state.train_seconds / state.epochs_done * (total_epochs - state.epochs_done)
            record = {"epoch": state.epochs_done, "phase": phase.name, "train_loss": stats.loss,
                      "train_acc": stats.acc, "val_loss": val.loss, "val_acc": val.acc,
                      "lr": self.scheduler.get_last_lr()[0],
                      "images_per_s": stats.images / max(stats.seconds, 1e-9),
                      "epoch_seconds": stats.seconds, "elapsed_seconds": state.train_seconds}
            state.history.append(record)
            train_name = "train acc (dominant label, Mixup/CutMix on)" if self.recipe.mixes(phase) \
                else "train acc"
            self.print(f"epoch {state.epochs_done}/{total_epochs} [{phase.name}] train loss "
                       f"{stats.loss:.4f} {train_name} {stats.acc:.2%} | val loss {val.loss:.4f} "
                       f"acc {val.acc:.2%}{' *' if improved else ''} | lr {record['lr']:.2e} | "
                       f"{record['images_per_s']:.0f} img/s | elapsed "
                       f"{format_duration(state.train_seconds)} ETA {format_duration(eta)}")
            self.log.epoch(record)
            state.epoch += 1
            state.step = 0
            self.save_state()

    def load_best(self) -> None:
        from safetensors.torch import load_file
        best = self.run_dir / "best.safetensors"
        self.accelerator.wait_for_everyone()
        load_full_state_dict(self.base_model, load_file(str(best)))

    def finish(self, seconds: float) -> dict:
        acc, recipe, state = self.accelerator, self.recipe, self.state
        if state.best_epoch < 0:
            raise UserError("every phase has 0 epochs: nothing to train; set --epochs")
        self.load_best()
        if self.prepared_val is None:
            self.prepared_val = acc.prepare(self.val_loader)
        test_loader = acc.prepare_data_loader(self.test_loader)
        views = evaluate(acc, self.model, test_loader, self.normalize, max(recipe.tta, 1),
                         autocast=self.amp.autocast)
        test, tta = views.plain(), (views if recipe.tta > 1 else None)
        per_class = per_class_accuracy(test.preds, test.labels, len(self.data.class_names))
        history = state.history
        results = {
            "level": recipe.level, "arch": recipe.arch, "title": recipe.title,
            "test_acc": test.acc, "test_acc_tta": tta.acc if tta else None,
            "tta_views": recipe.tta if tta else 1, "best_val_acc": state.best_val_acc,
            "best_epoch": state.best_epoch, "test_loss": test.loss,
            "per_class_acc": dict(zip(self.data.class_names, per_class)),
            "num_params": self.num_params, "train_seconds": seconds,
            "images_per_s": sum(h["images_per_s"] for h in history) / max(len(history), 1),
            "hardware": self.device_name(), "precision": self.amp.name,
            "num_processes": acc.num_processes, "global_batch": self.global_batch,
            "dataset": self.data.source, "split_sizes": {"train": len(self.data.train),
                                                         "val": len(self.data.val),
                                                         "test": len(self.data.test)},
            "target": recipe.target, "version": __version__, "recipe": recipe.to_dict(),
        }
        self.save_checkpoint("best", self.meta(state.best_epoch, state.best_val_acc, test.acc))
        if acc.is_main_process:
            write_json(self.run_dir / "results.json", results)
        self.print_results(results)
        self.log.final(results, test, self.data)
        self.log.finish()
        acc.wait_for_everyone()
        return results

    def print_results(self, results: dict) -> None:
        lines = [f"test accuracy {results['test_acc']:.2%}" + (
            f" | with TTA ({results['tta_views']} views) {results['test_acc_tta']:.2%}"
            if results["test_acc_tta"] is not None else "") +
            f" | best val {results['best_val_acc']:.2%} (epoch {results['best_epoch']}) | "
            f"{format_duration(results['train_seconds'])}, {results['num_params'] / 1e6:.2f}M params"]
        lines.append(f"{'class':<12} {'acc':>7}")
        lines += [f"{name:<12} {acc:>7.2%}" for name, acc in results["per_class_acc"].items()]
        lines.append(f"results: {self.run_dir / 'results.json'}")
        self.print("\n".join(lines))

