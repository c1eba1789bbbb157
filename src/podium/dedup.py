"""Near-duplicate images: a 64-bit perceptual hash, and every pair of hashes within a Hamming
distance, found through buckets instead of comparing all pairs.

The hash is pHash: the image in grey, shrunk to 32x32, its 8x8 lowest DCT frequencies, one bit
per coefficient above their median. Noise, a brightness or contrast change, JPEG re-encoding and
a shift or crop of a few pixels move few bits; unrelated images differ in about half.

The search is multi-index hashing (Norouzi et al., 2012): split the 64 bits into `b` bands; two
hashes at most `t` bits apart differ in at most `t // b` bits in some band (pigeonhole). So each
hash looks up, per band, the bucket of every band value within `t // b` bits of its own, and only
those candidates are compared in full. `b` is chosen for the fewest expected look-ups and
candidates. The result is exactly the all-pairs answer (`all_pairs`, the baseline, checks it).
"""

from __future__ import annotations

import hashlib
import itertools
import math

import cv2
import numpy as np

__all__ = [
    "HASH_BITS",
    "perceptual_hash",
    "pixel_digest",
    "hamming",
    "near_pairs",
    "all_pairs",
    "choose_bands",
    "clusters",
    "thumbnail",
    "correlations",
]

HASH_BITS = 64
_DCT_SIZE, _KEPT = 32, 8
THUMB_SIZE = 16  # side of the grey thumbnails that confirm a hash match
_CHUNK = 1 << 21  # candidate pairs compared at once: bounds memory on crowded buckets
_TABLE_BITS = 22  # bands this wide or narrower look buckets up in a table (32 MiB at most)
_BYTE_BITS = np.array([bin(v).count("1") for v in range(256)], np.uint8)


def perceptual_hash(image: np.ndarray) -> int:
    """The 64-bit pHash of an HxW or HxWxC uint8 image (C = 3 is RGB)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    small = cv2.resize(
        grey.astype(np.float32), (_DCT_SIZE, _DCT_SIZE), interpolation=cv2.INTER_AREA
    )
    low = cv2.dct(small)[:_KEPT, :_KEPT]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A THUMB_SIZE x THUMB_SIZE uint8 grey thumbnail (area-averaged)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    size = (THUMB_SIZE, THUMB_SIZE)
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.uint8)


def correlations(thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Pearson correlation of the thumbnails (N x H x W, any numbers) of each pair (i, j): 1 for
    the same picture under noise, a brightness or contrast change or JPEG; 0 where one is flat."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    flat -= flat.mean(1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    unit = np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)
    return np.einsum("pk,pk->p", unit[pairs[:, 0]], unit[pairs[:, 1]])


def pixel_digest(image: np.ndarray) -> str:
    """A digest of the decoded pixels (and shape): equal digests are exact duplicates."""
    digest = hashlib.blake2b(repr(image.shape).encode(), digest_size=8)
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values).astype(np.int64)
    as_bytes = values.astype(np.uint64).view(np.uint8).reshape(*values.shape, 8)
    return _BYTE_BITS[as_bytes].sum(-1, dtype=np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits differing between uint64 hashes, elementwise."""
    return popcount(np.bitwise_xor(a, b))


def _probe_count(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(min(radius, width) + 1))


