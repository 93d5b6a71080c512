"""A checkpoint as a timm Hub model (cifar10-export, train.py --push-to-hub).

The export directory gets timm's layout, written by timm's own `save_for_hf` (config.json +
model.safetensors), so `timm.create_model("local-dir:OUT_DIR", pretrained=True)` loads it, plus a
model card (README.md) and the run's pictures. The upload is huggingface_hub's `upload_folder` of exactly that directory:
timm's `push_to_hf_hub` would save again into a temporary directory (pickle weights too, by
default) and keep its own generated card.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..errors import UserError, write_failed
from ..files import UMASK
from ..checkpoint.meta import BEST_NAME, MAX_CLASSES, META_FIELDS, field_problem, is_fraction, \
    is_int, is_name, is_number
from ..checkpoint.weights import EXPORT_CONFIG, EXPORT_WEIGHTS, META_KEY

HUB_EXPORT_DIR = "hub_export"           # inside a run directory, for train.py --push-to-hub
PICTURES = ("confusion.png", "reliability.png")


# ---- before any work -------------------------------------------------------------------------
def check_push_ready(repo_id: str, flag: str = "--push-to-hub") -> str:
    """The token, once the repo id, a token and the network are known to be there (fails in seconds)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from ..offline import hub_offline, hub_reachable

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserError(f"{flag} {repo_id}: not a Hub repo id; use NAME or OWNER/NAME "
                        "(letters, digits, -, _, .)") from None
    token = get_token()
    missing = []
    if not token:
        missing.append("a Hugging Face token (HF_TOKEN is unset and `hf auth login` saved none)")
    if hub_offline():
        missing.append("network access (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)")
    elif not missing and not hub_reachable():
        missing.append("network access (huggingface.co:443 cannot be reached)")
    if missing:
        raise UserError(f"{flag} {repo_id}: missing {' and '.join(missing)}; fix that, or drop "
                        "--push-to-hub and upload later with cifar10-export CKPT DIR --push-to-hub")
    from huggingface_hub import HfApi
    try:
        HfApi(token=token).whoami()
    except Exception as err:
        raise UserError(f"{flag} {repo_id}: the Hub rejected the token ({type(err).__name__}); "
                        "log in again with `hf auth login` or set HF_TOKEN") from None
    return token


# ---- the export ------------------------------------------------------------------------------
def is_url(value) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) <= 500 \
        and value.isprintable() and not any(c in value for c in " <>\"'`")


def _per_class(value) -> bool:
    return isinstance(value, dict) and len(value) <= MAX_CLASSES \
        and all(is_name(k, 100) and is_fraction(v) for k, v in value.items())


def _sizes(value) -> bool:
    return isinstance(value, dict) and all(is_int(value.get(k)) for k in ("train", "val", "test"))


# results.json's fields that the model card shows (tracking/results.make_results writes them)
RESULT_FIELDS = {
    "test_acc": (is_fraction, "a number from 0 to 1"),
    "test_acc_tta": (lambda v: v is None or is_fraction(v), "a number from 0 to 1, or null"),
    "tta_views": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "test_nll": (lambda v: v is None or is_number(v), "a number"),
    "test_ece": (lambda v: v is None or is_fraction(v), "a number from 0 to 1"),
    "best_val_acc": (is_fraction, "a number from 0 to 1"),
    "best_epoch": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "per_class_acc": (_per_class, "class names with accuracies from 0 to 1"),
    "split_sizes": (_sizes, "train, val and test counts"),
    "num_params": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "train_seconds": (lambda v: is_number(v) and v >= 0, "seconds >= 0"),
    "global_batch": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "title": (lambda v: isinstance(v, str) and len(v) <= 200 and v.isprintable(), "a title"),
    "hardware": (is_name, "a description"),
    "precision": (lambda v: is_name(v, 20), "a precision"),
    "dataset": (lambda v: is_name(v, 500), "a path or Hub id"),
    "recipe": (lambda v: isinstance(v, dict), "an object"),
    "wandb_url": (lambda v: v is None or is_url(v), "an http(s) URL"),
    **{name: check for name, check in META_FIELDS.items() if name.startswith("recipe.")},
}
RESULT_REQUIRED = ("test_acc", "tta_views", "best_val_acc", "best_epoch", "per_class_acc",
                   "split_sizes", "num_params", "train_seconds", "global_batch", "hardware",
                   "precision", "dataset")


