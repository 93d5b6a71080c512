"""`python -m cifar10_levels.cli.evaluate --weights CKPT`: one model on the test split, plain and TTA,
per class, with calibration (NLL, ECE). Writes nothing unless --output is given."""
from __future__ import annotations

import argparse
import sys

from .arguments import Parser, non_negative_int, positive
from ..errors import UserError, exits_cleanly_on_user_error


def evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cifar10-evaluate", description="Evaluate one checkpoint, run directory or "
               "cifar10-export directory on the CIFAR-10 test split.")
    p.add_argument("--weights", required=True, metavar="PATH")
    p.add_argument("--dataset", metavar="PATH", help="local copy in the uoft-cs/cifar10 layout "
                   "(default: the Hugging Face Hub)")
    p.add_argument("--tta", type=non_negative_int, metavar="N",
                   help="test-time augmentation views reported beside the plain result (0/1 = off; "
                        "default: the training recipe's views, at least 2)")
    p.add_argument("--eval-limit", type=positive(int), metavar="N", help="stratified test subset")
    p.add_argument("--batch-size", type=positive(int), default=256)
    p.add_argument("--output", metavar="DIR", help="write evaluation.json and reliability.png here")
    return p


def summarize(probs, labels, class_names: list[str]) -> dict:
    from ..evaluation import metrics

    preds = probs.argmax(1)
    return {"acc": (preds == labels).float().mean().item(),
            "nll": metrics.negative_log_likelihood(probs, labels),
            "ece": metrics.expected_calibration_error(probs, labels),
            "per_class_acc": dict(zip(class_names, metrics.per_class_accuracy(
                preds, labels, len(class_names))))}


def format_results(results: dict) -> str:
    views = [("plain", results["plain"])] + ([(f"TTA {results['tta_views']}", results["tta"])]
                                             if results["tta"] else [])
    lines = [f"{results['weights']} ({results['arch']}, {results['img_size']} px) on "
             f"{results['test_images']} test images of {results['dataset']}",
             f"{'':<12} " + " ".join(f"{name:>10}" for name, _ in views)]
    for key, label, fmt in (("acc", "accuracy", "{:>10.2%}"), ("nll", "NLL", "{:>10.4f}"),
                            ("ece", "ECE (15 bins)", "{:>10.2%}")):
        lines.append(f"{label:<12} " + " ".join(fmt.format(v[key]) for _, v in views))
    lines.append("per-class accuracy:")
    for name in results["plain"]["per_class_acc"]:
        lines.append(f"  {name:<10} " + " ".join(f"{v['per_class_acc'][name]:>10.2%}" for _, v in views))
    return "\n".join(lines)


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = evaluate_parser().parse_args(argv)
    from ..checkpoint.weights import load_weights, read_weights_meta, resolve_weights
    from ..evaluation.tta import check_tta

    path = resolve_weights(args.weights)
    meta = read_weights_meta(path)
    tta = check_tta(args.tta if args.tta is not None else max(meta.recipe.get("tta", 0), 2),
                    meta.tta_scheme)
    output = None
    if args.output:
        from ..files import check_writable_dir
        output = check_writable_dir(args.output, "--output")

    from ..data.cifar10 import load_cifar10
    from ..evaluation.inference import make_accelerator, model_probabilities

    data = load_cifar10(args.dataset, None, args.eval_limit)
    if data.class_names != meta.class_names:
        raise UserError(f"--dataset {data.source}: classes {data.class_names[:4]}... differ from the "
                        f"model's {meta.class_names[:4]}...; use the dataset it was trained on")
    model, meta = load_weights(path)
    accelerator = make_accelerator()
    result = model_probabilities(accelerator, model, meta, data.test, tta, args.batch_size)
    results = {"weights": str(path), "arch": meta.arch, "img_size": meta.img_size,
               "dataset": data.source, "test_images": len(data.test), "tta_views": tta,
               "plain": summarize(result.plain_probs, result.labels, meta.class_names),
               "tta": summarize(result.probs, result.labels, meta.class_names) if tta > 1 else None}
    if accelerator.is_main_process:
        print(format_results(results))
        if output is not None:
            from ..files import ensure_writable_dir, write_json
            from ..evaluation.metrics import reliability_bins
            from ..tracking.plots import plot_reliability

            ensure_writable_dir(output, "--output")
            write_json(output / "evaluation.json", results)
            plot_reliability(reliability_bins(result.plain_probs, result.labels),
                             output / "reliability.png", f"{meta.arch}: test, plain")
            print(f"results: {output / 'evaluation.json'}, {output / 'reliability.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