def _band_widths(bands: int) -> list[int]:
    return [HASH_BITS // bands + (1 if k < HASH_BITS % bands else 0) for k in range(bands)]


def choose_bands(count: int, max_distance: int) -> int:
    """The band count with the least expected work for `count` hashes: look-ups (hashes x bands
    x probes) plus candidates (the same, times the mean bucket size, as if bits were random)."""

    def cost(bands: int) -> float:
        width = HASH_BITS // bands
        probes = bands * _probe_count(width, max_distance // bands)
        return count * probes * (1.0 + count / 2.0**width)

    return min(range(2, 17), key=cost)


def near_pairs(hashes: np.ndarray, max_distance: int, bands: int | None = None) -> np.ndarray:
    """Every pair (i, j, distance), i < j, of `hashes` (uint64) at most `max_distance` bits
    apart, sorted; an int64 array of shape (P, 3)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    count = len(hashes)
    bands = bands or choose_bands(count, max_distance)
    found = [np.empty(0, np.int64)]
    shift = 0
    for width in _band_widths(bands):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        shift += width
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        bucket_of = _bucket_index(sorted_keys, width)
        # Equal band values: each member of a bucket against the members after it.
        _, ends = bucket_of(sorted_keys)
        found += _compare_ranges(hashes, order, order, np.arange(1, count + 1), ends, max_distance)
        # Values `flips` apart: probed only from the key with the top bit of `flips` clear, so
        # each pair is compared once.
        clear = [
            np.flatnonzero((keys >> np.uint64(bit)) & np.uint64(1) == 0) for bit in range(width)
        ]
        for flips in _flip_masks(width, max_distance // bands):
            probing = clear[flips.bit_length() - 1]
            lo, hi = bucket_of(keys[probing] ^ np.uint64(flips))
            found += _compare_ranges(hashes, order, probing, lo, hi, max_distance)
    keys = np.unique(np.concatenate(found))  # a pair close in several bands is found in each
    first, second = keys // max(count, 1), keys % max(count, 1)
    distances = hamming(hashes[first], hashes[second])
    return np.stack([first, second, distances], axis=1) if len(keys) else np.empty((0, 3), np.int64)


def _bucket_index(sorted_keys: np.ndarray, width: int):
    """probe keys -> (lo, hi): where each key's bucket lies in `sorted_keys`. A table of every
    band value's start when it fits (one indexing per probe), else a binary search."""
    if width <= _TABLE_BITS:
        starts = np.searchsorted(sorted_keys, np.arange((1 << width) + 1, dtype=np.uint64))
        return lambda probes: (starts[probes], starts[probes + np.uint64(1)])
    return lambda probes: (
        np.searchsorted(sorted_keys, probes, "left"),
        np.searchsorted(sorted_keys, probes, "right"),
    )


def _flip_masks(width: int, radius: int):
    """Every nonzero `width`-bit value with at most `radius` bits set."""
    for k in range(1, min(radius, width) + 1):
        for positions in itertools.combinations(range(width), k):
            yield sum(1 << p for p in positions)


def _compare_ranges(hashes, order, probing, lo, hi, max_distance: int) -> list[np.ndarray]:
    """Pair keys (min * n + max) of each hash probing[k] with the bucket members
    order[lo[k]:hi[k]] that lie within `max_distance`; in chunks of about _CHUNK candidates."""
    count = len(hashes)
    hit = np.flatnonzero(hi > lo)  # most probes of a wide band find an empty bucket
    probing, lo, sizes = probing[hit], lo[hit], (hi - lo)[hit]
    ends = np.cumsum(sizes)
    if not len(ends):
        return []
    cuts = np.searchsorted(ends, np.arange(_CHUNK, ends[-1], _CHUNK), "left") + 1
    out = []
    for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(hit)], strict=True):
        chunk = sizes[start:stop]
        total = int(chunk.sum())
        if total == 0:
            continue
        left = np.repeat(probing[start:stop], chunk)
        within = np.arange(total) - np.repeat(np.cumsum(chunk) - chunk, chunk)
        right = order[np.repeat(lo[start:stop], chunk) + within]
        close = hamming(hashes[left], hashes[right]) <= max_distance
        left, right = left[close], right[close]
        out.append(np.minimum(left, right) * count + np.maximum(left, right))
    return out


def all_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """The same answer as `near_pairs`, by comparing every pair (the baseline): O(n^2)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    rows = max(1, _CHUNK // max(len(hashes), 1))
    found = []
    for start in range(0, len(hashes), rows):
        block = hamming(hashes[start : start + rows, None], hashes[None, :])
        first, second = np.nonzero(block <= max_distance)
        first += start
        keep = first < second
        found.append(
            np.stack([first[keep], second[keep], block[first[keep] - start, second[keep]]], 1)
        )
    return np.concatenate(found).astype(np.int64) if found else np.empty((0, 3), np.int64)


def clusters(count: int, pairs: np.ndarray) -> np.ndarray:
    """A cluster label per item: the connected components of the pair graph (a chain of
    near-duplicates is one cluster). Items in no pair are clusters of one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix(
        (np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count)
    )
    return connected_components(graph, directed=False)[1]
