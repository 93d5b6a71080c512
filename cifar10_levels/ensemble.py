"""`python ensemble.py --weights ckpts/`: evaluate each checkpoint once, then compare votes.

Every check on the inputs runs before anything is evaluated or written, so bad input leaves no
files behind. Each member's probabilities are cached beside its checkpoint, keyed by the file's
content hash and everything else that changes them, so trying the votes again costs nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import Parser, non_negative_int, positive
from .errors import UserError, exits_cleanly_on_user_error
from .files import atomic_path, ensure_writable_dir, write_json

if TYPE_CHECKING:  # torch and timm load after argument parsing, so --help stays instant
    import torch

    from .checkpoint import CheckpointMeta

BEST_NAME = "best.safetensors"
STATE_DIR_NAMES = ("state", "state.old", "state.tmp")   # Accelerate's save_state holds bare weights
CACHE_SUFFIX = ".probs.safetensors"
SPLITS = ("val", "test")                                # val for the weights, test for the report


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


# ---- members -------------------------------------------------------------------------------
@dataclass
class Member:
    path: Path
    meta: CheckpointMeta
    eval_img_size: int
    sha256: str = ""


def member_labels(paths: list[Path]) -> list[str]:
    """Shortest path endings (at least run dir/file) that tell the members apart."""
    parts = [Path(p).parts for p in paths]
    for keep in range(2, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-keep:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _is_checkpoint_candidate(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return not path.name.startswith(".") and not any(p in STATE_DIR_NAMES for p in parts[:-1])


def find_checkpoints(paths: list[str]) -> list[Path]:
    """Files as given; a directory gives the best checkpoint of each run under it (or, with no
    best.safetensors anywhere, every .safetensors that is not a cache or training state)."""
    from .models import PICKLE_SUFFIXES, refuse_pickle

    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_file():
            refuse_pickle(path, "--weights")
            found.append(path)
            continue
        if not path.is_dir():
            raise UserError(f"--weights {path}: no such file or directory")
        best = sorted(p for p in path.rglob(BEST_NAME) if _is_checkpoint_candidate(p, path))
        any_file = sorted(p for p in path.rglob("*.safetensors") if _is_checkpoint_candidate(p, path))
        chosen = best or any_file
        if not chosen:
            pickles = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES
                             and _is_checkpoint_candidate(p, path))
            hint = f" (pickle files such as {pickles[0]} are refused)" if pickles else ""
            raise UserError(f"--weights {path}: no checkpoints found (looked for {BEST_NAME} in each "
                            f"run directory, then any *.safetensors){hint}; train one with train.py")
        found.extend(chosen)
    return list(dict.fromkeys(p.resolve() for p in found))


def read_members(paths: list[Path], img_size: int | None) -> list[Member]:
    """Validate every file's metadata and agree on the classes before anything heavy runs."""
    from .checkpoint import read_meta
    from .models import known_arch

    members = []
    for path in paths:
        meta = read_meta(path, "--weights")
        if not known_arch(meta.arch):
            raise UserError(f"--weights {path}: arch {meta.arch!r} is unknown to timm and to this "
                            "package; upgrade timm or drop this checkpoint")
        members.append(Member(path, meta, img_size or meta.img_size))
    first = members[0]
    for m in members[1:]:
        if m.meta.class_names != first.meta.class_names:
            raise UserError(f"--weights: {m.path} has {m.meta.num_classes} classes "
                            f"{m.meta.class_names[:4]}... but {first.path} has "
                            f"{first.meta.num_classes} {first.meta.class_names[:4]}...; "
                            "ensemble checkpoints trained on the same classes")
    return members


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- cached probabilities ------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSetting:
    """Everything besides the checkpoint that changes a member's probabilities."""

    split: str
    eval_limit: int | None
    tta: int
    img_size: int
    data_sha256: str        # the split's images and labels, so another dataset never hits the cache


