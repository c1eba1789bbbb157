"""The competition adapter API: what a `competitions/<slug>/adapter.py` implements.

A competition differs from another in a few places only: where the files are, how masks are
encoded, how samples group (car, patient, video), the metric and the submission format. An
adapter subclasses `Competition`, lists its samples, and overrides only what differs; the folder's
`competition.yaml` holds the settings (task, classes, metric, submission format...).

Conventions shared by every stage:
- multiclass: `classes[0]` is the background (class id 0); a per-class submission has one row
  per foreground class, `{class_index}` being the class id (1..K-1).
- multilabel: one channel per class; `{class_index}` is 1-based (Severstal's ClassId).
- test image sizes come from `image_shape`: `Sample.meta["shape"]`, else `options.image_shape`
  (a fixed [H, W] in competition.yaml), else the image file's header (no decoding).
- mask files mean what `mask_encoding` in competition.yaml says (podium.masks: binary,
  binary_01, binary_255, nonzero, class_ids, colour_map with `mask_colours`); values that do
  not fit are an error naming the file, never a silently empty mask.
- images stored in 16-bit files (PNG, TIFF) keep their values and are scaled to 0..255 by
  `image_bit_depth`: 12 maps 0..4095, 16 maps 0..65535; `auto` maps 0..65535 and the data
  check refuses 16-bit data that reaches less than 2**14 (12-bit data would look near-black),
  asking for the real depth. 8-bit files are read as they are.
- every sample is read once, strictly, before training or predicting (podium.datacheck).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from podium import io, masks, metrics
from podium.io import PodiumError
from podium.rle import RleError, rle_decode, rle_encode

__all__ = ["Sample", "SubmissionFormat", "Competition", "RowTarget", "load_competition"]

TASKS = ("binary", "multiclass", "multilabel", "classification")


@dataclass(frozen=True)
class Sample:
    """One image of a competition.

    Args:
        id: the image id as the submission writes it.
        image: path of the image file.
        mask: where the mask comes from — a mask file path, an RLE string, a per-class list of
            either, or None for "no mask" (an empty training mask, or a test image).
        group: samples sharing a group (car, patient, video) always land in the same fold.
        stratify: a label folds are balanced on (e.g. empty vs non-empty mask).
        meta: anything else the adapter needs later (depth, original size...).
        origin: where the sample's label is written, for error messages: the CSV row
            (`row.origin` of `podium.read_csv_rows`), or None.
    """

    id: str
    image: Path
    mask: Any = None
    group: str | None = None
    stratify: Any = None
    meta: dict = field(default_factory=dict, compare=False)
    origin: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class SubmissionFormat:
    """How predictions become rows of `submission.csv`.

    `row_id` is a template: "{id}" gives one row per image; "{id}_{class_name}" or
    "{id}_{class_index}" gives one row per image and class (Severstal-style).
    """

    id_column: str = "id"
    mask_column: str = "rle_mask"
    order: str = "F"
    base: int = 1
    empty: str = ""
    row_id: str = "{id}"

    @property
    def per_class(self) -> bool:
        return "{class" in self.row_id

    def is_empty(self, value: str | None) -> bool:
        """Whether a submission/label value is this format's empty-mask token (blanks ignored)."""
        return value is None or str(value).strip() == self.empty.strip()


@dataclass(frozen=True)
class RowTarget:
    """What one submission row encodes: the mask of `class_index` (None: the whole foreground)
    in the image of `sample`."""

    sample: Sample
    class_index: int | None = None


