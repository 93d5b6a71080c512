"""A run as data: the recipe and the run's own settings, built once from the command line (and a config
file), saved as RUN_DIR/config.yaml, and passed down as it is."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint.run_dir import run_name
from ..recipes import Recipe

CONFIG_NAME = "config.yaml"
# The recipe's values a train.py flag sets: the flag's name (its argparse dest) -> the Recipe field
RECIPE_FLAGS = ("level", "arch", "img_size", "batch_size", "weight_decay", "label_smoothing", "tta",
                "tta_scheme", "seed", "warmup_epochs", "decay_norm_bias", "clip_grad",
                "whiten_bias_fraction", "kd_weight", "kd_temperature", "kd_vote", "kd_view")
AUGMENT_FLAGS = ("crop_padding", "crop_fill", "flip_alternate", "color_jitter", "randaugment_ops",
                 "randaugment_magnitude", "random_erasing", "mixup_alpha", "cutmix_alpha")
# What this command does with the run, not what the run is: never saved in config.yaml
INVOCATION_FIELDS = ("resume", "resume_auto", "overwrite", "pinned")


@dataclass(frozen=True)
class RunConfig:
    """The recipe and every other setting of a run; each settings field is named as train.py's flag
    (--train-limit: train_limit)."""

    recipe: Recipe
    dataset: str | None
    train_limit: int | None
    eval_limit: int | None
    pretrained_file: str | None
    time_budget: float | None            # seconds the whole process may take
    output_dir: str
    run_name: str | None                 # None: L{level}-{arch}-s{seed}
    checkpoint_every: float | None       # seconds between mid-epoch resume-state saves
    mixed_precision: str | None          # None: chosen for the hardware (setup.choose_precision)
    grad_accum: int
    lr_scaling: str                      # none | linear (lr x global batch / recipe batch)
    compile: bool
    channels_last: bool | None           # None: on for CUDA and where the level measured it faster
    max_nonfinite: int                   # consecutive non-finite losses before stopping
    no_progress: bool
    report_to: str
    wandb_project: str
    wandb_entity: str | None
    log_checkpoint: bool
    push_to_hub: str | None
    hub_private: bool
    teachers: list[str] | None           # checkpoints or run directories the student distils
    resume: bool = False                 # continue the run saved in run_dir
    resume_auto: bool = False            # --resume auto: `resume` was decided by the run directory
    overwrite: bool = False              # replace the run already in run_dir
    # flags the user gave (command line, --config, a resumed run's config.yaml), which the recipe's
    # by_epochs leaves as they are; how a config was asked for, not what it trains: not compared
    pinned: frozenset[str] = dataclasses.field(default=frozenset(), compare=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / run_name(self.recipe, self.run_name)

    @property
    def name(self) -> str:
        return run_name(self.recipe, self.run_name)

    def tuned_for(self, epochs: float, largest_batch: int) -> "RunConfig":
        """This run with its recipe's settings for `epochs` planned epochs (Recipe.by_epochs); the flags
        the user gave keep their values, and so does a batch above `largest_batch`."""
        return dataclasses.replace(self, recipe=self.recipe.tuned(epochs, self.pinned, largest_batch))

    def with_net(self, arch: str) -> "RunConfig":
        """This run training `arch` (Recipe.budget_net), under the name and in the directory its
        command gave it: the same command finds it again (--resume auto)."""
        return dataclasses.replace(self, recipe=dataclasses.replace(self.recipe, arch=arch),
                                   run_name=self.name)

    def to_dict(self) -> dict:
        """config.yaml's content: every flag's value, the level's included (train.py --config reads it)."""
        r = self.recipe
        flags = {name: getattr(r, name) for name in RECIPE_FLAGS}
        flags.update(epochs=[p.epochs for p in r.phases], lr=[p.lr for p in r.phases],
                     ema=r.ema_decay or None, no_pretrained=not r.pretrained)  # --ema takes no 0: off
        flags.update({name: getattr(r.augment, name) for name in AUGMENT_FLAGS})
        flags.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                      if f.name != "recipe" and f.name not in INVOCATION_FIELDS})
        return flags


def config_yaml(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def write_config(config: RunConfig) -> None:
    """RUN_DIR/config.yaml, atomically (main process only)."""
    from ..files import write_text

    write_text(config.run_dir / CONFIG_NAME, config_yaml(config))
