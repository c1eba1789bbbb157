"""Run-length encoding of binary masks, the way Kaggle competitions write them.

Two conventions vary between competitions and are always explicit here:
- `order`: the pixel order of the flattened mask, "F" (column-major: top to bottom, then left to
  right; TGS Salt, Ultrasound Nerve) or "C" (row-major: left to right, then top to bottom; Carvana).
- `base`: the index of the first pixel, 1 for every Kaggle competition seen so far.

The encoder and decoder are vectorised (numpy) and the decoder is strict: runs must be pairs of
positive integers, sorted, non-overlapping and inside the image. Anything else raises RleError with
the reason; callers add the file and row.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RleError", "rle_encode", "rle_decode", "rle_runs"]


class RleError(ValueError):
    """A malformed run-length string (the message says why)."""


def rle_runs(mask: np.ndarray, order: str = "F", base: int = 1) -> np.ndarray:
    """Return the flat (start, length, start, length, ...) array of the mask's foreground runs."""
    if mask.ndim != 2:
        raise ValueError(f"rle: expected a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order=order)
    # A run starts where the padded signal steps up and ends where it steps down.
    padded = np.empty(flat.size + 2, dtype=np.int8)
    padded[0] = padded[-1] = 0
    padded[1:-1] = flat
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    runs = edges.astype(np.int64)
    runs[1::2] -= runs[::2]
    runs[::2] += base
    return runs


def rle_encode(mask: np.ndarray, order: str = "F", base: int = 1) -> str:
    """Encode a binary HxW mask as 'start length start length ...' ('' when empty)."""
    return " ".join(map(str, rle_runs(mask, order, base).tolist()))


def rle_decode(rle: str, shape: tuple[int, int], order: str = "F", base: int = 1) -> np.ndarray:
    """Decode an RLE string into an HxW uint8 mask in {0,1}; malformed input raises RleError."""
    height, width = int(shape[0]), int(shape[1])
    size = height * width
    flat = np.zeros(size, dtype=np.uint8)
    text = "" if rle is None else str(rle).strip()
    if text and text.lower() != "nan":
        tokens = text.split()
        try:
            runs = np.array([int(t) for t in tokens], dtype=np.int64)
        except ValueError:
            bad = next(t for t in tokens if not _is_int(t))
            raise RleError(f"'{bad[:20]}' is not an integer") from None
        if runs.size % 2:
            raise RleError(f"odd number of values ({runs.size}); expected start/length pairs")
        starts, lengths = runs[::2] - base, runs[1::2]
        if (starts < 0).any():
            raise RleError(f"start {int(starts[starts < 0][0]) + base} is below {base}")
        if (lengths <= 0).any():
            raise RleError(f"run length {int(lengths[lengths <= 0][0])} is not positive")
        ends = starts + lengths
        if starts.size > 1:
            if (np.diff(starts) <= 0).any():
                i = int(np.flatnonzero(np.diff(starts) <= 0)[0]) + 1
                raise RleError(
                    f"runs are not sorted (start {int(starts[i]) + base} after "
                    f"{int(starts[i - 1]) + base})"
                )
            if (starts[1:] < ends[:-1]).any():
                i = int(np.flatnonzero(starts[1:] < ends[:-1])[0]) + 1
                raise RleError(f"run at {int(starts[i]) + base} overlaps the previous run")
        if ends.size and ends[-1] > size:
            raise RleError(
                f"run ends at pixel {int(ends[-1]) - 1 + base}, past the image end "
                f"({height}x{width} = {size} pixels)"
            )
        # Mark run boundaries with +1/-1 and integrate: O(pixels), no Python loop over runs.
        delta = np.zeros(size + 1, dtype=np.int8)
        delta[starts] += 1  # starts are unique, and so are ends (sorted, non-overlapping)
        delta[ends] -= 1
        flat = np.cumsum(delta[:-1], dtype=np.int8).astype(np.uint8)
    return flat.reshape((height, width), order=order)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True
