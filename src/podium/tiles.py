"""Tiled prediction: images larger than a tile are predicted as overlapping tiles, merged with a
smooth weight window and cropped exactly to the image (`podium predict tile_size=N`; the rest of
prediction is podium.infer, which re-exports these)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from podium.models import split_output

__all__ = ["tile_starts", "tile_window", "predict_tiled"]

# A batch -> probabilities, or (probabilities, P(mask not empty) per image): podium.infer.Forward
Forward = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of `tile`-long windows covering [0, length): spread evenly, consecutive windows
    overlapping by at least `overlap`, the first at 0 and the last flush with the end."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_window(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A smooth HxW weight: a Gaussian (sigma = 1/8 of the side, as nnU-Net) floored at 1e-3 of
    its peak so every pixel keeps a weight. Tile centres, which saw the most context, count
    most, and tile edges fade out instead of leaving seams."""

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        return torch.exp(-0.5 * (x / max(n / 8, 1e-6)) ** 2)

    window = axis(height)[:, None] * axis(width)[None, :]
    return (window / window.max()).clamp_(min=1e-3)


def predict_tiled(
    forward: Forward, image: torch.Tensor, tile_size: int, overlap: float, batch_size: int
) -> torch.Tensor:
    """Probabilities of one large CxHxW image, tile by tile: tiles of `tile_size` (smaller
    sides stay whole) overlapping by `overlap` of a tile run through `forward` in batches, and
    are merged as a window-weighted mean. The result is exactly HxW. A forward that also gives
    P(not empty) per tile returns the pair, the image's value being the largest tile's: the
    image holds something if any tile does."""
    h, w = image.shape[-2:]
    th, tw = min(tile_size, h), min(tile_size, w)
    step_overlap = int(round(tile_size * overlap))
    corners = [
        (y, x) for y in tile_starts(h, th, step_overlap) for x in tile_starts(w, tw, step_overlap)
    ]
    merged = weight_sum = window = nonempty = None
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        out = forward(torch.stack([image[:, y : y + th, x : x + tw] for y, x in chunk]))
        probs, gate = split_output(out)
        if gate is not None:
            top = gate.max()
            nonempty = top if nonempty is None else torch.maximum(nonempty, top)
        if merged is None:
            merged = probs.new_zeros((probs.shape[1], h, w), dtype=torch.float32)
            weight_sum = probs.new_zeros((h, w), dtype=torch.float32)
            window = tile_window(th, tw, probs.device)
        for (y, x), p in zip(chunk, probs, strict=True):
            merged[:, y : y + th, x : x + tw].add_(p * window)
            weight_sum[y : y + th, x : x + tw].add_(window)
    merged = merged.div_(weight_sum)
    return merged if nonempty is None else (merged, nonempty)
