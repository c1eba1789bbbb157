"""doctor: does `podium doctor`'s duplicate search scale to 100,000 images?

Synthetic data (no real set here has 100,000 images): 64x64 RGB scenes, each a smooth random
background with two to four random discs; one image in a hundred is followed by a planted near copy
(noise and a brightness shift).
  hash     pHash + thumbnail + pixel digest of every image, in memory: images/s
  search   podium.dedup.near_pairs (bucketed: multi-index hashing) on all the hashes at the
           default distance; the planted copies it finds. Against the baseline, all_pairs
           (every pair compared, numpy, in blocks) on a subset, alternated (bucketed, all pairs,
           all pairs, bucketed, ...): the median of the per-round time ratios all / bucketed,
           and the two answers checked identical
  end to end  `podium doctor` (image-folder: PNG images and masks written to a temp folder)
           cold, then again with every file cached: seconds and images/s
The headline: the bucketed search's seconds on all the hashes, and its speed-up on the subset.
"""

from __future__ import annotations

import contextlib
import io

import _common as bench
import cv2
import numpy as np

from podium import dedup
from podium.config import compose_config

SIZE = 64
PLANT_EVERY = 100


def scenes(count: int, seed: int = 0):
    """`count` (id, image, mask) scenes; after every PLANT_EVERY-th, a near copy ('<id>_copy')."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    made = 0
    while made < count:
        cells = int(rng.integers(3, 9))  # backgrounds of coarser and finer blotches
        low = rng.normal(0, 40, (cells, cells, 3)).astype(np.float32)
        background = cv2.resize(low, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        image = rng.uniform(60, 190, 3).astype(np.float32) + background
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for _ in range(int(rng.integers(2, 5))):
            cy, cx, r = rng.integers(6, SIZE - 6, 2).tolist() + [int(rng.integers(4, 18))]
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image[inside] = rng.uniform(0, 255, 3)
            mask[inside] = 255
        image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
        name = f"s{made:06d}"
        yield name, image, mask
        made += 1
        if made % PLANT_EVERY == 0 and made < count:
            copy = image.astype(np.float32) + 12 + rng.normal(0, 4, image.shape)
            yield f"{name}_copy", np.clip(copy, 0, 255).astype(np.uint8), mask
            made += 1


def hash_all(count: int) -> tuple[np.ndarray, list[str], float]:
    """The pHashes of `count` scenes (with everything the doctor computes per image), their ids,
    and images/s of that work (generation excluded)."""
    hashes, ids, spent = [], [], 0.0
    for name, image, _ in scenes(count):
        elapsed = bench.timer()
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        hashes.append(dedup.perceptual_hash(grey))
        dedup.thumbnail(grey)
        dedup.pixel_digest(image)
        spent += elapsed()
        ids.append(name)
    return np.array(hashes, np.uint64), ids, count / spent


def search(hashes: np.ndarray, ids: list[str], subset: int, rounds: int, distance: int) -> dict:
    """Bucketed search on all hashes (time, planted copies found); bucketed against all pairs
    on the first `subset` hashes, alternated, with identical answers."""
    elapsed = bench.timer()
    pairs = dedup.near_pairs(hashes, distance)
    full_s = elapsed()
    found = {(ids[i], ids[j]) for i, j, _ in pairs}
    planted = [(i.removesuffix("_copy"), i) for i in ids if i.endswith("_copy")]
    part = hashes[:subset]
    answers = {}

    def timed(name: str, function):
        def run() -> float:
            elapsed = bench.timer()
            answers[name] = function(part, distance)
            return elapsed()

        return run

    times = bench.interleaved(
        timed("bucketed", dedup.near_pairs), timed("all", dedup.all_pairs), rounds
    )
    if not np.array_equal(answers["bucketed"], answers["all"]):
        raise SystemExit("bucketed and all-pairs answers differ")
    ratios = [all_s / bucketed_s for bucketed_s, all_s in times]
    return {
        "full_s": full_s,
        "pairs": len(pairs),
        "bands": dedup.choose_bands(len(hashes), distance),
        "planted": len(planted),
        "planted_found": sum(p in found for p in planted),
        "bucketed_s": bench.median([b for b, _ in times]),
        "all_s": bench.median([a for _, a in times]),
        "ratio": bench.median(ratios),
        "spread": bench.spread(ratios),
        "subset_pairs": len(answers["all"]),
    }


def write_folder(folder, count: int) -> None:
    """`count` scenes as an image-folder competition (PNG images and masks)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for name, image, mask in scenes(count, seed=1):
        cv2.imwrite(str(folder / "images" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)


def end_to_end(folder, out) -> tuple[float, str]:
    """Seconds of one `podium doctor` run on the folder, and its duplicates line."""
    printed = io.StringIO()
    elapsed = bench.timer()
    with contextlib.redirect_stdout(printed):
        bench.podium_command(
            [
                "doctor",
                "competition=image-folder",
                f"competition.data_dir={folder}",
                f"doctor.out_dir={out}",
            ]
        )
    seconds = elapsed()
    return seconds, next(line for line in printed.getvalue().splitlines() if "duplicates:" in line)


def main() -> None:
    args = bench.parse_args(__doc__.splitlines()[0])
    count = bench.size(args, 100_000, 20_000, 2_000)
    subset = bench.size(args, 20_000, 5_000, 1_000)
    files = bench.size(args, 100_000, 5_000, 200)
    rounds = bench.size(args, 3, 3, 2)
    distance = int(compose_config("tools").doctor.hash_distance)
    hashes, ids, hash_rate = hash_all(count)
    found = search(hashes, ids, subset, rounds, distance)
    with bench.temp_dir("doctor") as tmp:
        elapsed = bench.timer()
        write_folder(tmp / "data", files)
        written_s = elapsed()
        cold_s, cold_line = end_to_end(tmp / "data", tmp / "out")
        cached_s, _ = end_to_end(tmp / "data", tmp / "out")
    projected = found["all_s"] * (count / subset) ** 2
    body = [
        f"Synthetic {SIZE}x{SIZE} scenes, a planted near copy after every {PLANT_EVERY}th; "
        f"hash distance {distance} bits (the default).",
        "",
        bench.table(
            ["step", "images", "seconds", "images/s", "note"],
            [
                [
                    "hash (pHash + thumbnail + digest)",
                    count,
                    count / hash_rate,
                    hash_rate,
                    "in memory",
                ],
                [
                    "search, bucketed",
                    count,
                    found["full_s"],
                    count / found["full_s"],
                    f"{found['bands']} bands; {found['pairs']} pairs; planted copies found "
                    f"{found['planted_found']}/{found['planted']}",
                ],
                [
                    "search, all pairs (projected)",
                    count,
                    projected,
                    count / projected,
                    f"the subset's median time x ({count}/{subset})^2",
                ],
                [
                    "`podium doctor`, cold",
                    files,
                    cold_s,
                    files / cold_s,
                    f"{cold_line} (writing the files took {written_s:.0f} s)",
                ],
                ["`podium doctor`, cached", files, cached_s, files / cached_s, "every file cached"],
            ],
        ),
        "",
        f"Bucketed against all pairs on the first {subset} hashes, alternated {rounds} rounds: "
        f"{found['bucketed_s']:.3f} s against {found['all_s']:.3f} s, median ratio "
        f"{found['ratio']:.1f} (rounds {found['spread']}); both found the same "
        f"{found['subset_pairs']} pairs.",
    ]
    headline = (
        f"doctor search {count} in {found['full_s']:.1f} s; all-pairs/bucketed {found['ratio']:.1f}"
    )
    bench.record(args, "doctor", headline, "\n".join(body), "cpu")


if __name__ == "__main__":
    main()
