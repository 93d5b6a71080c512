"""Where test_train.py's thresholds come from: train.py in-process on structured_cifar, either as is
or with one deliberate bug patched in, printing the accuracies.

    python -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; \\
        from helpers.data import make_structured_dataset; make_structured_dataset(Path('DIR'))"
    python bench/break_and_measure.py VARIANT LEVEL ARCH SEED DIR [train.py flags]

VARIANT: correct | labels_shuffled | train_norm_mismatch | aug_scramble | mix_lam_swapped | tta_far_shift.
The patches reach into module internals, so they may need adapting when those modules change.
"""
import json, sys, os, tempfile
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent)); sys.path.insert(0, str(HERE))
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
import torch
variant, level, arch, seed, data = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
extra = sys.argv[6:]
import cifar10_levels.data.augment as A
if variant == "train_norm_mismatch":  # train path normalized as if values were in [0, 1]
    orig = A.color_jitter_standardize_
    A.color_jitter_standardize_ = lambda x, s, n, max_value=1.0: orig(x, s, n, 1.0)
elif variant == "aug_scramble":  # crop/flip returns images with pixels permuted
    orig_rcf = A.random_crop_flip
    def rcf(x, p, f):
        out = orig_rcf(x, p, f); n, c, h, w = out.shape
        perm = torch.randperm(h * w)
        return out.view(n, c, h * w)[:, :, perm].view(n, c, h, w)
    A.random_crop_flip = rcf
elif variant == "mix_lam_swapped":
    import timm.data.mixup as M
    orig_t = M.mixup_target
    M.mixup_target = lambda t, nc, lam=1., *a, **k: orig_t(t, nc, 1 - lam, *a, **k)
elif variant == "tta_far_shift":
    import dataclasses
    import cifar10_levels.evaluation.tta as V
    far = tuple((f, 8 * dx, 8 * dy) for f, dx, dy in V.TTA_VIEWS)
    V.TTA_SCHEMES["shift2"] = dataclasses.replace(V.TTA_SCHEMES["shift2"], views=far)
elif variant == "labels_shuffled":
    import cifar10_levels.data.cifar10 as D
    orig_load = D.load_cifar10
    def load(*a, **k):
        d = orig_load(*a, **k)
        g = torch.Generator().manual_seed(0)
        lab = d.train.labels
        d.train.labels = lab[torch.randperm(len(lab), generator=g)] if torch.is_tensor(lab) else lab[torch.randperm(len(lab), generator=g).numpy()]
        return d
    D.load_cifar10 = load
    import cifar10_levels.train.trainer as T; T.load_cifar10 = load
from cifar10_levels.cli.train import train_main
out = Path(tempfile.mkdtemp())
args = ["--dataset", data, "--output-dir", str(out), "--no-pretrained", "--img-size", "32", "--batch-size", "32",
        "--no-progress", "--report-to", "none", "--level", level, "--arch", arch, "--seed", seed,
        "--epochs", "1", "4", "--lr", "1e-2", "3e-3", *extra]
import contextlib, io, time
t = time.time()
with contextlib.redirect_stdout(io.StringIO()):
    rc = train_main(args)
r = json.loads(next(out.glob("*/results.json")).read_text())
print(json.dumps(dict(variant=variant, level=level, seed=seed, val=round(r["best_val_acc"], 3), test=round(r["test_acc"], 3),
                      tta=None if r.get("test_acc_tta") is None else round(r["test_acc_tta"], 3), s=round(time.time() - t))), flush=True)
