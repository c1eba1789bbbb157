"""Mask conventions: what the values of a mask file mean, stated by each competition and checked on
every file read.

A competition says how its mask files encode the target with `mask_encoding` in its
competition.yaml (one of `MASK_ENCODINGS`; `mask_colours` for `colour_map`). A mask whose values
do not fit the statement is a PodiumError naming the file, the values seen and the setting that
would fit, never a silently empty or wrong mask: 0/1 masks thresholded at 127 read as empty, and
red-on-black masks read as grey lose most of their foreground.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from podium.io import PodiumError, read_image_unchanged

__all__ = [
    "MASK_ENCODINGS",
    "check_mask_convention",
    "mask_from_values",
    "read_mask_file",
    "read_mask_png",
]

MASK_ENCODINGS = {
    "binary": "0/1 or 0/255 in each file (lossy JPEG masks near 0 and 255 too)",
    "binary_01": "0 and 1 only",
    "binary_255": "0 and 255 only (lossy JPEG masks near 0 and 255 too)",
    "nonzero": "any non-zero value, or any non-black colour, is foreground",
    "class_ids": "grey values are class ids 0..K-1",
    "colour_map": "RGB colours, class k's colour being mask_colours[k]",
}
_BINARY = ("binary", "binary_01", "binary_255")
_SHOWN = 6  # distinct values named in an error


def check_mask_convention(
    encoding: str, colours: Sequence | None, num_classes: int, where: str
) -> list[tuple[int, int, int]] | None:
    """Check a competition's statement (`where` names it); returns the colours of `colour_map`
    as (R, G, B) tuples, class k's at index k, else None."""
    if encoding not in MASK_ENCODINGS:
        raise PodiumError(
            f"{where}: unknown mask_encoding '{encoding}' (known: {', '.join(MASK_ENCODINGS)})"
        )
    if encoding != "colour_map":
        if colours:
            raise PodiumError(f"{where}: mask_colours is set but mask_encoding is {encoding}")
        return None
    parsed = []
    for colour in colours or []:
        values = list(colour) if isinstance(colour, Sequence) else []
        if len(values) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in values):
            raise PodiumError(f"{where}: mask_colours entry {colour!r} is not [R, G, B] in 0..255")
        parsed.append(tuple(values))
    if len(parsed) != num_classes or len(set(parsed)) != len(parsed):
        raise PodiumError(
            f"{where}: mask_encoding colour_map needs mask_colours, {num_classes} distinct "
            f"[R, G, B] colours (class k's at position k; background first), got {len(parsed)}"
        )
    return parsed


def read_mask_file(
    path: str | os.PathLike,
    encoding: str = "binary",
    colours: Sequence[tuple[int, int, int]] | None = None,
    num_classes: int = 2,
) -> np.ndarray:
    """A mask file as HxW uint8: {0,1} for the binary encodings and `nonzero`, class ids for
    `class_ids` and `colour_map`. Values that do not fit `encoding` are a PodiumError."""
    return mask_from_values(read_image_unchanged(path), encoding, path, colours, num_classes)


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """A single-channel binary mask stored as {0,1} or {0,255}, as HxW uint8 in {0,1}."""
    return read_mask_file(path, "binary")


