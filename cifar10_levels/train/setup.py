"""Setting up a run: the Accelerator and the checks only it can make, the model,
the losses and the three loaders."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn

from ..checkpoint.file_checks import check_pretrained_file
from ..data.cifar10 import CIFAR10, make_loader
from ..errors import UserError
from ..models.factory import create_model
from .config import RunConfig
from ..runtime.precision import Amp, default_precision
from ..runtime.precision_probe import PrecisionVerdict, agreed_cpu_precision
from ..recipes import Recipe
from ..tracking.trackers import tracker_names


def make_accelerator(config: RunConfig) -> tuple[Accelerator, Amp, RunConfig]:
    """The run's Accelerator and precision, checked to have formed what the launch asked for; and
    `config` with the precision and memory layout this hardware resolved written in."""
    precision, measured = choose_precision(config)
    accelerator = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=config.grad_accum,
        # data_seed: the same shuffle on every process (the global seed differs per process)
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=config.recipe.seed, non_blocking=torch.cuda.is_available()),
        log_with=tracker_names(config.report_to) or None, project_dir=str(config.run_dir))
    amp = Amp.for_accelerator(accelerator, precision)
    amp.measured = measured
    check_one_process_group(accelerator)
    check_fsdp_formed(accelerator)
    resolved = dataclasses.replace(config, mixed_precision=precision,
                                   channels_last=uses_channels_last(config, accelerator.device))
    return accelerator, amp, resolved


def choose_precision(config: RunConfig) -> tuple[str, PrecisionVerdict | None]:
    """--mixed-precision when given; on CUDA the compute capability's; on a CPU the faster one, measured
    before the Accelerator exists (it takes the precision when built) and the same on every process."""
    if config.mixed_precision:
        return config.mixed_precision, None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # as the Accelerator will: ACCELERATE_USE_CPU makes launched processes one group of CPU processes
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    if device.type != "cpu":
        return default_precision(config.recipe), None
    verdict = agreed_cpu_precision(config.recipe, uses_channels_last(config, device))
    return verdict.choice, verdict


def check_one_process_group(accelerator: Accelerator) -> None:
    """A launcher that started N processes which did not join one group: N runs on the same files."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:
        raise UserError(f"the launcher started {launched} processes but each one trains alone (no GPU "
                        "for --multi_gpu?); for CPU processes launch with ACCELERATE_USE_CPU=1 "
                        "accelerate launch --multi_gpu ... (see docs/distributed.md)")


def check_fsdp_formed(accelerator: Accelerator) -> None:
    """Accelerate 1.15 turns an FSDP launch on CPUs into plain DDP (MULTI_CPU) without a word."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" \
            and accelerator.distributed_type.name != "FSDP":
        raise UserError(f"the launch asks for FSDP but Accelerate formed {accelerator.distributed_type.name}"
                        " (it runs FSDP on GPUs only, not on a CPU); on a CPU launch with "
                        "accelerate_configs/cpu_2proc.yaml instead (see docs/distributed.md)")


def uses_channels_last(config: RunConfig, device: torch.device) -> bool:
    if config.channels_last is not None:
        return config.channels_last
    return device.type == "cuda" or config.recipe.channels_last_cpu


def make_model(config: RunConfig, data: CIFAR10) -> nn.Module:
    """The run's model, seeded (the same initial weights on every process and world size), data-
    initialised (cifar_speednet's whitening) and in the run's memory layout."""
    recipe = config.recipe
    set_seed(recipe.seed)
    if config.pretrained_file:  # before timm reads it: no pickle, and one of ours must fit the run
        check_pretrained_file(config.pretrained_file, recipe.arch, len(data.class_names))
    model = create_model(recipe.arch, len(data.class_names), recipe.pretrained, config.pretrained_file)
    if hasattr(model, "init_from_data"):
        model.init_from_data(data.train.images)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def make_losses(recipe: Recipe) -> tuple[nn.Module, nn.Module]:
    """(hard-label loss, soft-target loss for Mixup/CutMix phases, whose targets carry the smoothing)."""
    from timm.loss import SoftTargetCrossEntropy
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing), SoftTargetCrossEntropy()


@dataclass
class Loaders:
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    test: torch.utils.data.DataLoader


def make_loaders(data: CIFAR10, recipe: Recipe) -> Loaders:
    eval_batch = max(recipe.batch_size, 256)
    return Loaders(train=make_loader(data.train, recipe.batch_size, True, recipe.seed),
                   val=make_loader(data.val, eval_batch, False, recipe.seed),
                   test=make_loader(data.test, eval_batch, False, recipe.seed))
