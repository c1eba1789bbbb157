"""The adapter base class of classification competitions, and their submission files.

A classification adapter subclasses `ClassificationCompetition` and gives each training
`Sample` its labels in `mask`: a tuple of class names (multi-label: any number, none included;
multi-class: exactly one). competition.yaml says the rest:

    task: classification
    classes: [agriculture, artisinal_mine, ...]
    metric: fbeta                  # fbeta | accuracy | log_loss (podium.classify.scoring)
    classification:
      multi_label: true            # false: one class per image (softmax, argmax)
      beta: 2.0                    # fbeta's beta (Planet: F2)
      format: tags                 # tags: id,<mask_column> with space-separated class names
                                   # probabilities: id,<class 1>,<class 2>,... one column each
    submission: {id_column: image_name, mask_column: tags}

A solution file (`podium score`) lists the true labels in the tags format, whatever the
submission's format.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from podium import io
from podium.classify import scoring
from podium.competition import Competition, Sample
from podium.io import PodiumError

__all__ = ["ClassificationCompetition", "FORMATS"]

FORMATS = ("tags", "probabilities")


class ClassificationCompetition(Competition):
    """Base class of classification adapters (see the module docstring)."""

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        where = f"competition {self.name}"
        if self.task != "classification":
            raise PodiumError(f"{where}: a classification adapter needs task: classification")
        if cfg.metric not in scoring.METRICS:
            known = ", ".join(scoring.METRICS)
            raise PodiumError(
                f"{where}: metric {cfg.metric} is not a classification metric ({known})"
            )
        section = cfg.classification
        self.metric: str = str(cfg.metric)
        self.multi_label = bool(section.multi_label)
        self.beta = float(section.beta)
        self.format = str(section.format)
        self.class_index = {name: i for i, name in enumerate(self.classes)}

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    # -- labels -----------------------------------------------------------------------------
    def parse_tags(self, text: str, where: object) -> tuple[str, ...]:
        """The class names of a tags cell (blank-separated); unknown or repeated names and, when
        multi-class, anything but exactly one name are an error naming `where`."""
        tags = tuple(str(text).split())
        unknown = [t for t in tags if t not in self.class_index]
        if unknown:
            raise PodiumError(f"{where}: unknown class '{unknown[0]}' (classes: competition.yaml)")
        if len(set(tags)) != len(tags):
            raise PodiumError(f"{where}: a class is listed twice in '{text}'")
        if not self.multi_label and len(tags) != 1:
            raise PodiumError(f"{where}: expected exactly one class, got '{text}'")
        return tags

    def read_labels(self, sample: Sample) -> np.ndarray:
        """The sample's labels as a float32 vector of C {0, 1} values."""
        where = sample.origin or f"sample {sample.id}"
        names = sample.mask if isinstance(sample.mask, (tuple, list)) else str(sample.mask or "")
        text = " ".join(names) if isinstance(names, (tuple, list)) else names
        return self.label_vector(self.parse_tags(text, where))

    def label_vector(self, tags: Sequence[str]) -> np.ndarray:
        """C {0, 1} float32 values: 1 for each class in `tags`."""
        labels = np.zeros(len(self.classes), np.float32)
        labels[[self.class_index[t] for t in tags]] = 1.0
        return labels

    def read_mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        """A classification target is the label vector (`read_labels`), whatever `shape`."""
        return self.read_labels(sample)

    def tags_of(self, labels: np.ndarray) -> str:
        """The tags cell of a {0, 1} label vector, in class order."""
        return " ".join(name for name, on in zip(self.classes, labels, strict=True) if on)

    # -- submission files -------------------------------------------------------------------
    def submission_columns(self) -> list[str]:
        fmt = self.submission
        if self.format == "tags":
            return [fmt.id_column, fmt.mask_column]
        return [fmt.id_column, *self.classes]

    def write_predictions(
        self, path: Path, ids: Sequence[str], probs: np.ndarray, thresholds: Sequence[float]
    ) -> int:
        """Write the submission of `probs` (N x C) for `ids` (tags decided with `thresholds`,
        or every probability), atomically. Returns the number of rows."""
        with io.atomic_write(path, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.submission_columns())
            if self.format == "tags":
                decided = scoring.decide(probs, self.multi_label, thresholds)
                writer.writerows([i, self.tags_of(d)] for i, d in zip(ids, decided, strict=True))
            else:
                rows = ([i, *(f"{p:.6f}" for p in row)] for i, row in zip(ids, probs, strict=True))
                writer.writerows(rows)
        return len(ids)

    def read_submission(
        self, path: Path, max_problems: int = 20
    ) -> tuple[dict[str, np.ndarray | None], list[str]]:
        """({id: C values}, problems) of a submission file: tags as {0, 1}, or probabilities
        (None for a row with a problem). Problems name the row; at most `max_problems`."""
        rows = io.read_csv_rows(path)
        header = list(rows[0]) if rows else _header(path)
        problems: list[str] = []
        if header != self.submission_columns():
            expected = ",".join(self.submission_columns())
            return {}, [f"header is {','.join(header)}; expected {expected}"]
        values: dict[str, np.ndarray] = {}
        id_column = self.submission.id_column
        for row in rows:
            where = f"row {row.origin.row}"
            image_id = row[id_column]
            if image_id in values:
                problems.append(f"{where}: id {image_id} is listed twice")
                continue
            try:
                values[image_id] = self._row_values(row, where)
            except PodiumError as e:
                values[image_id] = None
                problems.append(str(e))
        return values, problems[:max_problems]

    def _row_values(self, row: dict, where: str) -> np.ndarray:
        if self.format == "tags":
            return self.label_vector(self.parse_tags(row[self.submission.mask_column], where))
        probs = []
        for name in self.classes:
            try:
                p = float(row[name])
            except ValueError:
                raise PodiumError(f"{where}: {name}='{row[name]}' is not a number") from None
            if not (math.isfinite(p) and 0.0 <= p <= 1.0):
                raise PodiumError(f"{where}: {name}={row[name]} is not a probability in [0, 1]")
            probs.append(p)
        return np.array(probs, np.float32)

    def validate_file(self, path: Path, max_problems: int = 20) -> list[str]:
        """Problems of a submission file (none: valid): its header, every test image once,
        known classes, probabilities in [0, 1]."""
        if not Path(path).is_file():
            return [f"{path}: file not found"]
        values, problems = self.read_submission(Path(path), max_problems)
        if problems and not values:  # a wrong header: no row was read
            return problems
        expected = [s.id for s in self.test_samples()]
        missing = [i for i in expected if i not in values]
        extra = sorted(set(values) - set(expected))
        if missing:
            problems.append(f"{len(missing)} test images have no row (first: {missing[0]})")
        if extra:
            problems.append(f"{len(extra)} rows are not test images (first: {extra[0]})")
        return problems[:max_problems]

    def score_file(self, path: Path, solution: Path) -> tuple[float, int]:
        """(score, images) of a valid submission against a solution in the tags format."""
        values, problems = self.read_submission(Path(path))
        if problems:
            raise PodiumError(f"{path}: {problems[0]}")
        truth_rows = io.read_csv_rows(
            solution, columns=[self.submission.mask_column], key=self.submission.id_column
        )
        truth = {
            row[self.submission.id_column]: self.label_vector(
                self.parse_tags(
                    row[self.submission.mask_column], f"{solution} row {row.origin.row}"
                )
            )
            for row in truth_rows
        }
        missing = [i for i in truth if i not in values]
        if missing:
            raise PodiumError(f"{path}: no row for {len(missing)} solution images ({missing[0]})")
        if self.metric == "log_loss" and self.format == "tags":
            raise PodiumError(
                f"competition {self.name}: metric log_loss scores probabilities; set "
                "classification.format=probabilities"
            )
        ids = list(truth)
        probs = np.stack([values[i] for i in ids])
        labels = np.stack([truth[i] for i in ids])
        result = scoring.score(self.metric, probs, labels, self.multi_label, 0.5, beta=self.beta)
        return result, len(ids)


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [name.strip() for name in next(csv.reader(f), [])]
