"""The files of state/, which --resume reads, each checked before anything loads it. Accelerate
writes the model (safetensors), the optimizer, the scheduler, the fp16 scaler and each process's
random state (torch.save, read back with weights_only=True: plain tensors and numbers, never code);
we write train_state.json, recipe.json and ema.safetensors. Nothing in state/ is unpickled freely."""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import UserError
from ..files import atomic_path
from .state_dict import clean_state_dict
from .train_state import TrainState

TRAIN_STATE_FILE = "train_state.json"
RECIPE_FILE = "recipe.json"           # the recipe the run was trained with: --resume must match it
EMA_FILE = "ema.safetensors"          # --ema: the averaged weights, the update count in the metadata
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.bin"
SCHEDULER_FILE = "scheduler.bin"
SCALER_FILE = "scaler.pt"
RNG_FILE = re.compile(r"random_states_\d+\.pkl")
FSDP_PARTS = re.compile(r"(pytorch_model_fsdp|optimizer)_\d+(\.bin)?")  # Accelerate's FSDP layout
KNOWN_FILES = (TRAIN_STATE_FILE, RECIPE_FILE, EMA_FILE, MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE,
               SCALER_FILE)
# the recipe fields that shape the model: a resumed run must keep them
MODEL_FIELDS = (("arch", "--arch"), ("img_size", "--img-size"))


def damaged(path: Path, what: str) -> UserError:
    return UserError(f"--resume: {path} is damaged ({what}); restore the run directory from a copy, "
                     "or start the run again with --overwrite")


def first_line(err: BaseException) -> str:
    """The error's first sentence: what went wrong, without the library's advice after it."""
    return (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0][:160]


def read_train_state(path: Path) -> TrainState:
    """train_state.json as a TrainState, every field of the right type."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged(path, f"not JSON: {first_line(err)}") from None
    if not isinstance(data, dict):
        raise damaged(path, f"a JSON {type(data).__name__}, not an object")
    fields = {f.name: f for f in dataclasses.fields(TrainState)}
    if unknown := sorted(set(data) - set(fields)):
        raise damaged(path, f"unknown field(s) {', '.join(unknown)}")
    for name, value in data.items():
        if (problem := field_problem(name, value)) is not None:
            raise damaged(path, f"{name} {json.dumps(value)[:60]}: {problem}")
    return TrainState(**data)


def field_problem(name: str, value) -> str | None:
    """Why `value` cannot be TrainState's field `name`, or None."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if name in ("phase", "epoch", "step", "global_step", "epochs_done", "nonfinite"):
        return None if is_int and value >= 0 else "must be a whole number >= 0"
    if name == "best_epoch":
        return None if is_int and value >= -1 else "must be a whole number >= -1"
    if name in ("best_val_acc", "train_seconds"):
        number = (is_int or isinstance(value, float)) and math.isfinite(value)
        return None if number else "must be a finite number"
    if name == "best_weights":
        return None if value in ("raw", "ema") else "must be 'raw' or 'ema'"
    if name == "teachers_sha256":
        return None if value is None or isinstance(value, list) and all(
            isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in value) \
            else "must be a list of sha256 hex digests or null"
    if name == "history":
        return None if isinstance(value, list) and all(isinstance(h, dict) for h in value) \
            else "must be a list of objects"
    return None if value is None or isinstance(value, dict) else "must be an object or null"


def write_recipe(state_dir: Path, recipe: dict) -> None:
    with atomic_path(state_dir / RECIPE_FILE) as tmp:
        Path(tmp).write_text(json.dumps(recipe, indent=2) + "\n")


