"""Everything about a run that can be checked without training, checked before data is decoded or
the model is built; every problem is reported at once, one line each."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .config import RunConfig
from ..recipes import MAX_IMG_SIZE, MIN_IMG_SIZE, Recipe

CIFAR10_TRAIN_IMAGES = 45_000   # the train split less the 10% validation split


def preflight(config: RunConfig) -> None:
    """Raise one UserError listing every problem found (one line each); return if there are none."""
    from ..tracking.trackers import tracker_problem

    recipe = config.recipe
    problems = [p for p in (*recipe_problems(recipe), ema_problem(config), teachers_problem(config),
                            *batch_problems(config), *source_problems(config),
                            *output_problems(config), tracker_problem(config.report_to)) if p]
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        raise UserError(f"{len(problems)} problems, nothing was done:\n" +
                        "\n".join(f"  {p}" for p in problems))


def teachers_problem(config: RunConfig) -> str | None:
    """A level that trains a student needs its teachers (a resume finds them in its config.yaml)."""
    if config.recipe.needs_teachers and not config.teachers:
        return (f"--level {config.recipe.level} trains a student: give --teachers PATH... (the level 1-4 "
                "checkpoints or run directories, as ensemble.py --weights takes them)")
    recipe = config.recipe
    if config.teachers and recipe.kd_view == "clean" and any(recipe.mixes(p) for p in recipe.phases if p.epochs):
        return (f"--kd-view clean: --level {recipe.level} mixes images (Mixup/CutMix), and the teachers' vote "
                "on the unmixed images cannot label a mixed one; use --kd-view same, or --mixup-alpha 0 "
                "--cutmix-alpha 0")
    return None


def recipe_problems(recipe: Recipe) -> list[str | None]:
    from ..evaluation.tta import check_tta
    from ..models.factory import check_arch
    from ..optim.muon import MUON_ARCHS

    problems = []
    try:
        check_arch(recipe.arch, "--arch")
    except UserError as err:
        problems.append(str(err))
    else:
        if recipe.optimizer == "fast" and recipe.arch not in MUON_ARCHS:
            problems.append(f"--arch {recipe.arch}: --level {recipe.level}'s optimizer (Muon with SGD) "
                            f"knows the parts of {', '.join(MUON_ARCHS)} only; pass --arch "
                            f"{MUON_ARCHS[0]}, or another --level")
    if not MIN_IMG_SIZE <= recipe.img_size <= MAX_IMG_SIZE:
        problems.append(f"--img-size {recipe.img_size}: use {MIN_IMG_SIZE} to {MAX_IMG_SIZE} px")
    try:
        check_tta(recipe.tta, recipe.tta_scheme)
    except UserError as err:
        problems.append(str(err))
    if not problems:
        problems.append(img_size_problem(recipe))
    return problems


def ema_problem(config: RunConfig) -> str | None:
    """FSDP shards the weights that ModelEmaV3 copies whole: refused rather than half supported. A
    resumed run keeps its --ema or its absence."""
    from .ema import resume_problem
    from ..checkpoint.run_dir import find_state_dir

    ema = bool(config.recipe.ema_decay)
    if ema and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return ("--ema: not supported under FSDP (timm's ModelEmaV3 needs the whole model on every "
                "process); drop --ema, or launch with DDP (accelerate_configs/multi_gpu.yaml)")
    directory = config.run_dir
    return resume_problem(find_state_dir(directory), ema) if config.resume and directory.is_dir() else None


def img_size_problem(recipe: Recipe) -> str | None:
    """A dry forward pass at the recipe's size: a clear error instead of a shape crash later."""
    from ..models.factory import create_model, size_problem

    if reason := size_problem(create_model(recipe.arch, num_classes=10).eval(), recipe.img_size):
        return (f"--img-size {recipe.img_size}: {recipe.arch} cannot take this size ({reason}); "
                "try a multiple of 32")
    return None


