"""The level recipes as data: one frozen dataclass per level (the README's table of levels)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Image sizes train.py, ensemble.py and checkpoint metadata accept. 16: below it timm's downsampling
# stages run out of pixels, and train.py never writes a smaller checkpoint; 1024: 32x the images.
MIN_IMG_SIZE, MAX_IMG_SIZE = 16, 1024


@dataclass(frozen=True)
class Augment:
    """Training augmentation policy. Pixel ops run on uint8 32x32 batches, the rest after resize."""

    crop_padding: int = 4          # random crop 32 with this padding (0 = off)
    crop_fill: str = "constant"    # the crop's border: "constant" (zeros) or "reflect"
    flip: bool = True
    flip_alternate: bool = False   # True: a fixed half mirrored in even epochs, the rest in odd ones
    color_jitter: float = 0.2      # brightness, contrast, saturation strength (0 = off)
    randaugment_ops: int = 0       # RandAugment number of ops (0 = off)
    randaugment_magnitude: int = 9
    random_erasing: float = 0.0    # probability, applied after normalization
    mixup_alpha: float = 0.0       # Mixup/CutMix only in phases with mix=True
    cutmix_alpha: float = 0.0


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float
    train_backbone: bool           # False = backbone frozen, head only
    mix: bool = False              # Mixup/CutMix active in this phase


@dataclass(frozen=True)
class Tuning:
    """A recipe's settings for runs of at least `epochs` planned epochs: one row of Recipe.by_epochs.
    Every row sets every field, so the row a run takes decides them whatever the level's values."""

    epochs: float
    lr: float                      # every phase's peak learning rate
    label_smoothing: float
    whiten_bias_fraction: float
    batch_size: int                # per device; a --time-budget run re-times its plan at it
    weight_decay: float
    crop_fill: str
    flip_alternate: bool


# a Tuning's fields besides epochs and lr, by where the Recipe keeps them
TUNED_FIELDS = ("label_smoothing", "whiten_bias_fraction", "batch_size", "weight_decay")
TUNED_AUGMENT_FIELDS = ("crop_fill", "flip_alternate")


@dataclass(frozen=True)
class BudgetNet:
    """Recipe.budget_net: the net a --time-budget run trains where the plan buys the recipe's own
    fewer than `below_epochs` epochs (a narrower one, which trains more epochs in the same time)."""

    below_epochs: float
    arch: str


