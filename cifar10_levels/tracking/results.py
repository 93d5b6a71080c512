"""A run's results: the test set evaluated once with the best weights, results.json's fields and the
table printed at the end."""
from __future__ import annotations

from pathlib import Path

from .. import __version__
from .console import format_duration
from ..data.cifar10 import CIFAR10
from ..evaluation.evaluate import EvalResult
from ..evaluation.metrics import expected_calibration_error, negative_log_likelihood, per_class_accuracy
from ..recipes import Recipe
from ..checkpoint.train_state import TrainState


def make_results(recipe: Recipe, data: CIFAR10, state: TrainState, test: EvalResult,
                 tta: EvalResult | None, *, seconds: float, num_params: int, hardware: str,
                 precision: str, num_processes: int, global_batch: int) -> dict:
    """results.json's fields; `test`: the plain test result, `tta`: with the recipe's views or None."""
    per_class = per_class_accuracy(test.preds, test.labels, len(data.class_names))
    history = state.history
    return {
        "level": recipe.level, "arch": recipe.arch, "title": recipe.title,
        "test_acc": test.acc, "test_acc_tta": tta.acc if tta else None,
        "tta_views": recipe.tta if tta else 1, "best_val_acc": state.best_val_acc,
        "best_epoch": state.best_epoch, "best_weights": state.best_weights, "test_loss": test.loss,
        "test_nll": negative_log_likelihood(test.probs, test.labels),
        "test_ece": expected_calibration_error(test.probs, test.labels),
        "per_class_acc": dict(zip(data.class_names, per_class)),
        "num_params": num_params, "train_seconds": seconds,
        "images_per_s": sum(h["images_per_s"] for h in history) / max(len(history), 1),
        "hardware": hardware, "precision": precision,
        "num_processes": num_processes, "global_batch": global_batch,
        "dataset": data.source, "split_sizes": {"train": len(data.train), "val": len(data.val),
                                                "test": len(data.test)},
        "target": recipe.target, "version": __version__, "recipe": recipe.to_dict(),
    }


def final_weights_text(final: dict) -> str:
    """The last epoch's raw weights against their EMA, on test."""
    def accuracy(row: dict) -> str:
        tta = row["test_acc_tta"]
        return f"{row['test_acc']:.2%}" + (f" (TTA {tta:.2%})" if tta is not None else "")

    return (f"last epoch ({final['epoch']}) on test: raw weights {accuracy(final['raw'])} | EMA "
            f"{final['ema_decay']:g} {accuracy(final['ema'])}")


def results_text(results: dict, results_file: Path) -> str:
    lines = [f"test accuracy {results['test_acc']:.2%}" + (
        f" | with TTA ({results['tta_views']} views) {results['test_acc_tta']:.2%}"
        if results["test_acc_tta"] is not None else "") +
        f" | best val {results['best_val_acc']:.2%} (epoch {results['best_epoch']}"
        f"{', EMA weights' if results.get('best_weights') == 'ema' else ''}) | "
        f"{format_duration(results['train_seconds'])}, {results['num_params'] / 1e6:.2f}M params",
        f"calibration (plain): test NLL {results['test_nll']:.4f} | ECE {results['test_ece']:.2%} "
        "(15 bins)"]
    if "final_weights" in results:
        lines.append(final_weights_text(results["final_weights"]))
    if vote := results.get("teachers_vote"):
        tta = f" | with TTA {vote['test_acc_tta']:.2%}" if vote["test_acc_tta"] is not None else ""
        lines.append(f"the {vote['teachers']} teachers' soft vote on the same test set: {vote['test_acc']:.2%}"
                     f"{tta}")
    lines.append(f"{'class':<12} {'acc':>7}")
    lines += [f"{name:<12} {acc:>7.2%}" for name, acc in results["per_class_acc"].items()]
    lines.append(f"results: {results_file}")
    return "\n".join(lines)
