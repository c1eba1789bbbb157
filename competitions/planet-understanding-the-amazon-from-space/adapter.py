"""Planet: Understanding the Amazon from Space: multi-label tags per satellite chip.

Kaggle layout (README.md gives the evidence):

    train_v2.csv (image_name,tags)   train-jpg/<image_name>.jpg
    sample_submission_v2.csv (image_name,tags)
    test-jpg/test_N.jpg   test-jpg-additional/file_N.jpg

With `competition.kaggle=null`, `prepare()` generates the same layout with small synthetic chips
whose tags are what is drawn on them (one weather tag; a coloured patch per land tag), so a model
can learn them, plus solution/solution.csv for `podium score`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

import podium
from podium.classify.labels import ClassificationCompetition
from podium.competition import Sample

WEATHER = ("clear", "haze", "partly_cloudy", "cloudy")


class Planet(ClassificationCompetition):
    def train_samples(self) -> list[Sample]:
        rows = podium.read_csv_rows(self.data_dir / "train_v2.csv", ["tags"], key="image_name")
        return [
            Sample(
                id=row["image_name"],
                image=self.data_dir / "train-jpg" / f"{row['image_name']}.jpg",
                mask=tuple(row["tags"].split()),
                stratify=next((t for t in row["tags"].split() if t in WEATHER), None),
                origin=row.origin,
            )
            for row in rows
        ]

    def test_samples(self) -> list[Sample]:
        rows = podium.read_csv_rows(self.sample_submission_path(), key="image_name")
        return [
            Sample(
                id=row["image_name"], image=self._test_image(row["image_name"]), origin=row.origin
            )
            for row in rows
        ]

    def _test_image(self, name: str) -> Path:
        # The second batch of test chips (file_*) ships as test-jpg-additional (README.md).
        folder = "test-jpg-additional" if name.startswith("file_") else "test-jpg"
        return self.data_dir / folder / f"{name}.jpg"

    def solution_path(self) -> Path:
        return self.data_dir / "solution" / "solution.csv"

    def prepare(self) -> None:
        opts = self.cfg.options
        rng = np.random.default_rng(int(opts.seed))
        land = [c for c in self.classes if c not in WEATHER]
        # One colour per land tag, far apart in hue, so that each tag is visible on its own.
        hues = np.linspace(0, 180, len(land), endpoint=False).astype(np.uint8)
        colours = {
            tag: cv2.cvtColor(np.array([[[h, 230, 230]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
            for tag, h in zip(land, hues, strict=True)
        }
        rows: dict[str, list[tuple[str, str]]] = {}
        for split, count in (("train", int(opts.n_train)), ("test", int(opts.n_test))):
            rows[split] = []
            for index in range(count):
                image, tags = _chip(rng, int(opts.size), land, colours)
                name = f"{split}_{index}"
                path = self.data_dir / f"{split}-jpg" / f"{name}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(
                    str(path),
                    cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95],
                )
                rows[split].append((name, " ".join(t for t in self.classes if t in tags)))
        self._write_csv("train_v2.csv", rows["train"])
        self._write_csv("sample_submission_v2.csv", [(n, "primary clear") for n, _ in rows["test"]])
        self._write_csv("solution/solution.csv", rows["test"])

    def _write_csv(self, name: str, rows: list[tuple[str, str]]) -> None:
        with podium.atomic_write(self.data_dir / name, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_name", "tags"])
            writer.writerows(rows)


def _chip(
    rng: np.random.Generator, size: int, land: list[str], colours: dict
) -> tuple[np.ndarray, set]:
    """A green-brown chip with one weather tag (cloudy chips carry no land tag, as on Kaggle)
    and the land tags drawn as patches of their colour."""
    base = np.array([40, 90, 45], np.float32) + rng.normal(0, 6, (size, size, 3))
    weather = str(rng.choice(WEATHER, p=[0.6, 0.15, 0.15, 0.1]))
    tags = {weather}
    if weather != "cloudy":
        for tag in land:
            if rng.random() < (0.6 if tag == "primary" else 0.15):
                tags.add(tag)
                x, y = (int(v) for v in rng.integers(0, size - size // 4, 2))
                side = int(rng.integers(size // 8, size // 4))
                base[y : y + side, x : x + side] = colours[tag]
    if weather == "haze":
        base = 0.55 * base + 0.45 * 200
    elif weather == "partly_cloudy":
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        cloud = np.zeros((size, size), np.uint8)
        cv2.circle(cloud, (cx, cy), size // 4, 1, -1)
        base[cloud > 0] = 245
    elif weather == "cloudy":
        base = 0.2 * base + 0.8 * 235
    return np.clip(base, 0, 255).astype(np.uint8), tags