def saved_ema_decay(state_dir: Path) -> float | None:
    """The --ema of the run saved in `state_dir` (0: none) as recipe.json records it; None unknown."""
    try:
        decay = json.loads((state_dir / RECIPE_FILE).read_text())["ema_decay"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
        return None
    return decay if isinstance(decay, (int, float)) else None


def recipe_problem(state_dir: Path, recipe: dict) -> str | None:
    """--resume under another --arch or --img-size than the saved run's: why not, or None."""
    path = state_dir / RECIPE_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        changed = [(flag, saved[name], recipe[name]) for name, flag in MODEL_FIELDS
                   if saved[name] != recipe[name]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as err:
        return str(damaged(path, f"not the recipe of a run: {first_line(err)}"))
    if not changed:
        return None
    was = " ".join(f"{flag} {old}" for flag, old, _ in changed)
    now = " ".join(f"{flag} {new}" for flag, _, new in changed)
    return (f"--resume: the run in {state_dir.parent} was trained with {was} ({path}), not {now}; "
            f"resume it with {was}, or start a new run with another --run-name")


def save_ema(path: Path, weights: dict[str, torch.Tensor], updates: int) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp,
                  metadata={"updates": str(updates)})


def read_ema(path: Path, expected: nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """ema.safetensors checked against the EMA's module: (its weights, the update count)."""
    weights, metadata = read_tensors(path, expected.state_dict())
    updates = metadata.get("updates", "")
    if not updates.isdigit():
        raise damaged(path, f"update count {updates[:20]!r} is not a whole number")
    return weights, int(updates)


def read_tensors(path: Path, expected: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file whose names and shapes (wrapper prefixes aside) are `expected`'s."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError and OSErrors
        raise damaged(path, f"not a complete safetensors file: {first_line(err)}") from None
    check_shapes(path, clean_state_dict(tensors), clean_state_dict(expected))
    return tensors, metadata


def check_shapes(path: Path, found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    if missing := sorted(set(expected) - set(found)):
        raise damaged(path, f"{len(missing)} weight(s) missing, e.g. {missing[0]}; saved by another "
                      "model?")
    if extra := sorted(set(found) - set(expected)):
        raise damaged(path, f"{len(extra)} weight(s) this model lacks, e.g. {extra[0]}; saved by "
                      "another model?")
    for name, tensor in expected.items():
        if found[name].shape != tensor.shape:
            raise damaged(path, f"{name} has shape {tuple(found[name].shape)}, the model "
                          f"{tuple(tensor.shape)}; saved by another model?")


def load_pickled_tensors(path: Path):
    """torch.load with weights_only=True (as Accelerate loads it): tensors, numbers and containers
    only; a file that holds anything else, code included, is refused unread."""
    from accelerate.utils import load

    try:
        with warnings.catch_warnings():  # torch warns of a pickle protocol it will refuse anyway
            warnings.simplefilter("ignore")
            return load(path, map_location="cpu")
    except pickle.UnpicklingError:
        raise damaged(path, "it holds objects other than tensors and numbers, possibly code; not "
                      "loaded") from None
    except Exception as err:  # RuntimeError (truncated zip), EOFError, ...
        raise damaged(path, f"not a state file Accelerate saved: {first_line(err)}") from None


def check_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """The saved optimizer state fits `optimizer`: its groups, their sizes and each tensor's shape."""
    saved = load_pickled_tensors(path)
    saved = saved if isinstance(saved, dict) else {}
    groups = saved.get("param_groups")
    if not (isinstance(saved.get("state"), dict) and isinstance(groups, list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        raise damaged(path, "not an optimizer state (state and param_groups)")
    sizes = [len(g["params"]) for g in groups]
    expected = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != expected:
        raise damaged(path, f"parameter groups of {sizes} parameters, the optimizer's {expected}; "
                      "saved by another model or phase?")
    params = dict(zip((i for g in groups for i in g["params"]),
                      (p for g in optimizer.param_groups for p in g["params"])))
    for index, values in saved["state"].items():
        if index not in params or not isinstance(values, dict):
            raise damaged(path, f"state of an unknown parameter {index!r}")
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[index].shape:
                raise damaged(path, f"{name} of parameter {index} has shape {tuple(value.shape)}, the "
                              f"parameter {tuple(params[index].shape)}")


def check_scheduler(path: Path, groups: int) -> None:
    saved = load_pickled_tensors(path)
    if not (isinstance(saved, dict) and isinstance(saved.get("last_epoch"), int)
            and isinstance(saved.get("base_lrs"), list) and len(saved["base_lrs"]) == groups):
        raise damaged(path, f"not a schedule of {groups} parameter group(s)")


def check_random_states(path: Path) -> None:
    """A process's random state, tried on each generator (then the current one put back)."""
    saved = load_pickled_tensors(path)
    python, numpy, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    generator = saved.get("torch_manual_seed") if isinstance(saved, dict) else None
    if not (isinstance(generator, torch.Tensor) and generator.dtype == torch_state.dtype
            and generator.shape == torch_state.shape):  # torch takes a wrong one without a check
        raise damaged(path, "not a random state: no torch generator state")
    try:
        random.setstate(saved["random_state"])
        np.random.set_state(saved["numpy_random_seed"])
        torch.set_rng_state(saved["torch_manual_seed"])
    except Exception as err:  # KeyError, TypeError, ValueError, RuntimeError: not a random state
        raise damaged(path, f"not a random state: {first_line(err)}") from None
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(torch_state)


def state_problem(state_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                  ema_module: nn.Module | None, fsdp: bool) -> str | None:
    """Every file of state/ checked against the run about to load it: why it cannot, or None."""
    try:
        check_state_dir(state_dir, model, optimizer, ema_module, fsdp)
    except UserError as err:
        return str(err)
    return None


def check_state_dir(state_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    ema_module: nn.Module | None, fsdp: bool) -> None:
    names = sorted(p.name for p in state_dir.iterdir())
    for name in names:
        if name not in KNOWN_FILES and not RNG_FILE.fullmatch(name) \
                and not (fsdp and FSDP_PARTS.fullmatch(name)):
            raise UserError(f"--resume: {state_dir / name} is not part of a resume state this version "
                            "saves (and is not loaded: it may hold code); remove it, or start the run "
                            "again with --overwrite")
    required = (SCHEDULER_FILE,) if fsdp else (MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE)
    required += (EMA_FILE,) if ema_module is not None else ()
    for name in required:
        if name not in names:
            raise damaged(state_dir / name, "missing")
    if not fsdp:  # FSDP's shards have their own layout; Accelerate reads them weights_only
        read_tensors(state_dir / MODEL_FILE, model.state_dict())
        check_optimizer(state_dir / OPTIMIZER_FILE, optimizer)
    check_scheduler(state_dir / SCHEDULER_FILE, len(optimizer.param_groups))
    if ema_module is not None:
        read_ema(state_dir / EMA_FILE, ema_module)
    if SCALER_FILE in names and not isinstance(load_pickled_tensors(state_dir / SCALER_FILE), dict):
        raise damaged(state_dir / SCALER_FILE, "not a gradient scaler state")
    for name in names:
        if RNG_FILE.fullmatch(name):
            check_random_states(state_dir / name)
