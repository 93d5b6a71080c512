"""What a run prints: durations, the progress bar, the slow-run warning and the epoch line."""
from __future__ import annotations

import sys
from typing import Callable


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def progress_bar(shown: bool, total: int, initial: int, desc: str):
    """A tqdm bar on stderr, or None when not `shown`."""
    if not shown:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


class SlowRunWarning:
    """Once per run: when the first steps say the whole recipe takes over two hours, say so."""

    LIMIT_SECONDS = 2 * 3600

    def __init__(self, total_steps: int, device_name: str, print_fn: Callable[[str], None]):
        self.total_steps, self.device_name, self.print = total_steps, device_name, print_fn
        self.warned = False

    def __call__(self, seconds_per_step: float) -> None:
        if self.warned:
            return
        self.warned = True
        estimate = seconds_per_step * self.total_steps
        if estimate > self.LIMIT_SECONDS:
            self.print(f"warning: this recipe will take about {format_duration(estimate)} on "
                       f"{self.device_name}; for a quick run try --level fast, or "
                       "--arch resnet18 --img-size 32 --no-pretrained --epochs 0 3")


def without_teachers(record: dict) -> str:
    if "images_per_s_without_teachers" not in record:
        return ""
    return f" ({record['images_per_s_without_teachers']:.0f} without the teachers' passes)"


def epoch_line(record: dict, total_epochs: int, mixing: bool, improved: bool, eta: float) -> str:
    """`improved`: a new best, marked * after the weights that made it (raw, or EMA when better)."""
    train_name = "train acc (dominant label, Mixup/CutMix on)" if mixing else "train acc"
    ema_better = record.get("val_acc_ema", -1.0) > record["val_acc"]
    ema = (f" | EMA val loss {record['val_loss_ema']:.4f} acc {record['val_acc_ema']:.2%}"
           f"{' *' if improved and ema_better else ''}") if "val_acc_ema" in record else ""
    return (f"epoch {record['epoch']}/{total_epochs} [{record['phase']}] train loss "
            f"{record['train_loss']:.4f} {train_name} {record['train_acc']:.2%} | val loss "
            f"{record['val_loss']:.4f} acc {record['val_acc']:.2%}"
            f"{' *' if improved and not ema_better else ''}{ema} | lr "
            f"{record['lr']:.2e} | {record['images_per_s']:.0f} img/s{without_teachers(record)} | elapsed "
            f"{format_duration(record['elapsed_seconds'])} ETA {format_duration(eta)}")
