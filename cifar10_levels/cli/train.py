"""Command lines of train.py and ensemble.py. Heavy libraries are imported only after --help."""
from __future__ import annotations

import argparse
import dataclasses

from .arguments import Parser, duration, finite_float, non_negative_int, positive, seed
from .config_file import blamed_on, given_on_command_line, parse_with_file, read_config_file, resume_changes
from ..checkpoint.meta import BEST_NAME
from ..errors import UserError, exits_cleanly_on_user_error
from ..recipes import LEVELS, Recipe, get_recipe, settings_text
from ..train.config import RunConfig


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one; a flag whose default comes from the level says so itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


def levels_table() -> str:
    """What each level sets, from recipes.LEVELS: the values a flag left out keeps."""
    header = ("level", "arch", "px", "phases: epochs at lr", "batch", "optimizer", "wd", "smooth",
              "tta", "pretrained", "training", "augmentation")
    rows = [header]
    for name, r in LEVELS.items():
        a = r.augment
        phases = ", ".join(f"{p.name}{'+mix' if p.mix else ''} {p.epochs} at {p.lr:g}" for p in r.phases)
        augment = [f"crop {a.crop_padding}" if a.crop_padding else "", "flip" if a.flip else "",
                   f"jitter {a.color_jitter:g}" if a.color_jitter else "",
                   f"randaug {a.randaugment_ops}x{a.randaugment_magnitude}" if a.randaugment_ops else "",
                   f"erasing {a.random_erasing:g}" if a.random_erasing else "",
                   f"mixup {a.mixup_alpha:g}" if a.mixup_alpha else "",
                   f"cutmix {a.cutmix_alpha:g}" if a.cutmix_alpha else ""]
        training = [f"warmup {r.warmup_epochs:g} ep" if r.warmup_epochs else "",
                    f"ema {r.ema_decay:g}" if r.ema_decay else "",
                    "" if r.decay_norm_bias else "no-decay-norm-bias",
                    f"clip {r.clip_grad:g}" if r.clip_grad else "",
                    "distils --teachers" if r.needs_teachers else ""]
        rows.append((name, r.arch, str(r.img_size), phases, str(r.batch_size), r.optimizer,
                     f"{r.weight_decay:g}", f"{r.label_smoothing:g}", str(r.tta),
                     "yes" if r.pretrained else "no", ",".join(x for x in training if x) or "-",
                     ", ".join(x for x in augment if x)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    follow = [f"level {name}, from {row.epochs:g} planned epochs (--epochs, or what --time-budget "
              f"buys): lr {row.lr:g}, " + settings_text(row.batch_size, row.weight_decay,
                                                        row.label_smoothing, row.whiten_bias_fraction,
                                                        row.crop_fill, row.flip_alternate)
              for name, r in LEVELS.items() for row in r.by_epochs]
    follow += [f"level {name}, where --time-budget buys {r.arch} fewer than {r.budget_net.below_epochs:g} "
               f"epochs: the net {r.budget_net.arch} (a given --arch keeps its net)"
               for name, r in LEVELS.items() if r.budget_net]
    return ("what each level sets (a flag given on the command line replaces that value; phase "
            "'head' trains the classifier only, 'full' all layers, '+mix' with Mixup/CutMix):\n  "
            + "\n  ".join(lines)
            + ("\nsettings that follow the epochs a run plans (a flag given keeps its value):\n  "
               + "\n  ".join(follow) if follow else ""))


def train_parser() -> argparse.ArgumentParser:
    p = Parser(prog="train.py", description="Train a CIFAR-10 level recipe. Every flag left out "
               "keeps the level's value (table at the end).",
               epilog=levels_table(), formatter_class=HelpFormatter)
    p.add_argument("--level", default="1", help=f"recipe: {', '.join(LEVELS)}")
    p.add_argument("--config", metavar="FILE", help="YAML file of flag values (keys: the flags without "
                   "the dashes, e.g. a run's config.yaml, or a few lines naming a level and overrides); "
                   "flags given on the command line override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML "
                   "(what RUN_DIR/config.yaml will hold) and exit without loading data")
    r = p.add_argument_group("recipe overrides", "default: from the level")
    r.add_argument("--arch", help="timm model name, e.g. resnet18, or cifar_speednet")
    r.add_argument("--img-size", type=positive(int), help="training/eval resolution (px), 16 to 1024")
    r.add_argument("--epochs", type=non_negative_int, nargs="+", metavar="E",
                   help="epochs per phase, one value per phase of the level; 0 skips a phase")
    r.add_argument("--time-budget", type=duration, metavar="DURATION",
                   help="e.g. 10m, 2h, 1h30m: the whole run (start-up and the final test included) "
                   "ends within it; the steps that fit are measured and planned before training, "
                   "each phase keeping its share of the epochs (--epochs then sets only the shares), and "
                   "the lr schedule ends with the plan")
    r.add_argument("--lr", type=positive(float), nargs="+", metavar="LR",
                   help="peak learning rate per phase, one value per phase")
    r.add_argument("--batch-size", type=positive(int),
                   help="per device (even where Mixup/CutMix runs)")
    r.add_argument("--weight-decay", type=finite_float, metavar="WD", help="weight decay, >= 0")
    r.add_argument("--label-smoothing", type=finite_float, metavar="S", help="0 to below 1")
    r.add_argument("--tta", type=non_negative_int, help="test-time augmentation views (0/1 = off)")
    r.add_argument("--tta-scheme", choices=("shift2", "shift1"), help="which views "
                   "(evaluation.tta.TTA_SCHEMES): 2-px zero-fill shifts, equal weights; or airbench's "
                   "1-px reflect shifts, weighted")
    r.add_argument("--seed", type=seed, help="initial weights and augmentation (the "
                   "validation split is fixed)")
    r.add_argument("--warmup-epochs", type=finite_float, metavar="E", help="linear learning-rate warmup over "
                   "the first E epochs (fractions too) of each phase; 0 = none")
    r.add_argument("--ema", type=finite_float, metavar="DECAY", help="also keep an exponential moving "
                   "average of the weights (timm's ModelEmaV3, warmup form, decay at most DECAY, in "
                   "(0, 1), e.g. 0.999), updated once per optimizer step; each epoch validates it "
                   f"beside the raw weights and the better one becomes {BEST_NAME}")
    r.add_argument("--decay-norm-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="--no-decay-norm-bias: no weight decay on biases and norm weights (AdamW: "
                   "timm's param_groups_weight_decay, every 1-d parameter; --level fast: its SGD "
                   "group of biases and BatchNorm shifts)")
    r.add_argument("--clip-grad", type=finite_float, metavar="NORM", help="clip the gradients' global "
                   "norm to NORM at each optimizer step (after unscaling under fp16); 0 = off")
    r.add_argument("--whiten-bias-fraction", type=finite_float, metavar="F", help="cifar_speednet: train "
                   "the whitening layer's bias over the first F (0 to 1] of each phase's steps, then "
                   "freeze it (airbench: 0.375)")
    k = p.add_argument_group("distillation", "train a student on the soft vote of teacher checkpoints "
                             "(docs/recipes.md, level 5)")
    k.add_argument("--teachers", nargs="+", metavar="PATH", help="teacher checkpoints, run directories or "
                   "directories of runs (as ensemble.py --weights); each sees the student's augmented "
                   "batch at its own size")
    k.add_argument("--kd-weight", type=finite_float, metavar="A", help="the distillation term's share "
                   "of the loss, 0 to 1; the recipe's own loss has 1 - A")
    k.add_argument("--kd-temperature", type=positive(float), metavar="T", help="softmax temperature of "
                   "the teachers' vote and the student in the distillation term")
    k.add_argument("--kd-vote", choices=("mean", "val_acc"), help="the teachers' vote: mean "
                   "probabilities, or weighted by each teacher's validation accuracy")
    k.add_argument("--kd-view", choices=("same", "clean"), help="what the teachers see: the student's "
                   "augmented batch (same), or the images before augmentation (clean; no Mixup/CutMix)")
    r.add_argument("--no-pretrained", action="store_true",
                   help="random initial weights instead of the level's pretrained ones")
    r.add_argument("--pretrained-file", metavar="FILE",
                   help="local .safetensors backbone weights instead of the Hub")
    a = p.add_argument_group("augmentation overrides",
                             "training policy; 0 turns a technique off; default: from the level")
    a.add_argument("--crop-padding", type=non_negative_int, metavar="PX", help="random crop padding")
    a.add_argument("--crop-fill", choices=("constant", "reflect"), help="the crop's border: zeros "
                   "or the mirrored edge")
    a.add_argument("--flip-alternate", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror a fixed random half of the images in even epochs and the rest in odd "
                   "ones, instead of a fresh coin per image per epoch")
    a.add_argument("--color-jitter", type=finite_float, metavar="S",
                   help="brightness/contrast/saturation strength, 0 to 1")
    a.add_argument("--randaugment-ops", type=non_negative_int, metavar="N", help="RandAugment ops")
    a.add_argument("--randaugment-magnitude", type=non_negative_int, metavar="M", help="0 to 30")
    a.add_argument("--random-erasing", type=finite_float, metavar="P", help="probability, 0 to 1")
    a.add_argument("--mixup-alpha", type=finite_float, metavar="A", help="Mixup alpha (phases that mix)")
    a.add_argument("--cutmix-alpha", type=finite_float, metavar="A", help="CutMix alpha (phases that mix)")
    d = p.add_argument_group("data and output")
    d.add_argument("--dataset", metavar="DIR", help="local copy in the uoft-cs/cifar10 layout, made "
                   "once with: hf download uoft-cs/cifar10 --repo-type dataset --local-dir DIR "
                   "(default: the Hugging Face Hub or its cache)")
    d.add_argument("--train-limit", type=positive(int), metavar="N",
                   help="train on exactly N images, classes balanced (default: all 45,000)")
    d.add_argument("--eval-limit", type=positive(int), metavar="N",
                   help="exactly N images of val and of test, classes balanced (default: all)")
    d.add_argument("--output-dir", default="ckpts", metavar="DIR",
                   help="each run goes to DIR/RUN_NAME/ (see --run-name)")
    d.add_argument("--resume", nargs="?", const=True, default=False, type=resume_mode, metavar="auto",
                   help="continue the run saved in its run directory; --resume auto: continue it when "
                   "the run directory holds saved state, else start it (one command for the first start "
                   "and every restart, e.g. a requeued Slurm job)")
    d.add_argument("--checkpoint-every", type=duration, metavar="DURATION",
                   help="e.g. 30m: also save the resume state during an epoch once DURATION has passed "
                   "since the last save, so a run killed without warning (a lost node) loses at most "
                   "about that much (default: at the end of each epoch and on SIGTERM/SIGINT only)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the run directory (never done without this flag)")
    h = p.add_argument_group("hardware and speed")
    h.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"),
                   help="default: bf16 on GPUs of compute capability >= 8, else fp16 on CUDA; on a CPU "
                   "bf16 where a few seconds of training steps measure it clearly faster than fp32 "
                   "(no otherwise; the verdict is cached)")
    h.add_argument("--grad-accum", type=positive(int), default=1, help="gradient accumulation steps")
    h.add_argument("--lr-scaling", choices=("none", "linear"), default="none",
                   help="linear: lr x global batch / recipe batch")
    h.add_argument("--compile", action="store_true", help="torch.compile the model")
    h.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format; --no-channels-last turns it off (default: on "
                   "for CUDA, and on a CPU for the levels where it measured faster)")
    h.add_argument("--max-nonfinite", type=positive(int), default=20,
                   help="stop after this many non-finite losses in a row")
    h.add_argument("--no-progress", action="store_true",
                   help="no progress bar (for log files); epoch lines still print")
    t = p.add_argument_group("tracking")
    t.add_argument("--report-to", choices=("wandb", "tensorboard", "all", "none"), default="wandb",
                   help="experiment trackers; W&B runs offline without a login")
    t.add_argument("--wandb-project", default="cifar10-levels", help="W&B project")
    t.add_argument("--wandb-entity", help="W&B team or user (default: your W&B default)")
    t.add_argument("--run-name", help="the run directory's name under --output-dir and the W&B run "
                   "name (default: L{level}-{arch}-s{seed})")
    t.add_argument("--log-checkpoint", action="store_true", help="upload best checkpoint as a W&B artifact")
    t.add_argument("--push-to-hub", metavar="REPO_ID", help="at the end, export the best checkpoint "
                   "for timm (OUTPUT/.../hub_export) and upload it; token and network checked first")
    t.add_argument("--hub-private", action="store_true", help="create the --push-to-hub repo as private")
    return p


def resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"{text!r}: give no value (continue the saved run) or 'auto'")
    return text


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
    if args.ema is not None and not 0 < args.ema < 1:
        raise UserError(f"--ema {args.ema}: the decay must be in (0, 1), e.g. 0.999")
    if args.whiten_bias_fraction is not None and not 0 < args.whiten_bias_fraction <= 1:
        raise UserError(f"--whiten-bias-fraction {args.whiten_bias_fraction}: must be in (0, 1]")
    if args.kd_weight is not None and not 0 <= args.kd_weight <= 1:
        raise UserError(f"--kd-weight {args.kd_weight}: must be in [0, 1]")
    for flag, value in (("--clip-grad", args.clip_grad), ("--warmup-epochs", args.warmup_epochs)):
        if value is not None and not value >= 0:  # `not >=` also refuses nan
            raise UserError(f"{flag} {value}: must be >= 0 (0 turns it off)")
    return recipe.with_overrides(
        augment=augment_from_args(recipe.augment, args),
        arch=args.arch, img_size=args.img_size, phases=phases, batch_size=args.batch_size,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, tta=args.tta,
        tta_scheme=args.tta_scheme,
        seed=args.seed, pretrained=False if (args.no_pretrained or args.pretrained_file) else None,
        warmup_epochs=args.warmup_epochs, ema_decay=args.ema, decay_norm_bias=args.decay_norm_bias,
        clip_grad=args.clip_grad, whiten_bias_fraction=args.whiten_bias_fraction,
        kd_weight=args.kd_weight, kd_temperature=args.kd_temperature, kd_vote=args.kd_vote,
        kd_view=args.kd_view)


AUGMENT_LIMITS = {"color_jitter": 1.0, "randaugment_magnitude": 30, "random_erasing": 1.0,
                  "mixup_alpha": None, "cutmix_alpha": None, "crop_padding": 16, "randaugment_ops": 14}


def augment_from_args(augment, args: argparse.Namespace):
    """The recipe's policy with every augmentation flag given on the command line applied."""
    changes = {name: getattr(args, name) for name in ("crop_fill", "flip_alternate")
               if getattr(args, name, None) is not None}
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


def config_from_args(args: argparse.Namespace, pinned: frozenset[str] = frozenset()) -> RunConfig:
    """The RunConfig of parsed train.py arguments: the recipe, and every other flag by its name.
    `pinned`: the flags the user gave, which the recipe's settings by epochs leave as they are; those
    follow --epochs here, or, under --time-budget, the epochs the plan buys (Trainer)."""
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
                if f.name not in ("recipe", "resume", "resume_auto", "pinned")}
    config = RunConfig(recipe=recipe_from_args(args), pinned=pinned, **settings)
    if args.time_budget:
        return config
    from ..train.preflight import launched_processes, train_images_before_loading

    largest_batch = train_images_before_loading(config) // launched_processes()
    return config.tuned_for(config.recipe.epochs, largest_batch)