@dataclass(frozen=True)
class Recipe:
    level: str
    title: str
    arch: str
    img_size: int
    phases: tuple[Phase, ...]
    augment: Augment = field(default_factory=Augment)
    label_smoothing: float = 0.0
    tta: int = 0                   # test-time augmentation views (0/1 = plain only)
    tta_scheme: str = "shift2"     # which views, in evaluation.tta.TTA_SCHEMES
    batch_size: int = 128          # per device
    weight_decay: float = 0.01
    optimizer: str = "adamw"       # adamw | fast (Muon for conv filters + Nesterov SGD)
    schedule: str = "cosine"       # cosine | linear (decay to 0 within each phase)
    warmup_epochs: float = 0.0     # linear warmup at the start of each phase (0 = none)
    ema_decay: float = 0.0         # EMA of the weights, timm's ModelEmaV3 in its warmup form (0 = off)
    decay_norm_bias: bool = True   # False: no weight decay on norm weights and biases (timm's groups)
    clip_grad: float = 0.0         # max gradient norm at each optimizer step (0 = off)
    whiten_bias_fraction: float = 1.0  # cifar_speednet: its whitening bias trains over this fraction
                                       # of each phase's steps, then stays (airbench: 3/8)
    pretrained: bool = True
    channels_last_cpu: bool = False  # on CUDA always; on a CPU where it measured faster
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int = 42
    target: str = ""               # the write-up's accuracy target, for reports
    # distillation from --teachers (train.distill): the loss is (1 - kd_weight) x the recipe's own
    # + kd_weight x T^2 KL(teachers' vote at T || student at T), T = kd_temperature (Hinton et al.)
    kd_weight: float = 0.8
    kd_temperature: float = 2.0
    kd_vote: str = "mean"          # the teachers' vote: mean probabilities, or "val_acc"-weighted
    kd_view: str = "same"          # what the teachers see: the student's augmented batch, or "clean":
                                   # the images before augmentation (phases without Mixup/CutMix)
    needs_teachers: bool = False   # level 5: a student, trained only with --teachers
    # settings that follow the epochs a run plans (--epochs, or what --time-budget buys): the last row
    # whose `epochs` the run reaches; empty: the fields above whatever the length
    by_epochs: tuple[Tuning, ...] = ()
    tuned_for: float | None = None  # the planned epochs a row of by_epochs was taken for
    budget_net: BudgetNet | None = None

    def with_overrides(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def row_for(self, epochs: float) -> Tuning | None:
        """The by_epochs row a run of `epochs` planned epochs takes: the last one it reaches."""
        rows = [row for row in self.by_epochs if row.epochs <= epochs]
        return rows[-1] if rows else None

    def tuned(self, epochs: float, pinned: frozenset[str] = frozenset(),
              largest_batch: int | None = None) -> "Recipe":
        """This recipe with the by_epochs row for a run of `epochs` planned epochs; a field named in
        `pinned` (a train.py flag the user gave: lr, label_smoothing, ...) keeps its value, and so does
        the batch where the row's is above `largest_batch` (the training images of one process)."""
        row = self.row_for(epochs)
        if row is not None and largest_batch is not None and row.batch_size > largest_batch:
            pinned = pinned | {"batch_size"}
        if row is None or {"lr", *TUNED_FIELDS, *TUNED_AUGMENT_FIELDS} <= pinned:
            return self
        changes = {name: getattr(row, name) for name in TUNED_FIELDS if name not in pinned}
        if "lr" not in pinned:
            changes["phases"] = tuple(dataclasses.replace(p, lr=row.lr) for p in self.phases)
        augment = {name: getattr(row, name) for name in TUNED_AUGMENT_FIELDS if name not in pinned}
        return dataclasses.replace(self, **changes, augment=dataclasses.replace(self.augment, **augment),
                                   tuned_for=epochs)

    def net_for_budget(self, epochs: float, pinned: frozenset[str] = frozenset()) -> str | None:
        """The net a --time-budget run trains instead of `arch` when the plan buys `arch` `epochs`
        epochs; None: its own (no budget_net, the budget buys enough, or --arch or --pretrained-file
        given)."""
        net = self.budget_net
        if net is None or epochs >= net.below_epochs or {"arch", "pretrained_file"} & pinned:
            return None
        return net.arch

    def tuning_line(self) -> str | None:
        """What a by_epochs row set, as run (a flag the user gave kept its own value); None: no row."""
        if self.tuned_for is None:
            return None
        lrs = "/".join(f"{p.lr:g}" for p in self.phases)
        return (f"settings for {self.tuned_for:.2f} planned epochs (the level's row from "
                f"{self.row_for(self.tuned_for).epochs:g}): lr {lrs}, "
                + settings_text(self.batch_size, self.weight_decay, self.label_smoothing,
                                self.whiten_bias_fraction, self.augment.crop_fill,
                                self.augment.flip_alternate))

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def mixes(self, phase: Phase) -> bool:
        """Whether Mixup/CutMix runs in `phase`: the phase asks for it and the policy has an alpha."""
        return phase.mix and (self.augment.mixup_alpha > 0 or self.augment.cutmix_alpha > 0)


def settings_text(batch_size: int, weight_decay: float, label_smoothing: float,
                  whiten_bias_fraction: float, crop_fill: str, flip_alternate: bool) -> str:
    """A by_epochs row's values besides lr, as train.py --help and a run's console name them."""
    fill = "reflect" if crop_fill == "reflect" else "zero"
    flip = "alternating" if flip_alternate else "random"
    return (f"batch {batch_size}, weight decay {weight_decay:g}, label smoothing {label_smoothing:g}, "
            f"whitening bias over {whiten_bias_fraction:g} of the steps, {fill}-fill crop, {flip} flip")


def _two_phases(p2_epochs: int, p2_lr: float, mix: bool = False) -> tuple[Phase, ...]:
    return (
        Phase("head", epochs=5, lr=1e-3, train_backbone=False),
        Phase("full", epochs=p2_epochs, lr=p2_lr, train_backbone=True, mix=mix),
    )


_ADVANCED = Augment(randaugment_ops=2, randaugment_magnitude=9, random_erasing=0.25,
                    mixup_alpha=1.0, cutmix_alpha=1.0)

LEVELS: dict[str, Recipe] = {
    "1": Recipe(level="1", title="baseline transfer", arch="resnet50", img_size=128,
                phases=_two_phases(15, 1e-4), target=">= 85%"),
    "2": Recipe(level="2", title="advanced augmentation", arch="resnet50", img_size=128,
                phases=_two_phases(20, 1e-4, mix=True), augment=_ADVANCED,
                label_smoothing=0.1, tta=5, target=">= 90%"),
    "3": Recipe(level="3", title="other architecture", arch="efficientnet_b2", img_size=144,
                phases=_two_phases(20, 5e-5),
                augment=Augment(randaugment_ops=2, randaugment_magnitude=9),
                label_smoothing=0.1, target=">= 91-93%"),
    "4": Recipe(level="4", title="third model + ensemble", arch="convnext_tiny", img_size=128,
                phases=_two_phases(20, 1e-4, mix=True), augment=_ADVANCED,
                label_smoothing=0.1, tta=5, target=">= 93-97%"),
    # lr: Muon's, the SGD groups' scaled with it (speednet); 0.17 beat airbench's 0.24 at batch 500
    # (docs/benchmarks.md, the fast recipe against airbench94_muon)
    "fast": Recipe(level="fast", title="fast CPU recipe", arch="cifar_speednet", img_size=32,
                   phases=(Phase("full", epochs=4, lr=0.17, train_backbone=True),),
                   augment=Augment(crop_padding=2, flip=True, color_jitter=0.0),
                   label_smoothing=0.2, tta=6, tta_scheme="shift1", batch_size=500, weight_decay=0.001,
                   optimizer="fast", schedule="linear", warmup_epochs=0, pretrained=False,
                   channels_last_cpu=True,
                   # ahead by 0.4 points at 10 minutes, where the budget bought the default net
                   # 4.7-5 epochs; behind at 20 minutes, 10 epochs (docs/benchmarks.md)
                   budget_net=BudgetNet(below_epochs=7, arch="cifar_speednet_m"),
                   # from 8 epochs, airbench94_muon's batch, lr, fill, flip and whitening bias: +0.24
                   # points, +0.20 with TTA at 8 epochs (2 seeds; docs/benchmarks.md)
                   by_epochs=(Tuning(8, lr=0.24, label_smoothing=0.2, whiten_bias_fraction=0.375,
                                     batch_size=2000, weight_decay=0.004, crop_fill="reflect",
                                     flip_alternate=True),),
                   mean=CIFAR10_MEAN, std=CIFAR10_STD, target=">= 89.5% in 10 min on 2 CPU cores"),
}
# the level-4 student (its net, augmentation and schedule) taught by the ensemble of levels 1-4
LEVELS["5"] = dataclasses.replace(LEVELS["4"], level="5", title="ensemble distilled into one model",
                                  needs_teachers=True, target="the level-4 vote's accuracy in one model")


def get_recipe(level: str) -> Recipe:
    from .errors import UserError

    if str(level) not in LEVELS:
        raise UserError(f"--level {level}: unknown level; choose one of {', '.join(LEVELS)}")
    return LEVELS[str(level)]
