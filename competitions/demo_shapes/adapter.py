"""demo_shapes: a generated Kaggle-style competition for trying podium end to end on a CPU.

Targets are striped shapes (circles, boxes, triangles, ellipses) on a noisy background with
clutter: flat blobs of the same colours and lines, which must NOT be segmented, and about a fifth
of the images contain no target at all. Scenes come in groups of four sharing a background, so
grouped folds matter. `podium download competition=demo_shapes` writes the Kaggle layout:

    train/images/<id>.png   train.csv (id, rle_mask)   test/images/<id>.png
    sample_submission.csv   solution/solution.csv (hidden test truth, for `podium score`)
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

import podium
from podium import Competition, Sample


class DemoShapes(Competition):
    def train_samples(self) -> list[Sample]:
        rows = podium.read_csv_rows(self.data_dir / "train.csv", key="id")
        return [
            Sample(
                id=row["id"],
                image=self.data_dir / "train" / "images" / f"{row['id']}.png",
                mask=row["rle_mask"],
                group=row["id"].split("_")[0],  # the scene: four images share one background
                stratify=bool(row["rle_mask"]),
                origin=row.origin,
            )
            for row in rows
        ]

    def test_samples(self) -> list[Sample]:
        rows = podium.read_csv_rows(self.data_dir / "sample_submission.csv", key="id")
        return [
            Sample(
                id=r["id"],
                image=self.data_dir / "test" / "images" / f"{r['id']}.png",
                origin=r.origin,
            )
            for r in rows
        ]

    def solution_path(self) -> Path:
        return self.data_dir / "solution" / "solution.csv"

    def prepare(self) -> None:
        opts = self.cfg.options
        rng = np.random.default_rng(int(opts.seed))
        splits = {"train": int(opts.n_train), "test": int(opts.n_test)}
        rows: dict[str, list[tuple[str, str]]] = {}
        for split, count in splits.items():
            rows[split] = []
            for index in range(count):
                if index % 4 == 0:
                    background = _background(rng, int(opts.size))
                image, mask = _scene(rng, background)
                image_id = f"{split[:2]}{index // 4:04d}_{index % 4}"
                path = self.data_dir / split / "images" / f"{image_id}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                rows[split].append((image_id, self.encode_mask(mask)))
        self._write_csv("train.csv", rows["train"])
        self._write_csv("sample_submission.csv", [(i, "") for i, _ in rows["test"]])
        self._write_csv("solution/solution.csv", rows["test"])

    def _write_csv(self, name: str, rows: list[tuple[str, str]]) -> None:
        with podium.atomic_write(self.data_dir / name, newline="") as f:
            writer = csv.writer(f)
            writer.writerow([self.submission.id_column, self.submission.mask_column])
            writer.writerows(rows)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency coloured noise: a smooth, uneven backdrop shared by a group of scenes."""
    low = rng.normal(0.0, 28.0, (5, 5, 3)).astype(np.float32)
    smooth = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    return rng.uniform(70, 180, 3).astype(np.float32) + smooth


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cx, cy = (int(v) for v in rng.integers(12, size - 12, 2))
    r = int(rng.integers(8, 26))
    kind = rng.integers(4)
    if kind == 0:
        cv2.circle(mask, (cx, cy), r, 1, -1)
    elif kind == 1:
        cv2.rectangle(mask, (cx - r, cy - r // 2 - 2), (cx + r, cy + r // 2 + 2), 1, -1)
    elif kind == 2:
        angle = rng.uniform(0, 2 * np.pi)
        pts = [
            (cx + r * np.cos(angle + k * 2.1), cy + r * np.sin(angle + k * 2.1)) for k in range(3)
        ]
        cv2.fillPoly(mask, [np.array(pts, np.int32)], 1)
    else:
        axes = (r, max(4, r // 2))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def _scene(rng: np.random.Generator, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = background.shape[0]
    image = background + rng.normal(0.0, 7.0, background.shape).astype(np.float32)
    colour = lambda: rng.uniform(40, 215, 3).astype(np.float32)  # noqa: E731
    # Clutter that looks like targets in colour and size but has no stripes.
    for _ in range(int(rng.integers(1, 4))):
        blob = _shape_mask(rng, size)
        image[blob] = colour() + rng.normal(0.0, 4.0, (int(blob.sum()), 3))
    for _ in range(int(rng.integers(1, 5))):
        p1, p2 = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
        cv2.line(image, p1, p2, tuple(float(c) for c in colour()), int(rng.integers(1, 3)))
    # Targets: striped shapes; about one image in five has none.
    mask = np.zeros((size, size), bool)
    n_targets = 0 if rng.random() < 0.2 else int(rng.integers(1, 4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(n_targets):
        shape = _shape_mask(rng, size)
        theta, period = rng.uniform(0, np.pi), rng.uniform(4.0, 7.0)
        stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        image[shape] = colour() + 45.0 * stripes[shape][:, None]
        mask |= shape
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8)