@dataclasses.dataclass(frozen=True)
class TrainCommand:
    """What train.py was asked: the run's config, and whether to print it and stop."""

    config: RunConfig
    print_config: bool
    config_file: str | None         # --config FILE
    file_keys: frozenset[str]       # what the file set and the command line did not

    def blamed(self):
        """A check whose error names a flag the file set names the file and its key instead."""
        return blamed_on(self.config_file, self.file_keys)


def parse_run_config(argv: list[str] | None = None) -> TrainCommand:
    """train.py's command line (over --config FILE's values) as a RunConfig; on a resume, the run's
    saved config.yaml with the flags that may change."""
    from ..checkpoint.run_dir import resolve_resume
    from ..train.config import CONFIG_NAME

    parser = train_parser()
    args = parser.parse_args(argv)
    given = given_on_command_line(parser, argv)
    from_file = read_config_file(args.config, parser) if args.config else {}
    args = parse_with_file(parser, from_file, argv)
    command = TrainCommand(None, args.print_config, args.config, frozenset(set(from_file) - given))
    pinned = frozenset(given | set(from_file))
    with command.blamed():
        config = config_from_args(args, pinned)
    resume = resolve_resume(args.resume, config.run_dir)
    saved_file = config.run_dir / CONFIG_NAME
    if resume and saved_file.is_file():
        saved = read_config_file(saved_file, parser)
        resume_changes(saved, {dest: getattr(args, dest) for dest in pinned}, config.run_dir)
        named = args.run_name or (config.name if saved.get("run_name") else None)  # where it was found
        args = parse_with_file(parser, {**saved, **from_file, "output_dir": args.output_dir,
                                        "run_name": named}, argv)
        config = config_from_args(args, pinned | set(saved))
    config = dataclasses.replace(config, resume=resume, resume_auto=args.resume == "auto")
    return dataclasses.replace(command, config=config)


@exits_cleanly_on_user_error
def train_main(argv: list[str] | None = None) -> int:
    command = parse_run_config(argv)
    config = command.config
    if command.print_config:
        from ..train.config import config_yaml

        print(config_yaml(config), end="")
        return 0
    from ..train.preflight import preflight

    with command.blamed():
        preflight(config)
    if config.push_to_hub:
        from ..hub.export import check_push_ready
        hub_token = check_push_ready(config.push_to_hub)
    from ..checkpoint.run_lock import locked_run_dir
    from ..train.step_hooks import Stopped
    from ..checkpoint.run_store import RunFinished
    from ..train.trainer import Trainer

    with locked_run_dir(config.run_dir):
        try:
            trainer = Trainer(config)
            trainer.fit()
        except Stopped:
            return 143
        except RunFinished:
            return 0
        if config.push_to_hub and trainer.accelerator.is_main_process:
            from ..hub.export import push_after_training
            push_after_training(config.run_dir, config.push_to_hub, config.hub_private, hub_token)
    return 0


def ensemble_main(argv: list[str] | None = None) -> int:
    from .ensemble import main

    return main(argv)