def read_run_results(checkpoint: Path, test_acc: float | None) -> dict | None:
    """results.json beside the checkpoint, only if it describes these weights (best.safetensors
    carries the test accuracy that results.json reports); its fields checked before the card shows them."""
    path = checkpoint.parent / "results.json"
    if test_acc is None or not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("test_acc") != test_acc:
        return None
    problem = field_problem(results, RESULT_FIELDS, RESULT_REQUIRED)
    if problem is not None:
        raise UserError(f"{path}: {problem} (damaged or crafted); restore the run's own results.json "
                        "or move it away to export without it")
    return results


def export_model(checkpoint: Path, out_dir: Path, repo_id: str | None = None,
                 wandb_url: str | None = None) -> Path:
    """Write OUT_DIR (files replaced one by one, each whole); returns it."""
    from timm.models import save_for_hf

    from ..checkpoint.io import load_checkpoint
    from ..files import check_writable_dir, write_text
    from .model_card import card_text

    check_writable_dir(out_dir, "OUT_DIR")
    if wandb_url is not None and not is_url(wandb_url):
        raise UserError(f"--wandb-url {wandb_url[:80]!r}: not an http(s) URL; pass the W&B run's page")
    model, meta = load_checkpoint(checkpoint, "CKPT")
    results = read_run_results(checkpoint, meta.test_acc)
    wandb_url = wandb_url or (results or {}).get("wandb_url")
    pictures = [checkpoint.parent / p for p in PICTURES
                if results is not None and (checkpoint.parent / p).is_file()]
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    model_id = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{out_dir}"
    name = repo_id.split("/")[-1] if repo_id else f"cifar10-{meta.arch}-level{meta.level}"
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".export-"))
    try:
        save_for_hf(model, str(staging), safe_serialization=True,
                    model_config={"label_names": meta.class_names, META_KEY: asdict(meta)},
                    data_config={"input_size": (3, meta.img_size, meta.img_size),
                                 "mean": tuple(meta.mean), "std": tuple(meta.std),
                                 "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"})
        write_text(staging / "README.md", card_text(
            meta, results, model_id, name, pictures[0].name if pictures and
            pictures[0].name == "confusion.png" else None, wandb_url))
        for picture in pictures:
            shutil.copyfile(picture, staging / picture.name)
        for file in (EXPORT_WEIGHTS, EXPORT_CONFIG, "README.md", *(p.name for p in pictures)):
            os.chmod(staging / file, 0o666 & ~UMASK)  # safetensors writes 0600
            os.replace(staging / file, out_dir / file)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed export (a full disk) leaves nothing behind
        if isinstance(err, OSError):
            raise write_failed(out_dir, err) from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def push_export(out_dir: Path, repo_id: str, private: bool, token: str) -> str:
    """Upload the export directory as it is; returns the repo's URL."""
    from huggingface_hub import HfApi, ModelCard

    keep = f"the export is kept in {out_dir}; retry with cifar10-export CKPT {out_dir} --push-to-hub {repo_id}"
    try:
        ModelCard.load(out_dir / "README.md").validate()  # the Hub's own metadata check
        api = HfApi(token=token, library_name="cifar10-levels")
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo.repo_id, folder_path=str(out_dir),
                          commit_message="Upload model exported by cifar10-levels",
                          allow_patterns=[EXPORT_WEIGHTS, EXPORT_CONFIG, "README.md", "*.png"])
    except Exception as err:
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UserError(f"--push-to-hub {repo_id}: upload failed ({reason}); {keep}") from None
    return str(repo)


# ---- train.py --push-to-hub ------------------------------------------------------------------
def push_after_training(run_dir: Path, repo_id: str, private: bool, token: str) -> None:
    """End of a successful run, on the main process: export the best checkpoint, then push it."""
    out_dir = export_model(run_dir / BEST_NAME, run_dir / HUB_EXPORT_DIR, repo_id)
    print(f"exported: {out_dir}", flush=True)
    print(f"pushed: {push_export(out_dir, repo_id, private, token)}", flush=True)