def batch_problems(config: RunConfig) -> list[str | None]:
    recipe = config.recipe
    problems = []
    batch = recipe.batch_size
    mixing = [p.name for p in recipe.phases if p.epochs > 0 and recipe.mixes(p)]
    if mixing and batch % 2:
        problems.append(f"--batch-size {batch}: Mixup/CutMix (phase '{mixing[0]}') pairs images, so "
                        f"the batch must be even; use {batch - 1} or {batch + 1}, or turn mixing off "
                        "with --mixup-alpha 0 --cutmix-alpha 0")
    processes, train_images = launched_processes(), train_images_before_loading(config)
    what = f"--train-limit {config.train_limit}" if config.train_limit else "CIFAR-10's training split"
    problems.append(batch_too_large(batch, processes, train_images, what))
    return problems


def launched_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun


def train_images_before_loading(config: RunConfig) -> int:
    """The training split's size as the flags tell it, before the data is read."""
    return min(config.train_limit or CIFAR10_TRAIN_IMAGES, CIFAR10_TRAIN_IMAGES)


def batch_too_large(batch: int, processes: int, train_images: int, what: str) -> str | None:
    """Checked before the data loads (from the split's known size) and after (`what`: the images')."""
    if batch * processes > train_images:
        return (f"--batch-size {batch}: larger than the {train_images} training images of {what} "
                f"split over {processes} process(es); lower it")
    return None


def source_problems(config: RunConfig) -> list[str | None]:
    """The dataset and the pretrained weights: local, cached or on a reachable Hub."""
    from ..data.checks import dataset_problem
    from ..offline import hub_reachable
    from ..models.factory import known_arch
    from ..models.pretrained import pretrained_weights_problem

    recipe = config.recipe
    needs_hub = config.dataset is None or (recipe.pretrained and not config.pretrained_file)
    hub_up = needs_hub and hub_reachable()
    problems = [dataset_problem(config.dataset, hub_up)]
    if config.pretrained_file:
        problems.append(pretrained_file_problem(config.pretrained_file, recipe.arch))
    elif recipe.pretrained and known_arch(recipe.arch):
        problems.append(pretrained_weights_problem(recipe.arch, hub_up))
    return problems


def pretrained_file_problem(path: str, arch: str) -> str | None:
    from ..checkpoint.file_checks import check_pretrained_file
    from ..data.cifar10 import NUM_CLASSES

    if not Path(path).is_file():
        return f"--pretrained-file {path}: no such file; pass a .safetensors file, or --no-pretrained"
    try:
        check_pretrained_file(path, arch, NUM_CLASSES)
    except UserError as err:
        return str(err)
    return None


def output_problems(config: RunConfig) -> list[str | None]:
    """The run directory: writable, and never a finished or unfinished run replaced silently."""
    from ..files import check_writable_dir
    from ..checkpoint.run_dir import check_run_name, run_dir_problem
    from ..checkpoint.run_lock import busy_problem

    if (config.resume or config.resume_auto) and config.overwrite:
        flag = "--resume auto" if config.resume_auto else "--resume"
        return [f"{flag} and --overwrite: choose one ({flag} continues the run in the run "
                "directory, --overwrite replaces it)"]
    if config.run_name is not None and (reason := check_run_name(config.run_name)):
        return [f"--run-name {config.run_name!r}: {reason}"]
    directory = config.run_dir
    try:
        check_writable_dir(config.output_dir)
    except UserError as err:
        return [str(err)]
    if directory.exists() and not directory.is_dir():
        return [f"--run-name: the run directory {directory} is a file; pass another --run-name "
                "or --output-dir"]
    return [busy_problem(directory)
            or run_dir_problem(directory, config.resume, config.overwrite, config.resume_auto)
            or (saved_state_problem(config.recipe, directory) if config.resume else None)]


def saved_state_problem(recipe: Recipe, directory: Path) -> str | None:
    """--resume: train_state.json readable, and the recipe's model the saved run's (the other files
    are checked against the built model and optimizer before they load)."""
    from ..checkpoint.resume_state import TRAIN_STATE_FILE, read_train_state, recipe_problem
    from ..checkpoint.run_dir import find_state_dir

    state_dir = find_state_dir(directory)
    try:
        read_train_state(state_dir / TRAIN_STATE_FILE)
    except UserError as err:
        return str(err)
    return recipe_problem(state_dir, recipe.to_dict())
