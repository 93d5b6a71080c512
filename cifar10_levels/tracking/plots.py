"""The run's pictures as PNG files, so a user without W&B sees the same story (matplotlib, no display)."""
from __future__ import annotations

import os

import numpy as np

from ..files import atomic_path

TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"
PHASE_SHADES = ("#f2f2f2", "#ffffff")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _phase_spans(history: list[dict]) -> list[tuple[str, int, int]]:
    """(phase name, first epoch, last epoch) for each run of consecutive epochs in one phase."""
    spans: list[tuple[str, int, int]] = []
    for record in history:
        if spans and spans[-1][0] == record["phase"]:
            spans[-1] = (spans[-1][0], spans[-1][1], record["epoch"])
        else:
            spans.append((record["phase"], record["epoch"], record["epoch"]))
    return spans


def plot_curves(history: list[dict], path: str | os.PathLike, title: str,
                mixing_phases: frozenset[str] = frozenset()) -> None:
    """Loss and accuracy per epoch for train and val, each phase shaded and named."""
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = _figure(11, 4.2)
    loss_ax, acc_ax = fig.subplots(1, 2)
    train_label = "train (dominant label under Mixup/CutMix)" if any(
        h["phase"] in mixing_phases for h in history) else "train"
    for ax, key, name in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "accuracy (%)")):
        scale = 100 if key == "acc" else 1
        for split, color, label in (("train", TRAIN_COLOR, train_label), ("val", VAL_COLOR, "val")):
            ax.plot(epochs, [h[f"{split}_{key}"] * scale for h in history], color=color,
                    marker="o", markersize=3, linewidth=1.8, label=label)
        if any(f"val_{key}_ema" in h for h in history):
            ax.plot(epochs, [h.get(f"val_{key}_ema", float("nan")) * scale for h in history],
                    color=VAL_COLOR, linestyle="--", marker="o", markersize=3, linewidth=1.4,
                    label="val, EMA weights")
        for i, (phase, first, last) in enumerate(_phase_spans(history)):
            ax.axvspan(first - 0.5, last + 0.5, color=PHASE_SHADES[i % 2], zorder=0)
            if i:
                ax.axvline(first - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text((first + last) / 2, 1.01, f"phase: {phase}", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=9, color="dimgrey")
        ax.set_xlabel("epoch")
        if len(epochs) <= 15:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
    best = max(history, key=lambda h: h["val_acc"])
    acc_ax.plot([best["epoch"]], [best["val_acc"] * 100], marker="*", markersize=14, color=VAL_COLOR,
                markeredgecolor="black", linestyle="none",
                label=f"best val {best['val_acc']:.2%} (epoch {best['epoch']})")
    acc_ax.legend(loc="lower right", fontsize=9)
    loss_ax.legend(loc="upper right", fontsize=9)
    fig.suptitle(title, fontsize=12)
    _save(fig, path)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | os.PathLike,
                   title: str) -> None:
    """Counts in each cell; colour = share of the true class (so rows compare at a glance)."""
    rows = matrix.sum(1, keepdims=True)
    share = matrix / np.maximum(rows, 1)
    fig = _figure(7.5, 6.5)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    n = len(class_names)
    for t in range(n):
        for p in range(n):
            if matrix[t, p]:
                ax.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=8,
                        color="white" if share[t, p] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ax.set_title(title, fontsize=11)
    _save(fig, path)


def plot_per_class(per_class: dict[str, float], overall: float, path: str | os.PathLike,
                   title: str) -> None:
    """One bar per class, best on top; red where below the overall accuracy. Classes absent
    from the test subset (NaN) are left out."""
    ranked = sorted(((n, a) for n, a in per_class.items() if not np.isnan(a)), key=lambda item: item[1])
    names = [name for name, _ in ranked]
    values = [100 * acc for _, acc in ranked]
    fig = _figure(7.5, 0.38 * len(names) + 1.6)
    ax = fig.subplots()
    colors = ["#d62728" if v < overall * 100 else "#2ca02c" for v in values]
    ax.barh(names, values, color=colors)
    low = max(0.0, (min(values + [overall * 100]) - 5) // 10 * 10)
    for y, v in enumerate(values):
        inside = v - low >= 8
        ax.text(v - 0.4 if inside else v + 0.4, y, f"{v:.1f}%", va="center", fontsize=9,
                ha="right" if inside else "left", color="white" if inside else "black",
                fontweight="bold")
    ax.axvline(overall * 100, color="black", linestyle="--", linewidth=1,
               label=f"overall {overall:.2%}")
    ax.set_xlim(low, 100.5)
    ax.set_xlabel("test accuracy (%)")
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=11)
    _save(fig, path)


def plot_reliability(bins, path: str | os.PathLike, title: str) -> None:
    """Accuracy against confidence per bin (metrics.reliability_bins); the gap to the diagonal is
    the miscalibration, and the bar width shows how many samples sit in each bin."""
    edges = bins.edges.numpy()
    counts, acc, conf = bins.counts.numpy(), bins.accuracy.numpy(), bins.confidence.numpy()
    filled = counts > 0
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig = _figure(6, 6.4)
    ax, hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.bar(centers[filled], acc[filled], width=width * 0.95, color=TRAIN_COLOR, alpha=0.85,
           label="accuracy")
    ax.bar(centers[filled], (conf - acc)[filled], bottom=acc[filled], width=width * 0.95,
           color="#d62728", alpha=0.35, label="gap to mean confidence")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}\nECE {bins.ece:.2%} ({len(counts)} bins)", fontsize=11)
    hist.bar(centers, counts, width=width * 0.95, color="dimgrey")
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("samples")
    hist.grid(alpha=0.3)
    _save(fig, path)
