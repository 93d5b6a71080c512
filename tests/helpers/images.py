"""What a user sees in a plot file: a PNG of a readable size that shows something."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def assert_picture(path: Path, min_size: tuple[int, int], max_size: tuple[int, int] = (2000, 1500),
                   min_colours: int = 50, min_coloured_share: float = 0.003) -> None:
    """`path` opens as a PNG, width x height within the bounds, with more than `min_colours`
    distinct colours and at least `min_coloured_share` of its pixels in colour (not white, grey or
    black): axes and labels alone, as an empty plot draws them, are grey."""
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG", (path.name, image.format)
        width, height = image.size
        assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], \
            f"{path.name} is {width}x{height}"
        pixels = image.convert("RGB")
    colours = pixels.getcolors(maxcolors=width * height)
    assert len(colours) > min_colours, f"{path.name} has {len(colours)} colours: it looks empty"
    rgb = np.asarray(pixels, dtype=np.int16)
    coloured = float(((rgb.max(2) - rgb.min(2)) > 60).mean())
    assert coloured >= min_coloured_share, f"{path.name}: {coloured:.2%} of its pixels in colour"
