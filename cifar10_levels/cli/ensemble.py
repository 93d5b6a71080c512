"""`python ensemble.py --weights ckpts/`: evaluate each checkpoint once, then compare votes.

The command line: flags, the order of the steps, and what is printed and saved. Every check on the
inputs runs before anything is evaluated or written, so bad input leaves no files behind. The work is
in the ensemble/ folder: members.py finds them, cache.py keeps their probabilities, evaluation.py
evaluates them, voting.py and report.py vote and compare, tracking.py logs to W&B/TensorBoard.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import Parser, non_negative_int, positive
from ..checkpoint.meta import BEST_NAME
from ..errors import UserError, exits_cleanly_on_user_error
from ..files import ensure_writable_dir, write_json
from ..recipes import MAX_IMG_SIZE, MIN_IMG_SIZE

# torch, timm, Accelerate and numpy are imported inside main and save_results, after the arguments
# parse, so --help stays instant
if TYPE_CHECKING:
    from ..ensemble.evaluation import MemberEval
    from ..ensemble.report import EnsembleReport


def ensemble_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ensemble.py", description="Vote across checkpoints trained by train.py: "
               "majority (the write-up's), soft and weighted, side by side with every member.")
    p.add_argument("--weights", nargs="+", required=True, metavar="PATH",
                   help=f"directories (the {BEST_NAME} of each run under them) or .safetensors files")
    p.add_argument("--dataset", metavar="PATH", help="local copy in the uoft-cs/cifar10 layout "
                   "(default: the Hugging Face Hub)")
    p.add_argument("--eval-limit", type=positive(int), metavar="N", help="stratified val/test subsets")
    p.add_argument("--tta", type=non_negative_int, default=1, metavar="N",
                   help="test-time augmentation views for every member (default 1 = off)")
    p.add_argument("--img-size", type=positive(int), metavar="PX",
                   help="evaluate every member at this size (default: each at its own training size)")
    p.add_argument("--batch-size", type=positive(int), default=256, help="per device (default 256)")
    p.add_argument("--output-dir", metavar="DIR", help="where ensemble_results.json and "
                   "ensemble_confusion.png go (default: the first --weights directory)")
    p.add_argument("--report-to", choices=("none", "wandb"), default="none",
                   help="wandb: log the table to a W&B run (offline without a key)")
    p.add_argument("--wandb-project", default="cifar10-levels")
    return p


def format_report(report: EnsembleReport, labels: list[str]) -> str:
    width = max(28, *(len(x) + 2 for x in labels))
    arch_width = max(18, *(len(m["arch"]) + 1 for m in report.members))
    wide = width + arch_width + 6   # label, arch and px columns
    scores = f"{'val acc':>8} {'test acc':>9} {'test NLL':>9} {'test ECE':>9}"
    lines = [f"{'member':<{width}} {'arch':<{arch_width}} {'px':>4} {scores}"]
    for label, m in zip(labels, report.members):
        lines.append(f"{label:<{width}} {m['arch']:<{arch_width}} {m['eval_img_size']:>4} "
                     f"{m['val_acc']:>8.2%} {m['test_acc']:>9.2%} {m['test_nll']:>9.4f} "
                     f"{m['test_ece']:>9.2%}")
    lines.append(f"{'vote':<{wide}} {scores}")
    for v in report.votes:
        name = f"{v.name} ({v.description})"
        lines.append(f"{name:<{wide}} {v.val_acc:>8.2%} {v.test_acc:>9.2%} {v.test_nll:>9.4f} "
                     f"{v.test_ece:>9.2%}" + (" <- best on val" if v.name == report.best_vote else ""))
        if v.weights is not None:
            lines.append(f"    weights {', '.join(f'{w:.3f}' for w in v.weights)}")
    lines.append(f"{'oracle (any member right)':<{wide}} {'':>8} {report.oracle_test_acc:>9.2%}")
    lines.append(f"majority ties: {report.majority_ties_test} test samples "
                 f"({report.majority_ties_val} val); {report.tie_rule}")
    lines.append(f"pairwise disagreement on test (mean {report.mean_disagreement_test:.2%}):")
    for i, row in enumerate(report.pairwise_disagreement_test):
        lines.append(f"  [{i}] {labels[i]:<{width}} " + " ".join(f"{x:>6.1%}" for x in row))
    lines.append(f"per-class test accuracy of the best vote on val ({report.best_vote}):")
    lines += [f"  {name:<12} {acc:>7.2%}" for name, acc in report.per_class_acc.items()]
    return "\n".join(lines)


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = ensemble_parser().parse_args(argv)
    if args.img_size is not None and not MIN_IMG_SIZE <= args.img_size <= MAX_IMG_SIZE:
        raise UserError(f"--img-size {args.img_size}: use {MIN_IMG_SIZE} to {MAX_IMG_SIZE} px")
    from ..tracking.trackers import tracker_problem

    if problem := tracker_problem(args.report_to):
        raise UserError(problem)
    import torch

    from ..ensemble import voting
    from ..data.cifar10 import load_cifar10
    from ..ensemble.cache import file_sha256, tensor_sha256
    from ..ensemble.evaluation import evaluate_members
    from ..ensemble.members import find_checkpoints, member_labels, read_members
    from ..ensemble.tracking import log_report
    from ..ensemble.report import build_report
    from ..tracking.hardware import hardware_name
    from ..evaluation.inference import make_accelerator
    from ..evaluation.tta import check_tta, fewest_views

    paths = find_checkpoints(args.weights)
    members = read_members(paths, args.img_size)
    tta = check_tta(args.tta, fewest_views(m.meta.tta_scheme for m in members))
    first_dir = next((Path(w) for w in args.weights if Path(w).is_dir()), paths[0].parent)
    output_dir = Path(args.output_dir) if args.output_dir else first_dir
    if len(members) > 1 and output_dir.exists():
        ensure_writable_dir(output_dir)  # fail before the evaluation, but create nothing yet

    accelerator = make_accelerator()
    data = load_cifar10(args.dataset, None, args.eval_limit)
    if data.class_names != members[0].meta.class_names:
        raise UserError(f"--dataset {data.source}: classes {data.class_names[:4]}... differ from the "
                        f"checkpoints' {members[0].meta.class_names[:4]}...; use the dataset they "
                        "were trained on")
    splits = {"val": data.val, "test": data.test} if len(members) > 1 else {"test": data.test}
    for m in members:
        m.sha256 = file_sha256(m.path)
    data_hashes = {s: tensor_sha256(images.images, images.labels) for s, images in splits.items()}
    evals = evaluate_members(accelerator, members, splits, data_hashes, args.eval_limit, tta,
                             args.batch_size, write_cache=len(members) > 1)
    labels = {s: images.labels for s, images in splits.items()}
    labels_of_members = member_labels([m.path for m in members])
    if len(members) == 1:
        acc = voting.accuracy(evals[0].probs["test"].argmax(1), labels["test"])
        accelerator.print(f"{labels_of_members[0]} ({members[0].meta.arch}, {members[0].eval_img_size} px): "
                          f"test accuracy {acc:.2%}")
        raise UserError(f"--weights: found only one checkpoint ({paths[0]}); an ensemble needs two "
                        "or more; to evaluate one model use python -m cifar10_levels.cli.evaluate")

    start = time.perf_counter()
    probs = {s: torch.stack([e.probs[s] for e in evals]) for s in splits}
    report = build_report(members, probs, labels)
    vote_seconds = time.perf_counter() - start
    results = results_json(report, evals, vote_seconds)
    results.update(tta_views=tta, forced_img_size=args.img_size, dataset=data.source,
                   split_sizes={s: len(i) for s, i in splits.items()},
                   hardware=hardware_name(accelerator))
    accelerator.print(format_report(report, labels_of_members))
    if accelerator.is_main_process:
        save_results(report, results, output_dir)
    if args.report_to == "wandb":
        log_report(report, labels_of_members, results, args.wandb_project, output_dir)
    accelerator.wait_for_everyone()
    return 0


def results_json(report: EnsembleReport, evals: list[MemberEval], vote_seconds: float) -> dict:
    return {
        "members": report.members,
        "votes": {v.name: {"description": v.description, "val_acc": v.val_acc,
                           "test_acc": v.test_acc, "test_nll": v.test_nll, "test_ece": v.test_ece,
                           "weights": v.weights} for v in report.votes},
        "best_vote": report.best_vote, "best_vote_chosen_by": "validation accuracy",
        "oracle_test_acc": report.oracle_test_acc,
        "majority_ties": {"test": report.majority_ties_test, "val": report.majority_ties_val},
        "tie_rule": report.tie_rule,
        "pairwise_disagreement_test": report.pairwise_disagreement_test,
        "mean_disagreement_test": report.mean_disagreement_test,
        "per_class_acc": report.per_class_acc, "confusion_matrix": report.confusion_matrix,
        "class_names": report.class_names,
        "seconds": {"member_forward": sum(e.seconds for e in evals), "votes": vote_seconds,
                    "members_from_cache": sum(e.cached for e in evals)},
    }


def save_results(report: EnsembleReport, results: dict, output_dir: Path) -> None:
    """ensemble_results.json, and the best vote's confusion matrix and reliability diagram as PNGs."""
    import numpy as np

    from ..evaluation.metrics import reliability_bins
    from ..tracking.plots import plot_confusion, plot_reliability

    ensure_writable_dir(output_dir)
    write_json(output_dir / "ensemble_results.json", results)
    best = next(v for v in report.votes if v.name == report.best_vote)
    title = f"ensemble ({report.best_vote} vote), test"
    plot_confusion(np.array(report.confusion_matrix), report.class_names,
                   output_dir / "ensemble_confusion.png", title)
    plot_reliability(reliability_bins(best.test_probs, best.test_labels, preds=best.test_preds),
                     output_dir / "ensemble_reliability.png", title)
    print(f"results: {output_dir / 'ensemble_results.json'}, {output_dir / 'ensemble_confusion.png'}, "
          f"{output_dir / 'ensemble_reliability.png'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
