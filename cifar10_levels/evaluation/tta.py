"""Test-time augmentation: a model's deterministic views of a uint8 batch, their weights, and the one
check of a view count against the model's scheme."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..data.augment import translate
from ..errors import UserError

# Test-time views: (horizontal flip, shift right px, shift down px); a view mirrors first, then
# shifts. The first N of a scheme are used.
TTA_VIEWS: tuple[tuple[bool, int, int], ...] = (
    (False, 0, 0), (True, 0, 0), (False, 2, 2), (True, -2, -2), (False, -2, 2),
    (True, 2, -2), (False, 2, -2), (True, -2, 2),
)


@dataclass(frozen=True)
class TtaScheme:
    views: tuple[tuple[bool, int, int], ...]
    weights: tuple[float, ...]     # of each view's softmax (renormalized over the first N)
    fill: str                      # the shifted border: "constant" (zeros) or "reflect"


TTA_SCHEMES = {
    # levels 1-4: 2-px shifts with zero fill (the training crop's), equal weights
    "shift2": TtaScheme(TTA_VIEWS, (1.0,) * len(TTA_VIEWS), "constant"),
    # airbench94's: identity and mirror 1/4 each; 1-px shifts down-right and up-left, each plain
    # and mirrored, 1/8 each, reflect fill (bench/tta_views.py compares the two on the fast recipe)
    "shift1": TtaScheme(((False, 0, 0), (True, 0, 0), (False, 1, 1), (True, -1, 1), (False, -1, -1),
                         (True, 1, -1)), (2.0, 2.0, 1.0, 1.0, 1.0, 1.0), "reflect"),
}


def check_tta(count: int, scheme: str = "shift2", flag: str = "--tta") -> int:
    """The views to evaluate for `flag count` with a model of test-time scheme `scheme` (0 and 1: the
    identity alone); a one-line UserError for more views than the scheme has."""
    if scheme not in TTA_SCHEMES:
        raise UserError(f"{flag} {count}: test-time views {scheme!r} are unknown to this version "
                        f"(known: {', '.join(TTA_SCHEMES)}); upgrade cifar10-levels")
    views = len(TTA_SCHEMES[scheme].views)
    if not 0 <= count <= views:
        raise UserError(f"{flag} {count}: this model's test-time views ({scheme}) are 1 to {views} "
                        "(0 or 1: plain only)")
    return max(count, 1)


def fewest_views(schemes: Iterable[str]) -> str:
    """Of several models' schemes, the one with the fewest views: it bounds --tta for them all."""
    return min(schemes, key=lambda name: (len(TTA_SCHEMES[name].views) if name in TTA_SCHEMES else -1,
                                          name))


def tta_scheme(name: str, count: int) -> TtaScheme:
    """The first `count` views of scheme `name` (as check_tta counts them), weights summing to 1."""
    count = check_tta(count, name)
    scheme = TTA_SCHEMES[name]
    weights = scheme.weights[:count]
    return TtaScheme(scheme.views[:count], tuple(w / sum(weights) for w in weights), scheme.fill)


def tta_views(images: torch.Tensor, count: int, scheme: str = "shift2") -> list[torch.Tensor]:
    """The first `count` deterministic views of a uint8 batch (identity first)."""
    chosen = tta_scheme(scheme, count)
    views = []
    n = images.shape[0]
    for flip, dx, dy in chosen.views:
        if not (flip or dx or dy):
            views.append(images)
            continue
        full = (lambda value: torch.full((n,), value, device=images.device))
        # a view mirrors first, then shifts: the same as shifting by -dx, then mirroring
        views.append(translate(images, full(-dx if flip else dx), full(dy), max(abs(dx), abs(dy), 1),
                               full(flip), chosen.fill))
    return views
