"""Command lines of train.py and ensemble.py. Heavy libraries are imported only after --help."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .errors import UserError, exits_cleanly_on_user_error
from .recipes import LEVELS, Recipe, get_recipe


class Parser(argparse.ArgumentParser):
    """argparse, but bad flags are a one-line UserError (exit 2) like every other bad input."""

    def error(self, message: str):
        raise UserError(message)


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value
    parse.__name__ = kind.__name__
    return parse


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def train_parser() -> argparse.ArgumentParser:
    p = Parser(prog="train.py", description="Train a CIFAR-10 level recipe (see RECIPES in README). "
               "Every flag left out keeps the recipe's value.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--level", default="1", help=f"recipe: {', '.join(LEVELS)}")
    r = p.add_argument_group("recipe overrides")
    r.add_argument("--arch", help="timm model name, e.g. resnet18, or cifar_speednet")
    r.add_argument("--img-size", type=positive(int), help="training/eval resolution (px)")
    r.add_argument("--epochs", type=non_negative_int, nargs="+", metavar="E",
                   help="epochs per phase (phase 1 head-only, phase 2 all); 0 skips a phase")
    r.add_argument("--lr", type=positive(float), nargs="+", metavar="LR", help="lr per phase")
    r.add_argument("--batch-size", type=positive(int), help="per device")
    r.add_argument("--weight-decay", type=float)
    r.add_argument("--label-smoothing", type=float)
    r.add_argument("--tta", type=non_negative_int, help="test-time augmentation views (0/1 = off)")
    a = p.add_argument_group("augmentation overrides (training policy; 0 turns a technique off)")
    a.add_argument("--crop-padding", type=non_negative_int, metavar="PX", help="random crop padding")
    a.add_argument("--color-jitter", type=float, metavar="S",
                   help="brightness/contrast/saturation strength, 0 to 1")
    a.add_argument("--randaugment-ops", type=non_negative_int, metavar="N", help="RandAugment ops")
    a.add_argument("--randaugment-magnitude", type=non_negative_int, metavar="M", help="0 to 30")
    a.add_argument("--random-erasing", type=float, metavar="P", help="probability, 0 to 1")
    a.add_argument("--mixup-alpha", type=float, metavar="A", help="Mixup alpha (phases that mix)")
    a.add_argument("--cutmix-alpha", type=float, metavar="A", help="CutMix alpha (phases that mix)")
    r.add_argument("--seed", type=int)
    r.add_argument("--no-pretrained", action="store_true", help="random init")
    r.add_argument("--pretrained-file", metavar="FILE",
                   help="local .safetensors backbone weights instead of the Hub")
    d = p.add_argument_group("data and output")
    d.add_argument("--dataset", metavar="PATH", help="local copy in the uoft-cs/cifar10 layout "
                   "(default: the Hugging Face Hub)")
    d.add_argument("--train-limit", type=positive(int), metavar="N", help="stratified training subset")
    d.add_argument("--eval-limit", type=positive(int), metavar="N", help="stratified val/test subsets")
    d.add_argument("--output-dir", default="ckpts", help="runs go to OUTPUT/L{level}-{arch}/")
    d.add_argument("--resume", action="store_true", help="continue the run saved in the output dir")
    h = p.add_argument_group("hardware and speed")
    h.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"),
                   help="default: fp16 on CUDA, no on CPU (bf16 for --level fast where supported)")
    h.add_argument("--grad-accum", type=positive(int), default=1, help="gradient accumulation steps")
    h.add_argument("--lr-scaling", choices=("none", "linear"), default="none",
                   help="linear: lr x global batch / recipe batch")
    h.add_argument("--compile", action="store_true", help="torch.compile the model")
    h.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for CUDA")
    h.add_argument("--max-nonfinite", type=positive(int), default=20,
                   help="stop after this many non-finite losses in a row")
    h.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    t = p.add_argument_group("tracking")
    t.add_argument("--report-to", choices=("wandb", "tensorboard", "all", "none"), default="wandb")
    t.add_argument("--wandb-project", default="cifar10-levels")
    t.add_argument("--wandb-entity")
    t.add_argument("--run-name", help="default L{level}-{arch}-s{seed}")
    t.add_argument("--log-checkpoint", action="store_true", help="upload best checkpoint as a W&B artifact")
    t.add_argument("--push-to-hub", metavar="REPO_ID", help="at the end, export the best checkpoint "
                   "for timm (OUTPUT/.../hub_export) and upload it; token and network checked first")
    t.add_argument("--hub-private", action="store_true", help="create the --push-to-hub repo as private")
    return p


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    recipe = get_recipe(args.level)
    phases = recipe.phases
    for flag, values, fieldname in (("--epochs", args.epochs, "epochs"), ("--lr", args.lr, "lr")):
        if values is None:
            continue
        if len(values) != len(phases):
            raise UserError(f"{flag}: level {recipe.level} has {len(phases)} phase(s) "
                            f"({', '.join(p.name for p in phases)}); give {len(phases)} value(s)")
        phases = tuple(dataclasses.replace(p, **{fieldname: v}) for p, v in zip(phases, values))
    if args.epochs is not None and sum(args.epochs) == 0:
        raise UserError("--epochs: every phase has 0 epochs; train at least one")
    if args.weight_decay is not None and args.weight_decay < 0:
        raise UserError(f"--weight-decay {args.weight_decay}: must be >= 0")
    if args.label_smoothing is not None and not 0 <= args.label_smoothing < 1:
        raise UserError(f"--label-smoothing {args.label_smoothing}: must be in [0, 1)")
    return recipe.with_overrides(
        augment=augment_from_args(recipe.augment, args),
        arch=args.arch, img_size=args.img_size, phases=phases, batch_size=args.batch_size,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, tta=args.tta,
        seed=args.seed, pretrained=False if (args.no_pretrained or args.pretrained_file) else None)


AUGMENT_LIMITS = {"color_jitter": 1.0, "randaugment_magnitude": 30, "random_erasing": 1.0,
                  "mixup_alpha": None, "cutmix_alpha": None, "crop_padding": 16, "randaugment_ops": 14}


def augment_from_args(augment, args: argparse.Namespace):
    """The recipe's policy with every augmentation flag given on the command line applied."""
    changes = {}
    for name, upper in AUGMENT_LIMITS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if value < 0 or (upper is not None and value > upper):
            flag = "--" + name.replace("_", "-")
            bounds = f"0 to {upper}" if upper is not None else ">= 0"
            raise UserError(f"{flag} {value}: must be {bounds}")
        changes[name] = value
    return dataclasses.replace(augment, **changes)