def tensor_sha256(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_path(member: Member, setting: EvalSetting) -> Path:
    key = hashlib.sha256(json.dumps([member.sha256, asdict(setting)]).encode()).hexdigest()[:16]
    limit = setting.eval_limit or "all"
    return member.path.parent / (f".{member.path.stem}.{setting.split}-n{limit}-tta{setting.tta}-"
                                 f"{setting.img_size}px-{key}{CACHE_SUFFIX}")


def load_cached(path: Path, labels: torch.Tensor) -> torch.Tensor | None:
    import torch
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        saved = load_file(str(path))
    except Exception:
        return None  # a damaged cache is recomputed
    if "probs" not in saved or not torch.equal(saved.get("labels", torch.empty(0)), labels):
        return None
    return saved["probs"]


def save_cached(path: Path, probs: torch.Tensor, labels: torch.Tensor, member: Member,
                setting: EvalSetting) -> None:
    from safetensors.torch import save_file

    header = {"checkpoint_sha256": member.sha256,
              **{k: json.dumps(v) for k, v in asdict(setting).items()}}
    try:
        with atomic_path(path) as tmp:
            save_file({"probs": probs.contiguous(), "labels": labels.contiguous()}, tmp, metadata=header)
    except OSError:
        pass  # a read-only checkpoint directory only loses the cache


# ---- evaluation ----------------------------------------------------------------------------
@dataclass
class MemberEval:
    probs: dict[str, torch.Tensor] = field(default_factory=dict)   # split -> (N, C)
    seconds: float = 0.0                                            # forward passes, 0 when cached
    cached: bool = True


def evaluate_member(accelerator, model, member: Member, images, tta: int, batch_size: int):
    """Mean softmax over the TTA views, at the member's own size and normalization."""
    from .augment import Normalizer
    from .data import make_loader
    from .loop import evaluate

    channels_last = accelerator.device.type == "cuda"
    normalize = Normalizer(member.eval_img_size, tuple(member.meta.mean), tuple(member.meta.std),
                           channels_last)
    loader = accelerator.prepare_data_loader(make_loader(images, batch_size, False, 0))
    with accelerator.autocast():
        return evaluate(accelerator, model, loader, normalize, tta).probs.float()


def evaluate_members(accelerator, members: list[Member], splits: dict, data_hashes: dict[str, str],
                     eval_limit: int | None, tta: int, batch_size: int, write_cache: bool
                     ) -> list[MemberEval]:
    """Cached probabilities where present; every missing file is loaded (and so validated) first."""
    import torch

    from .checkpoint import load_checkpoint

    def setting(member: Member, split: str) -> EvalSetting:
        return EvalSetting(split, eval_limit, tta, member.eval_img_size, data_hashes[split])

    results = [MemberEval() for _ in members]
    todo = []
    for member, result in zip(members, results):
        for split, images in splits.items():
            cached = load_cached(cache_path(member, setting(member, split)), images.labels)
            if cached is not None:
                result.probs[split] = cached
        if len(result.probs) < len(splits):
            todo.append((member, result, load_checkpoint(member.path, "--weights")[0]))
    check_sizes(todo)
    for member, result, model in todo:
        model = model.to(accelerator.device)
        if accelerator.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        start = time.perf_counter()
        for split, images in splits.items():
            if split in result.probs:
                continue
            result.probs[split] = evaluate_member(accelerator, model, member, images, tta, batch_size)
            if write_cache and accelerator.is_main_process:
                save_cached(cache_path(member, setting(member, split)), result.probs[split],
                            images.labels, member, setting(member, split))
        result.seconds, result.cached = time.perf_counter() - start, False
        model.cpu()
    return results


def check_sizes(todo: list) -> None:
    """A dry forward pass per member: a clear error for a size the model cannot take."""
    import torch

    for member, _, model in todo:
        try:
            with torch.inference_mode():
                model(torch.zeros(1, 3, member.eval_img_size, member.eval_img_size))
        except RuntimeError as err:
            raise UserError(f"--img-size {member.eval_img_size}: {member.meta.arch} ({member.path}) "
                            f"cannot take this size ({str(err).splitlines()[0][:120]})") from None


# ---- votes ---------------------------------------------------------------------------------
@dataclass
class VoteScore:
    name: str
    description: str
    val_acc: float
    test_acc: float
    test_preds: torch.Tensor
    weights: list[float] | None = None


@dataclass
class EnsembleReport:
    members: list[dict]
    votes: list[VoteScore]
    best_vote: str
    oracle_test_acc: float
    majority_ties_test: int
    majority_ties_val: int
    pairwise_disagreement_test: list[list[float]]
    mean_disagreement_test: float
    per_class_acc: dict[str, float]
    confusion_matrix: list[list[int]]
    class_names: list[str]


def score_votes(val: torch.Tensor, val_labels: torch.Tensor, test: torch.Tensor,
                test_labels: torch.Tensor) -> list[VoteScore]:
    """Every vote on val and test; weights only ever come from val."""
    import torch

    from . import voting

    member_val_acc = torch.tensor([voting.accuracy(p.argmax(1), val_labels) for p in val])
    acc_weights = voting.accuracy_weights(member_val_acc.clamp_min(1e-6))
    fitted = voting.fit_mixture_weights(val, val_labels)
    rules = [
        ("majority", "hard vote, the write-up's", voting.majority_vote, None),
        ("soft", "mean probability", voting.soft_vote, None),
        ("weighted", "soft, weighted by val accuracy",
         lambda p: voting.weighted_vote(p, acc_weights), acc_weights),
        ("fitted", "soft, weights fitted on val by max likelihood",
         lambda p: voting.weighted_vote(p, fitted), fitted),
    ]
    return [VoteScore(name, text, voting.accuracy(rule(val), val_labels),
                      voting.accuracy(preds := rule(test), test_labels), preds,
                      None if w is None else [round(x, 4) for x in w.tolist()])
            for name, text, rule, w in rules]


def build_report(members: list[Member], probs: dict[str, torch.Tensor],
                 labels: dict[str, torch.Tensor]) -> EnsembleReport:
    from . import metrics, voting

    votes = score_votes(probs["val"], labels["val"], probs["test"], labels["test"])
    best = max(votes, key=lambda v: v.val_acc)  # chosen on val, so the test number stays honest
    test_preds = probs["test"].argmax(2)
    class_names = members[0].meta.class_names
    num_classes = len(class_names)
    member_rows = [{"path": str(m.path), "arch": m.meta.arch, "level": m.meta.level,
                    "train_img_size": m.meta.img_size, "eval_img_size": m.eval_img_size,
                    "sha256": m.sha256,
                    "val_acc": voting.accuracy(probs["val"][i].argmax(1), labels["val"]),
                    "test_acc": voting.accuracy(test_preds[i], labels["test"])}
                   for i, m in enumerate(members)]
    return EnsembleReport(
        members=member_rows, votes=votes, best_vote=best.name,
        oracle_test_acc=voting.oracle_accuracy(test_preds, labels["test"]),
        majority_ties_test=int(voting.majority_ties(probs["test"]).sum()),
        majority_ties_val=int(voting.majority_ties(probs["val"]).sum()),
        pairwise_disagreement_test=voting.pairwise_disagreement(test_preds).tolist(),
        mean_disagreement_test=voting.mean_disagreement(test_preds),
        per_class_acc=dict(zip(class_names, metrics.per_class_accuracy(
            best.test_preds, labels["test"], num_classes))),
        confusion_matrix=metrics.confusion_matrix(best.test_preds, labels["test"], num_classes).tolist(),
        class_names=class_names)


def format_report(report: EnsembleReport, labels: list[str]) -> str:
    from . import voting

    width = max(28, *(len(x) + 2 for x in labels))
    arch_width = max(18, *(len(m["arch"]) + 1 for m in report.members))
    wide = width + arch_width + 6   # label, arch and px columns
    lines = [f"{'member':<{width}} {'arch':<{arch_width}} {'px':>4} {'val acc':>8} {'test acc':>9}"]
    for label, m in zip(labels, report.members):
        lines.append(f"{label:<{width}} {m['arch']:<{arch_width}} {m['eval_img_size']:>4} "
                     f"{m['val_acc']:>8.2%} {m['test_acc']:>9.2%}")
    lines.append(f"{'vote':<{wide}} {'val acc':>8} {'test acc':>9}")
    for v in report.votes:
        name = f"{v.name} ({v.description})"
        lines.append(f"{name:<{wide}} {v.val_acc:>8.2%} {v.test_acc:>9.2%}"
                     + (" <- best on val" if v.name == report.best_vote else ""))
        if v.weights is not None:
            lines.append(f"    weights {', '.join(f'{w:.3f}' for w in v.weights)}")
    lines.append(f"{'oracle (any member right)':<{wide}} {'':>8} {report.oracle_test_acc:>9.2%}")
    lines.append(f"majority ties: {report.majority_ties_test} test samples "
                 f"({report.majority_ties_val} val); {voting.TIE_RULE}")
    lines.append(f"pairwise disagreement on test (mean {report.mean_disagreement_test:.2%}):")
    for i, row in enumerate(report.pairwise_disagreement_test):
        lines.append(f"  [{i}] {labels[i]:<{width}} " + " ".join(f"{x:>6.1%}" for x in row))
    lines.append(f"per-class test accuracy of the best vote on val ({report.best_vote}):")
    lines += [f"  {name:<12} {acc:>7.2%}" for name, acc in report.per_class_acc.items()]
    return "\n".join(lines)


def comparison_rows(report: EnsembleReport, labels: list[str]) -> tuple[list[str], list[list]]:
    """The printed table as rows, for W&B."""
    columns = ["name", "kind", "val_acc", "test_acc"]
    rows = [[label, f"member ({m['arch']}, {m['eval_img_size']} px)", m["val_acc"], m["test_acc"]]
            for label, m in zip(labels, report.members)]
    rows += [[v.name, f"vote: {v.description}", v.val_acc, v.test_acc] for v in report.votes]
    rows.append(["oracle", "any member right", None, report.oracle_test_acc])
    return columns, rows


def log_to_wandb(report: EnsembleReport, labels: list[str], results: dict, args) -> None:
    from . import tracking

    log = getattr(tracking, "log_ensemble", None)  # provided by the tracking work (issue 4)
    if log is None:
        print("warning: --report-to wandb: tracking.log_ensemble is missing; nothing logged")
        return
    columns, rows = comparison_rows(report, labels)
    config = {k: results[k] for k in ("best_vote", "oracle_test_acc", "majority_ties", "tie_rule",
                                      "mean_disagreement_test", "tta_views", "dataset")}
    log(rows, columns, project=args.wandb_project, report_to="wandb", out_dir=args.output_dir,
        config=config)


# ---- main ----------------------------------------------------------------------------------
@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = ensemble_parser().parse_args(argv)
    if args.img_size is not None and not 16 <= args.img_size <= 1024:
        raise UserError(f"--img-size {args.img_size}: use 16 to 1024 px")
    from .augment import TTA_VIEWS
    tta = max(args.tta, 1)
    if tta > len(TTA_VIEWS):
        raise UserError(f"--tta {args.tta}: choose 0 to {len(TTA_VIEWS)} views")
    paths = find_checkpoints(args.weights)
    members = read_members(paths, args.img_size)
    first_dir = next((Path(w) for w in args.weights if Path(w).is_dir()), paths[0].parent)
    output_dir = Path(args.output_dir) if args.output_dir else first_dir
    if len(members) > 1 and output_dir.exists():
        ensure_writable_dir(output_dir)  # fail before the evaluation, but create nothing yet

    import numpy as np
    import torch
    from accelerate import Accelerator

    from . import voting
    from .data import load_cifar10
    from .plots import plot_confusion

    accelerator = Accelerator(mixed_precision="fp16" if torch.cuda.is_available() else "no")
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
                        "or more; to evaluate one model use python -m cifar10_levels.evaluate")

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
        ensure_writable_dir(output_dir)
        write_json(output_dir / "ensemble_results.json", results)
        plot_confusion(np.array(report.confusion_matrix), report.class_names,
                       output_dir / "ensemble_confusion.png", f"ensemble ({report.best_vote} vote), test")
        accelerator.print(f"results: {output_dir / 'ensemble_results.json'}, "
                          f"{output_dir / 'ensemble_confusion.png'}")
    if args.report_to == "wandb":
        args.output_dir = str(output_dir)
        log_to_wandb(report, labels_of_members, results, args)
    accelerator.wait_for_everyone()
    return 0


def results_json(report: EnsembleReport, evals: list[MemberEval], vote_seconds: float) -> dict:
    from . import voting

    return {
        "members": report.members,
        "votes": {v.name: {"description": v.description, "val_acc": v.val_acc,
                           "test_acc": v.test_acc, "weights": v.weights} for v in report.votes},
        "best_vote": report.best_vote, "best_vote_chosen_by": "validation accuracy",
        "oracle_test_acc": report.oracle_test_acc,
        "majority_ties": {"test": report.majority_ties_test, "val": report.majority_ties_val},
        "tie_rule": voting.TIE_RULE,
        "pairwise_disagreement_test": report.pairwise_disagreement_test,
        "mean_disagreement_test": report.mean_disagreement_test,
        "per_class_acc": report.per_class_acc, "confusion_matrix": report.confusion_matrix,
        "class_names": report.class_names,
        "seconds": {"member_forward": sum(e.seconds for e in evals), "votes": vote_seconds,
                    "members_from_cache": sum(e.cached for e in evals)},
    }


def hardware_name(accelerator) -> str:
    import torch

    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{accelerator.num_processes} CPU process(es), {torch.get_num_threads()} threads each"
