"""rle: podium.rle encode/decode throughput on 1918x1280 masks against the classic Kaggle-kernel
numpy code and pytorch-toolbelt's `pytorch_toolbelt.utils.rle`.

Masks: the 16 original Carvana mask GIFs in ../shared/data/kaggle_masks when present, else 16
generated car-like masks of the same size. Each peer is compared in its own pixel order (the
kernel code as Carvana used it, row-major; toolbelt's is column-major), and every string is
checked to be identical to podium's. Per round every implementation encodes (or decodes) all
masks, in rotating order; the headline is the worst of the four medians of per-round
throughput ratios podium/peer (goal >= 1.0 against both). The cProfile of podium's side shows
where its time goes.
"""

from __future__ import annotations

import cProfile
import importlib.util
import io
import pstats

import _common as bench
import cv2
import numpy as np

from podium.masks import read_mask_png
from podium.rle import rle_decode, rle_encode, rle_parse

CARVANA = bench.SHARED_DATA / "kaggle_masks" / "carvana-image-masking-challenge"
SHAPE = (1280, 1918)


# -- the peers --------------------------------------------------------------------------------
def kernel_encode(img: np.ndarray) -> str:
    """The Carvana kernel's `rle_encode` (row-major, 1-based), as copied into countless
    notebooks."""
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def kernel_decode(mask_rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The kernels' `rle_decode` / `rle2mask` (row-major, 1-based)."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape)


def toolbelt_rle():
    """pytorch_toolbelt/utils/rle.py loaded on its own (the package __init__ imports torch and
    cv2 builds we do not need); None when it is not installed."""
    spec = importlib.util.find_spec("pytorch_toolbelt")
    if spec is None or spec.origin is None:
        return None
    from pathlib import Path

    path = Path(spec.origin).parent / "utils" / "rle.py"
    module_spec = importlib.util.spec_from_file_location("toolbelt_rle", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def candidate_decode(rle: str, shape: tuple[int, int], order: str) -> np.ndarray:
    """The fix proposed for podium.rle.rle_decode (not podium's code): the same strict
    `rle_parse`, then the mask filled by np.repeat over the alternating gap/run lengths (one
    memset per run) instead of a cumulative sum over every pixel."""
    height, width = shape
    starts, lengths = rle_parse(rle, shape)
    bounds = np.empty(2 * starts.size + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2], bounds[2:-1:2] = starts, starts + lengths
    values = np.zeros(bounds.size - 1, dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, np.diff(bounds)).reshape((height, width), order=order)


# -- masks ------------------------------------------------------------------------------------
def load_masks(count: int, tiny: bool) -> tuple[list[np.ndarray], str]:
    files = sorted(CARVANA.glob("train_masks_gif_sample/*_mask.gif")) if not tiny else []
    if files:
        masks = [read_mask_png(path) for path in files[:count]]
        return masks, f"{len(masks)} original Carvana masks (../shared/data/kaggle_masks)"
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(count):
        mask = np.zeros(SHAPE, np.uint8)
        cx, cy = int(rng.integers(800, 1100)), int(rng.integers(550, 730))
        cv2.ellipse(mask, (cx, cy), (int(rng.integers(500, 700)), int(rng.integers(200, 300))),
                    0, 0, 360, 1, -1)  # fmt: skip
        cv2.rectangle(mask, (cx - 350, cy - 380), (cx + 300, cy), 1, -1)  # the cabin
        for _ in range(4):  # wheels and mirrors: a few extra blobs on the outline
            centre = (cx + int(rng.integers(-650, 650)), cy + int(rng.integers(-300, 300)))
            cv2.circle(mask, centre, int(rng.integers(30, 120)), 1, -1)
        masks.append(mask)
    return masks, f"{count} generated car-like masks (Carvana masks absent)"


def timed(function, items) -> float:
    """Items per second of `function` over all `items`."""
    elapsed = bench.timer()
    for item in items:
        function(item)
    return len(items) / elapsed()


def profile(function, items, top: int = 8) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        for item in items:
            function(item)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return "\n".join(lines[start : start + top + 1])


def main() -> None:
    args = bench.parse_args(__doc__.splitlines()[0])
    masks, source = load_masks(bench.size(args, 16, 16, 2), args.tiny)
    n_rounds = bench.size(args, 21, 7, 1)
    shape = masks[0].shape
    toolbelt = toolbelt_rle()
    strings_c = [rle_encode(m, order="C") for m in masks]
    strings_f = [rle_encode(m, order="F") for m in masks]
    # Same strings and masks as the peers, or the comparison means nothing.
    assert strings_c == [kernel_encode(m) for m in masks], "kernel encoder disagrees"
    assert all((kernel_decode(s, shape) == m).all() for s, m in zip(strings_c, masks, strict=True))
    comparisons = {
        ("encode", "Kaggle kernel (C)"): (
            lambda m: rle_encode(m, order="C"), kernel_encode, masks,
        ),
        ("decode", "Kaggle kernel (C)"): (
            lambda s: rle_decode(s, shape, order="C"), lambda s: kernel_decode(s, shape),
            strings_c,
        ),
    }  # fmt: skip
    if toolbelt is not None:
        assert strings_f == [toolbelt.rle_to_string(toolbelt.rle_encode(m)) for m in masks]
        comparisons[("encode", "pytorch-toolbelt (F)")] = (
            lambda m: rle_encode(m, order="F"),
            lambda m: toolbelt.rle_to_string(toolbelt.rle_encode(m)),
            masks,
        )
        comparisons[("decode", "pytorch-toolbelt (F)")] = (
            lambda s: rle_decode(s, shape, order="F"),
            lambda s: toolbelt.rle_decode(s, shape, np.uint8),
            strings_f,
        )
    for order, strings in (("C", strings_c), ("F", strings_f)):
        for s, m in zip(strings, masks, strict=True):
            assert (candidate_decode(s, shape, order) == m).all(), "candidate decoder is wrong"
    candidates = {
        "Kaggle kernel (C)": lambda s: candidate_decode(s, shape, "C"),
        "pytorch-toolbelt (F)": lambda s: candidate_decode(s, shape, "F"),
    }
    rows, medians, profiles, candidate_rows = [], {}, [], []
    for (operation, peer), (ours, theirs, items) in comparisons.items():
        results = bench.interleaved(
            lambda ours=ours, items=items: timed(ours, items),
            lambda theirs=theirs, items=items: timed(theirs, items),
            n_rounds,
        )
        ratios = bench.pair_ratios(results)
        medians[(operation, peer)] = bench.median(ratios)
        rows.append([operation, peer, bench.median([a for a, _ in results]),
                     bench.median([b for _, b in results]), medians[(operation, peer)],
                     bench.spread(ratios)])  # fmt: skip
        print(f"{operation} vs {peer}: {medians[(operation, peer)]:.3f}")
        if operation == "decode" and medians[(operation, peer)] < 1.0:
            fix = bench.interleaved(
                lambda peer=peer, items=items: timed(candidates[peer], items),
                lambda theirs=theirs, items=items: timed(theirs, items),
                n_rounds,
            )
            fix_ratios = bench.pair_ratios(fix)
            candidate_rows.append([operation, peer, bench.median([a for a, _ in fix]),
                                   bench.median([b for _, b in fix]), bench.median(fix_ratios),
                                   bench.spread(fix_ratios)])  # fmt: skip
        if medians[(operation, peer)] < 1.0 or not args.quick:
            profiles.append(
                f"cProfile of podium's {operation} ({peer.split(' (')[0]}'s order), 5 passes:"
                f"\n\n```\n{profile(ours, items)}\n```"
            )
    runs = [len(s.split()) // 2 for s in strings_c]
    body = [
        f"Masks: {source}, {shape[1]}x{shape[0]}, {int(np.median(runs))} runs each (median, "
        f"row-major). Throughput in masks/s, median of {n_rounds} alternated rounds.",
        "",
        bench.table(
            [
                "operation",
                "peer",
                "podium masks/s",
                "peer masks/s",
                "podium/peer (median)",
                "round ratios",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
    if candidate_rows:
        body += [
            "The proposed decoder fix (`candidate_decode` in bench/rle.py: podium's strict "
            "`rle_parse`, then np.repeat over the gap/run lengths), alternated with the same "
            "peers:",
            "",
            bench.table(
                [
                    "operation",
                    "peer",
                    "fix masks/s",
                    "peer masks/s",
                    "fix/peer (median)",
                    "round ratios",
                ],
                candidate_rows,
            ),  # fmt: skip
            "",
        ]
    body += [p + "\n" for p in profiles]
    if toolbelt is None:
        body.append("pytorch-toolbelt is not installed (make install adds it): not compared.")
    worst = min(medians.values())
    bench.record(args, "rle", f"rle ratio {worst:.3f}", "\n".join(body), args.device)


if __name__ == "__main__":
    main()