def check_recipe(recipe: Recipe) -> None:
    """Fail before loading data: unknown arch, a size the model cannot take."""
    from .augment import TTA_VIEWS
    from .models import known_arch

    if not known_arch(recipe.arch):
        raise UserError(f"--arch {recipe.arch}: timm has no such model; see timm.list_models()")
    if recipe.img_size < 16 or recipe.img_size > 1024:
        raise UserError(f"--img-size {recipe.img_size}: use 16 to 1024 px")
    if recipe.tta > len(TTA_VIEWS):
        raise UserError(f"--tta {recipe.tta}: choose 0 to {len(TTA_VIEWS)} views")


def check_img_size(recipe: Recipe) -> None:
    """A dry forward pass at the recipe's size: a clear error instead of a shape crash later."""
    import torch

    from .models import create_model

    model = create_model(recipe.arch, num_classes=10).eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, recipe.img_size, recipe.img_size))
    except (RuntimeError, AssertionError) as err:  # timm's ViTs assert on the input size
        reason = (str(err) or type(err).__name__).splitlines()[0][:120]
        raise UserError(f"--img-size {recipe.img_size}: {recipe.arch} cannot take this size "
                        f"({reason}); try a multiple of 32") from None


@exits_cleanly_on_user_error
def train_main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    recipe = recipe_from_args(args)
    check_recipe(recipe)
    check_img_size(recipe)
    if args.push_to_hub:
        from .export import check_push_ready
        hub_token = check_push_ready(args.push_to_hub)
    from .loop import RunOptions
    from .trainer import Trainer

    opts = RunOptions(
        output_dir=Path(args.output_dir), dataset=args.dataset, train_limit=args.train_limit,
        eval_limit=args.eval_limit, pretrained_file=args.pretrained_file, resume=args.resume,
        mixed_precision=args.mixed_precision, grad_accum=args.grad_accum,
        lr_scaling=args.lr_scaling, compile=args.compile, channels_last=args.channels_last,
        max_nonfinite=args.max_nonfinite, report_to=args.report_to,
        wandb_project=args.wandb_project, wandb_entity=args.wandb_entity, run_name=args.run_name,
        log_checkpoint=args.log_checkpoint, progress=not args.no_progress)
    from .loop import Stopped
    try:
        trainer = Trainer(recipe, opts)
        trainer.fit()
    except Stopped:
        return 143
    if args.push_to_hub and trainer.accelerator.is_main_process:
        from .export import push_after_training
        push_after_training(trainer.run_dir, args.push_to_hub, args.hub_private, hub_token)
    return 0


def ensemble_main(argv: list[str] | None = None) -> int:
    from .ensemble import main

    return main(argv)
