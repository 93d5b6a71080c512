"""`python -m cifar10_levels.cli.predict --weights CKPT IMAGES...`: classify your own image files.

Each image becomes what the model was trained on: RGB, shorter side resized to 32 px and centre
cropped (CIFAR-10 images are 32 px; PIL's filter antialiases large images), then the evaluation path
of training (32 px TTA views, resized to the model's size on the device, normalized).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import Parser, non_negative_int, positive
from ..errors import UserError, exits_cleanly_on_user_error
from ..files import atomic_path, check_writable_file, write_json

if TYPE_CHECKING:
    import torch

CIFAR_SIZE = 32
VOTES = ("soft", "majority", "weighted")


def predict_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cifar10-predict", description="Top-k CIFAR-10 classes for image files (PNG, "
               "JPEG, ... any size or mode), with one model or an ensemble of several.")
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR",
                   help="image files, or directories (their images, recursively)")
    p.add_argument("--weights", nargs="+", required=True, metavar="PATH",
                   help="checkpoints (.safetensors), run directories or cifar10-export directories; "
                        "two or more vote as an ensemble. The images may follow directly: the "
                        "first path that is none of these starts them")
    p.add_argument("--top-k", type=positive(int), default=3, metavar="K", help="classes shown per image")
    p.add_argument("--tta", type=non_negative_int, default=1, metavar="N",
                   help="test-time augmentation views, from the scheme the checkpoint records (1 = off)")
    p.add_argument("--vote", choices=VOTES, default="soft",
                   help="ensemble vote: soft = mean probability; majority = most members' top-1 "
                        "(ties by summed probability); weighted = mean weighted by each member's "
                        "validation accuracy from its checkpoint. Probabilities shown are the "
                        "(weighted) mean")
    p.add_argument("--batch-size", type=positive(int), default=256)
    p.add_argument("--output", metavar="FILE.csv|FILE.json", help="also write the predictions here")
    return p


@dataclass
class Prediction:
    file: str
    classes: list[str]          # best first; [0] is the vote's choice
    probabilities: list[float]


def find_images(inputs: list[str]) -> list[Path]:
    from PIL import Image

    extensions = set(Image.registered_extensions())
    found: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                            and not p.name.startswith("."))
        elif path.is_file():
            found.append(path)  # named explicitly: tried whatever its suffix
        elif path.exists():  # a FIFO or a device would block or never end
            print(f"warning: {path}: not a regular file; skipped", file=sys.stderr)
        else:
            print(f"warning: {path}: no such file or directory; skipped", file=sys.stderr)
    return list(dict.fromkeys(found))


WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "F")


def eight_bit_grey(img):
    """A 16-bit (or 32-bit, float) greyscale image as 8-bit "L": PIL's own convert clips every
    value above 255 to white."""
    import numpy as np
    from PIL import Image

    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if values.max(initial=0) <= 1 else 255.0
    else:  # PNG stores 16 bits; PIL reads them as "I" or "I;16"
        top = 65535.0
    scaled = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled)  # uint8, 2-d: mode "L"


def load_image(path: Path) -> torch.Tensor:
    """(3, 32, 32) uint8: RGB, shorter side to 32 px (bilinear, antialiased), centre crop."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in WIDE_GREY_MODES:
            img = eight_bit_grey(img)
        if img.mode in ("P", "LA", "PA") or "transparency" in img.info:
            img = img.convert("RGBA")  # palette transparency needs RGBA before RGB
        img = ImageOps.fit(img.convert("RGB"), (CIFAR_SIZE, CIFAR_SIZE), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_images(paths: list[Path]) -> tuple[list[Path], torch.Tensor]:
    """Every readable image; each unreadable one is named on stderr and skipped."""
    import torch
    from PIL import Image

    good, tensors = [], []
    for path in paths:
        try:
            tensors.append(load_image(path))
            good.append(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            print(f"warning: {path}: not a readable image ({reason}); skipped", file=sys.stderr)
    if not good:
        raise UserError(f"no readable image among {len(paths)} file(s); pass PNG or JPEG files "
                        "or directories holding them")
    return good, torch.stack(tensors)


def combine(probs: torch.Tensor, vote: str, val_accs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(members, N, C) -> (N, C) probabilities shown and (N,) the vote's class."""
    import torch

    from ..ensemble import voting

    if vote == "weighted":
        weights = voting.accuracy_weights(torch.tensor(val_accs).clamp_min(1e-6))
        mean = torch.einsum("m,mnc->nc", weights.to(probs.dtype), probs)
        return mean, voting.weighted_vote(probs, weights)
    mean = probs.mean(0)
    return mean, (voting.majority_vote(probs) if vote == "majority" else voting.soft_vote(probs))


def rank(mean: torch.Tensor, chosen: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) class indices: the vote's choice first, then the most probable others."""
    import torch

    others = mean.scatter(1, chosen.view(-1, 1), float("-inf")).argsort(1, descending=True)
    return torch.cat([chosen.view(-1, 1), others[:, : k - 1]], 1)


def format_table(predictions: list[Prediction], names: list[str]) -> str:
    width = max(10, *(len(n) for n in names))
    file_width = min(max(4, *(len(p.file) for p in predictions)), 60)
    k = len(predictions[0].classes)
    header = f"{'file':<{file_width}}  " + "  ".join(f"{f'top-{i + 1}':<{width + 8}}" for i in range(k))
    lines = [header]
    for p in predictions:
        cells = "  ".join(f"{c:<{width}} {q:>6.1%} " for c, q in zip(p.classes, p.probabilities))
        lines.append(f"{p.file[-file_width:]:<{file_width}}  {cells}")
    return "\n".join(lines)


def write_predictions(path: Path, predictions: list[Prediction]) -> None:
    if path.suffix.lower() == ".json":
        write_json(path, [{"file": p.file, "predictions": [
            {"class": c, "probability": q} for c, q in zip(p.classes, p.probabilities)]}
            for p in predictions])
        return
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "rank", "class", "probability"])
    for p in predictions:
        writer.writerows([p.file, i + 1, c, f"{q:.6f}"]
                         for i, (c, q) in enumerate(zip(p.classes, p.probabilities)))
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text.getvalue())