class Competition:
    """Base class of every competition adapter. Subclasses implement `train_samples` and
    `test_samples`; everything else has a default driven by `competition.yaml`."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.name: str = cfg.name
        self.data_dir = Path(cfg.data_dir)
        self.task: str = cfg.task
        self.classes: list[str] = list(cfg.classes)
        self.submission = SubmissionFormat(**OmegaConf.to_container(cfg.submission, resolve=True))
        self.options: DictConfig = cfg.get("options") or OmegaConf.create({})
        where = f"competition {self.name}"
        depth = cfg.get("image_bit_depth", "auto")
        self.image_bit_depth = io.parse_bit_depth(depth, f"{where}: image_bit_depth")
        self.mask_encoding: str = str(cfg.get("mask_encoding", "binary"))
        colours = cfg.get("mask_colours")
        colours = OmegaConf.to_container(colours) if OmegaConf.is_config(colours) else colours
        classes = len(self.classes) if self.task == "multiclass" else 2
        self.mask_colours = masks.check_mask_convention(self.mask_encoding, colours, classes, where)
        # A classification adapter (podium.classify.labels) checks its own metrics.
        segmentation = self.task != "classification"
        if segmentation and cfg.metric != "adapter" and cfg.metric not in metrics.METRICS:
            raise PodiumError(
                f"competition {self.name}: unknown metric '{cfg.metric}' "
                f"(known: {', '.join(metrics.METRICS)}, or 'adapter')"
            )
        known = segmentation and cfg.metric != "adapter"
        self.metric_fn = metrics.get_metric(cfg.metric) if known else None

    # -- what adapters implement -------------------------------------------------------------
    def train_samples(self) -> list[Sample]:
        raise NotImplementedError(f"{type(self).__name__}.train_samples")

    def test_samples(self) -> list[Sample]:
        raise NotImplementedError(f"{type(self).__name__}.test_samples")

    def prepare(self) -> None:
        """Create the data for local/generated competitions (`podium download` calls it when the
        competition has no Kaggle slug). Kaggle competitions are downloaded instead."""
        raise PodiumError(
            f"competition {self.name}: no Kaggle slug and no prepare() step; put its files in "
            f"{self.data_dir}"
        )

    def require_data(self) -> None:
        """Fail with the fix when the competition's data folder does not exist yet."""
        if not self.data_dir.is_dir():
            raise PodiumError(
                f"{self.data_dir}: no data for competition {self.name}; run `podium download "
                f"competition={self.name}` first (or point paths.data_dir at it)"
            )

    # -- defaults adapters may override ------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        """Model output channels: 1 for binary, one per class otherwise."""
        return 1 if self.task == "binary" else len(self.classes)

    def read_image(self, sample: Sample) -> np.ndarray:
        """HxWx3 uint8 RGB (16-bit files scaled by `image_bit_depth`)."""
        return io.read_image(sample.image, self.image_bit_depth)

    def read_mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        """The target for `sample` at image size `shape`: HxW {0,1} (binary), HxW class ids
        (multiclass) or CxHxW {0,1} (multilabel)."""
        if self.task == "multilabel":
            sources = (
                sample.mask
                if isinstance(sample.mask, (list, tuple))
                else [None] * len(self.classes)
            )
            return np.stack([self._decode_one(sample, s, shape) for s in sources])
        return self._decode_one(sample, sample.mask, shape, class_ids=self.task == "multiclass")

    def _decode_one(self, sample: Sample, source: Any, shape, class_ids: bool = False):
        if isinstance(source, float) and np.isnan(source):  # pandas' empty cell
            source = None
        if source is None or (isinstance(source, str) and self.submission.is_empty(source)):
            return np.zeros(shape, dtype=np.uint8)
        if isinstance(source, Path):
            mask = self.read_mask_file(source, class_ids)
            if mask.shape != tuple(shape):
                raise PodiumError(
                    f"{source}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
                    f"{sample.image} is {shape[1]}x{shape[0]}"
                )
            return mask
        try:
            return rle_decode(str(source), shape, self.submission.order, self.submission.base)
        except RleError as e:
            where = sample.origin or f"competition {self.name}"
            raise PodiumError(f"{where}: mask of sample {sample.id}: {e}") from None

    def read_mask_file(self, path: Path, class_ids: bool = False) -> np.ndarray:
        """One mask file by this competition's `mask_encoding`: HxW {0,1}, or class ids when
        `class_ids` (a multiclass target)."""
        encoding = self.mask_encoding
        if class_ids and encoding not in ("class_ids", "colour_map"):
            raise PodiumError(
                f"competition {self.name}: multiclass mask files need mask_encoding class_ids "
                f"or colour_map in competition.yaml, not {encoding}"
            )
        classes = len(self.classes) if class_ids else 2
        return masks.read_mask_file(path, encoding, self.mask_colours, classes)

    def score_image(self, pred: np.ndarray, target: np.ndarray) -> float:
        """The competition metric of one image (the competition score is the mean over images)."""
        if self.metric_fn is None:
            raise NotImplementedError(f"{type(self).__name__}.score_image (metric: adapter)")
        return self.metric_fn(pred, target, task=self.task)

    def encode_mask(self, mask: np.ndarray) -> str:
        """The submission's encoding of one binary HxW mask."""
        if not mask.any():
            return self.submission.empty
        return rle_encode(mask, self.submission.order, self.submission.base)

    def decode_mask(self, value: str | None, shape: tuple[int, int]) -> np.ndarray:
        """The binary HxW mask of one submission (or solution) value; RleError if malformed."""
        if self.submission.is_empty(value):
            return np.zeros(shape, dtype=np.uint8)
        return rle_decode(value, shape, self.submission.order, self.submission.base)

    # -- submission layout -------------------------------------------------------------------
    def submission_classes(self) -> list[tuple[int, str]]:
        """(class_index, class name) of the classes a per-class submission has rows for."""
        if self.task == "multiclass":
            return list(enumerate(self.classes))[1:]  # classes[0] is the background
        return [(index + 1, name) for index, name in enumerate(self.classes)]

    def submission_layout(self, samples: Iterable[Sample]) -> dict[str, RowTarget]:
        """Every submission row id of `samples`, in submission order, with what it encodes."""
        fmt, layout = self.submission, {}
        for sample in samples:
            if not fmt.per_class:
                layout[fmt.row_id.format(id=sample.id)] = RowTarget(sample)
                continue
            for class_index, class_name in self.submission_classes():
                row = fmt.row_id.format(
                    id=sample.id, class_name=class_name, class_index=class_index
                )
                layout[row] = RowTarget(sample, class_index)
        return layout

    def class_mask(self, pred: np.ndarray, class_index: int | None) -> np.ndarray:
        """The binary HxW mask a submission row holds, from a prediction in `read_mask`'s form."""
        if self.task == "binary":
            return pred
        if class_index is None:  # one row per image: any foreground
            return pred > 0 if self.task == "multiclass" else pred.any(0)
        return pred == class_index if self.task == "multiclass" else pred[class_index - 1]

    def assemble_mask(self, rows: dict[int | None, np.ndarray], shape) -> np.ndarray:
        """The inverse of `class_mask`: an image's target (as `read_mask` gives it) from its
        decoded rows {class_index: HxW}; classes without a row are empty. Multiclass and
        multilabel need per-class rows (one foreground row cannot say which class)."""
        blank = np.zeros(shape, np.uint8)
        if self.task == "binary":
            return rows.get(1 if self.submission.per_class else None, blank)
        if not self.submission.per_class:
            raise PodiumError(
                f"competition {self.name}: a {self.task} task needs per-class submission rows "
                "(submission.row_id with {class_name} or {class_index})"
            )
        if self.task == "multilabel":
            return np.stack([rows.get(i, blank) for i, _ in self.submission_classes()])
        for class_index, mask in rows.items():
            blank[mask.astype(bool)] = class_index
        return blank

    def submission_rows(self, sample: Sample, pred: np.ndarray) -> list[tuple[str, str]]:
        """(row id, encoded mask) rows for one predicted image at its original size."""
        return [
            (row_id, self.encode_mask(self.class_mask(pred, target.class_index)))
            for row_id, target in self.submission_layout([sample]).items()
        ]

    def image_shape(self, sample: Sample) -> tuple[int, int]:
        """(H, W) of the sample's image, cheaply: `meta["shape"]`, else `options.image_shape`,
        else the image file's header (the pixels are not decoded)."""
        shape = sample.meta.get("shape") or self.options.get("image_shape")
        if shape:
            return int(shape[0]), int(shape[1])
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(sample.image) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError):
            raise PodiumError(
                f"{sample.image}: cannot read the image size (missing or not an image file); "
                f"set competition.options.image_shape=[H,W] if every image has one size"
            ) from None
        return height, width

    def sample_submission_path(self) -> Path:
        return self.data_dir / self.cfg.sample_submission

    def solution_path(self) -> Path | None:
        """A local ground truth for `podium score` (generated competitions have one)."""
        return None


def load_competition(cfg: DictConfig) -> Competition:
    """Instantiate the adapter of `cfg.competition` (the composed podium config)."""
    comp_cfg = cfg.competition
    adapter_file = Path(comp_cfg.dir) / "adapter.py"
    if not adapter_file.is_file():
        raise PodiumError(f"{adapter_file}: competition adapter not found")
    spec = importlib.util.spec_from_file_location(
        f"podium_competition_{comp_cfg.name}", adapter_file
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Competition)
        and obj is not Competition
        and obj.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise PodiumError(
            f"{adapter_file}: expected exactly one Competition subclass, found {len(classes)}"
        )
    return classes[0](comp_cfg)
