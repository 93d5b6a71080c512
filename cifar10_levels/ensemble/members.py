"""The ensemble's members: checkpoints found under --weights, their metadata validated and their
classes agreed on before anything heavy runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint.meta import BEST_NAME, CheckpointMeta, read_meta
from ..errors import UserError
from ..checkpoint.file_checks import PICKLE_SUFFIXES, refuse_pickle
from ..models.factory import check_arch

STATE_DIR_NAMES = ("state", "state.old", "state.tmp")   # Accelerate's save_state holds bare weights


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


def find_checkpoints(paths: list[str], flag: str = "--weights") -> list[Path]:
    """Files as given; a directory gives the best checkpoint of each run under it (or, with no
    best.safetensors anywhere, every .safetensors that is not a cache or training state)."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_file():
            refuse_pickle(path, flag)
            found.append(path)
            continue
        if not path.is_dir():
            raise UserError(f"{flag} {path}: no such file or directory")
        best = sorted(p for p in path.rglob(BEST_NAME) if _is_checkpoint_candidate(p, path))
        any_file = sorted(p for p in path.rglob("*.safetensors") if _is_checkpoint_candidate(p, path))
        chosen = best or any_file
        if not chosen:
            pickles = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES
                             and _is_checkpoint_candidate(p, path))
            hint = f" (pickle files such as {pickles[0]} are refused)" if pickles else ""
            raise UserError(f"{flag} {path}: no checkpoints found (looked for {BEST_NAME} in each "
                            f"run directory, then any *.safetensors){hint}; train one with train.py")
        found.extend(chosen)
    return list(dict.fromkeys(p.resolve() for p in found))


def read_members(paths: list[Path], img_size: int | None, flag: str = "--weights") -> list[Member]:
    """Validate every file's metadata and agree on the classes before anything heavy runs."""
    members = []
    for path in paths:
        meta = read_meta(path, flag)
        check_arch(meta.arch, flag, path)
        members.append(Member(path, meta, img_size or meta.img_size))
    first = members[0]
    for m in members[1:]:
        if m.meta.class_names != first.meta.class_names:
            raise UserError(f"{flag}: {m.path} has {m.meta.num_classes} classes "
                            f"{m.meta.class_names[:4]}... but {first.path} has "
                            f"{first.meta.num_classes} {first.meta.class_names[:4]}...; "
                            "use checkpoints trained on the same classes")
    return members