def check_output(path: str | None) -> Path | None:
    if path is None:
        return None
    out = Path(path)
    if out.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--output {out}: end the name with .csv or .json")
    return check_writable_file(out, "--output")


def split_weights_and_images(weights: list[str], images: list[str]) -> tuple[list[str], list[str]]:
    """`--weights A B img1 img2`: argparse gives --weights all four; the images start at the
    first path that is not a checkpoint, a run directory or an export."""
    from ..checkpoint.file_checks import PICKLE_SUFFIXES
    from ..checkpoint.meta import BEST_NAME
    from ..checkpoint.weights import is_export_dir

    def is_weights(text: str) -> bool:
        path = Path(text)
        return path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) or is_export_dir(path) \
            or (path / BEST_NAME).is_file()

    first_image = next((i for i, w in enumerate(weights) if not is_weights(w)), len(weights))
    weights, images = weights[:first_image], weights[first_image:] + images
    if not weights:
        raise UserError(f"--weights {Path(images[0])}: not a .safetensors checkpoint, a run "
                        "directory or a cifar10-export directory")
    if not images:
        raise UserError("no images given; pass image files or directories after the weights")
    return weights, images


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = predict_parser().parse_args(argv)
    output = check_output(args.output)
    weights, inputs = split_weights_and_images(args.weights, args.images)
    from ..checkpoint.weights import load_weights, read_weights_meta, resolve_weights
    from ..evaluation.tta import check_tta, fewest_views

    paths = list(dict.fromkeys(resolve_weights(w) for w in weights))
    metas = [read_weights_meta(p) for p in paths]
    tta = check_tta(args.tta, fewest_views(m.tta_scheme for m in metas))
    names = metas[0].class_names
    for path, meta in zip(paths[1:], metas[1:]):
        if meta.class_names != names:
            raise UserError(f"--weights {path}: classes {meta.class_names[:3]}... differ from "
                            f"{paths[0]}'s {names[:3]}...; ensemble models trained on the same classes")
    k = min(args.top_k, len(names))
    files, images = load_images(find_images(inputs))

    import torch

    from ..data.cifar10 import ImageSet
    from ..evaluation.inference import make_accelerator, model_probabilities

    accelerator = make_accelerator()
    batch = ImageSet(images, torch.zeros(len(images), dtype=torch.long))  # labels unused
    probs = []
    for path in paths:
        model, meta = load_weights(path)
        probs.append(model_probabilities(accelerator, model, meta, batch, tta, args.batch_size).probs)
    mean, chosen = combine(torch.stack(probs), args.vote, [m.val_acc for m in metas])
    top = rank(mean, chosen, k)
    predictions = [Prediction(str(f), [names[c] for c in row.tolist()],
                              [mean[i, c].item() for c in row.tolist()])
                   for i, (f, row) in enumerate(zip(files, top))]
    what = f"{len(paths)} models, {args.vote} vote" if len(paths) > 1 else str(paths[0])
    print(f"{len(files)} image(s), {what}, {tta} view(s)")
    print(format_table(predictions, names))
    if output is not None:
        write_predictions(output, predictions)
        print(f"predictions: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