def mask_from_values(
    mask: np.ndarray,
    encoding: str,
    source: object,
    colours: Sequence[tuple[int, int, int]] | None = None,
    num_classes: int = 2,
) -> np.ndarray:
    """Interpret a mask's stored values (HxW grey, or HxWxC RGB(A)) by `encoding`; `source`
    names the mask in errors."""
    if mask.ndim == 3:
        rgb = mask[..., :3]  # alpha is not a label
        if encoding == "colour_map":
            return _map_colours(rgb, colours, source)
        if encoding == "nonzero":
            return rgb.any(axis=2).astype(np.uint8)
        if not (rgb == rgb[..., :1]).all():
            raise PodiumError(
                f"{source}: mask has colours (e.g. RGB {_a_colour(rgb)}) but mask_encoding is "
                f"{encoding}; set competition.mask_encoding=nonzero (any non-black pixel is "
                "foreground) or colour_map with competition.mask_colours"
            )
        mask = rgb[..., 0]
    if encoding == "colour_map":
        return _map_colours(np.repeat(mask[..., None], 3, axis=2), colours, source)
    if encoding == "nonzero":
        return (mask > 0).astype(np.uint8)
    if encoding == "class_ids":
        if int(mask.max()) >= num_classes:
            raise PodiumError(
                f"{source}: mask values {_shown(mask)} are not class ids 0..{num_classes - 1} "
                f"(mask_encoding=class_ids, {num_classes} classes)"
            )
        return mask.astype(np.uint8)
    return _binary(mask, encoding, source)


def _binary(mask: np.ndarray, encoding: str, source: object) -> np.ndarray:
    values = set(_distinct(mask).tolist())
    top = int(np.iinfo(mask.dtype).max) if mask.dtype.kind == "u" else 255
    if encoding != "binary_255" and values <= {0, 1}:
        return mask.astype(np.uint8)
    if encoding != "binary_01":
        if values <= {0, top}:
            return (mask > 0).astype(np.uint8)
        # Lossy (JPEG) masks carry values near 0 and near the top: accept them only when the
        # values are clearly two clusters and the high one is there.
        low, high = mask < top // 8, mask > top - top // 8
        if (low | high).mean() > 0.99 and high.any():
            return (mask > top // 2).astype(np.uint8)
    if values <= {0, 1}:
        hint = "these are 0/1 masks: set competition.mask_encoding=binary_01 or binary"
    elif values <= {0, top}:
        hint = f"these are 0/{top} masks: set competition.mask_encoding=binary_255 or binary"
    else:
        hint = "class ids need mask_encoding=class_ids; any non-zero value as foreground: nonzero"
    raise PodiumError(
        f"{source}: mask values {_shown(mask)} do not fit mask_encoding={encoding} "
        f"[{MASK_ENCODINGS[encoding]}]; {hint}"
    )


def _map_colours(rgb: np.ndarray, colours, source: object) -> np.ndarray:
    """Class ids of an HxWx3 RGB mask by colour; a colour outside the map is an error."""
    if rgb.dtype != np.uint8:
        raise PodiumError(f"{source}: a colour-map mask must be 8-bit, got {rgb.dtype}")
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8)
    packed |= rgb[..., 2]
    found, inverse = np.unique(packed, return_inverse=True)
    lookup = {(r << 16) | (g << 8) | b: k for k, (r, g, b) in enumerate(colours or [])}
    unknown = [int(v) for v in found if int(v) not in lookup]
    if unknown:
        shown = ", ".join(str(_unpack(v)) for v in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise PodiumError(
            f"{source}: mask colours {shown}{more} are not in competition.mask_colours "
            f"({', '.join(str(tuple(c)) for c in colours or [])})"
        )
    classes = np.array([lookup[int(v)] for v in found], dtype=np.uint8)
    return classes[inverse.reshape(packed.shape)]


def _distinct(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == np.uint8:  # a histogram: far faster than sorting a large mask
        return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return np.unique(mask)


def _shown(mask: np.ndarray) -> str:
    values = _distinct(mask)
    shown = ", ".join(str(v) for v in values[:_SHOWN].tolist())
    return shown + (f"... ({len(values)} distinct)" if len(values) > _SHOWN else "")


def _a_colour(rgb: np.ndarray) -> tuple[int, ...]:
    differs = np.argwhere((rgb != rgb[..., :1]).any(axis=2))[0]
    return tuple(int(v) for v in rgb[differs[0], differs[1]])


def _unpack(value: int) -> tuple[int, int, int]:
    return (value >> 16) & 255, (value >> 8) & 255, value & 255
