"""Tiny CIFAR-10 look-alikes in the Hub layout (plain_text/*.parquet), drawn from a seeded generator."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# One colour per class: the class shows in the image, so tiny models learn it in an epoch or two.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 0], [0, 0, 128]])


def make_images(labels: np.ndarray, rng: np.random.RandomState, size: int = 32) -> np.ndarray:
    """Class colour on a noisy background, with a bright square at a random place."""
    n = len(labels)
    images = rng.randint(0, 80, size=(n, size, size, 3))
    for i, c in enumerate(labels):
        images[i, 4:-4, 4:-4] = (PALETTE[c] * 0.8 + images[i, 4:-4, 4:-4] * 0.5).clip(0, 255)
        y, x = rng.randint(0, size - 8, 2)
        images[i, y:y + 6, x:x + 6] = 255
    return images.astype(np.uint8)


def write_split(path: Path, images: np.ndarray, labels: np.ndarray, mode: str = "RGB",
                names: list[str] = CLASS_NAMES, columns=("img", "label")) -> None:
    import datasets
    from PIL import Image

    pil = [Image.fromarray(im).convert(mode) for im in images]
    features = datasets.Features({columns[0]: datasets.Image(),
                                  columns[1]: datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({columns[0]: pil, columns[1]: labels.tolist()}, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def make_dataset(root: Path, n_train: int = 400, n_test: int = 100, seed: int = 0,
                 images=make_images) -> Path:
    """Train and test splits in the hub layout, `images(labels, rng)` drawing each split's pixels."""
    rng = np.random.RandomState(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        write_split(root / "plain_text" / f"{split}-00000-of-00001.parquet",
                    images(labels, rng), labels)
    return root


def make_structured_images(labels: np.ndarray, rng: np.random.RandomState, size: int = 32) -> np.ndarray:
    """Class = a spatial pattern, never a colour: horizontal or vertical stripes (period 4 or 8),
    checkerboards (cell 2 or 4), a disk, a ring, a plus or an X, at a random phase or place, in random
    foreground/background colours, with noise. Every pattern is its own mirror image, so flips keep
    the class; only spatial features tell the classes apart."""
    n = len(labels)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size, 3))
    for i, c in enumerate(labels):
        oy, ox = rng.randint(0, 8, 2)
        cy, cx = rng.randint(10, size - 10, 2)
        dy, dx = yy - cy, xx - cx
        radius = np.hypot(dy, dx)
        mask = [((yy + oy) // 2) % 2, ((yy + oy) // 4) % 2, ((xx + ox) // 2) % 2, ((xx + ox) // 4) % 2,
                ((yy + oy) // 2 + (xx + ox) // 2) % 2, ((yy + oy) // 4 + (xx + ox) // 4) % 2,
                radius < 7, (radius > 5) & (radius < 8),
                ((abs(dy) < 2) | (abs(dx) < 2)) & (abs(dy) < 9) & (abs(dx) < 9),
                ((abs(dy - dx) < 2) | (abs(dy + dx) < 2)) & (abs(dy) < 8)][c].astype(float)[..., None]
        fg, bg = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
        while np.abs(fg - bg).sum() < 150:  # the pattern must show
            fg, bg = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
        images[i] = mask * fg + (1 - mask) * bg + rng.normal(0, 20, (size, size, 3))
    return images.clip(0, 255).astype(np.uint8)


def make_structured_dataset(root: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    return make_dataset(root, n_train, n_test, seed, images=make_structured_images)
