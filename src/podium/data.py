"""Data: the segmentation dataset, augmentation presets, persisted folds and data loaders.

Images travel as uint8 tensors and are normalised on the device (4x less to copy than float32).
Augmentation is seeded per (seed, epoch, sample), so a run is reproducible whatever the number of
workers or processes, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from podium import archives, io
from podium import distributed as dist
from podium.competition import Competition, Sample
from podium.io import PodiumError

log = logging.getLogger(__name__)

__all__ = [
    "SegmentationDataset",
    "build_transforms",
    "make_folds",
    "load_or_make_folds",
    "read_folds",
    "read_duplicate_groups",
    "fold_groups",
    "DUPLICATE_GROUPS",
    "mask_files",
    "split_samples",
    "pad_collate",
    "resolve_num_workers",
    "check_layout",
]


# -- augmentation -----------------------------------------------------------------------------
def build_transforms(cfg_augment: DictConfig, image_size: Sequence[int] | None, train: bool):
    """Albumentations pipeline: resize to `image_size` (if set), then for training the preset
    (`none`, `light`, `medium`, `heavy`) and an optional random crop."""
    steps: list = []
    if image_size is not None:
        steps.append(A.Resize(int(image_size[0]), int(image_size[1])))
    if train:
        steps += _PRESETS[cfg_augment.preset]()
        if cfg_augment.get("crop"):
            h, w = (int(v) for v in cfg_augment.crop)
            steps += [A.PadIfNeeded(h, w, border_mode=cv2.BORDER_REFLECT_101), A.RandomCrop(h, w)]
    return A.Compose(steps)


def _light() -> list:
    return [A.HorizontalFlip(p=0.5)]


def _medium() -> list:
    return _light() + [
        A.Affine(
            scale=(0.9, 1.1),
            translate_percent=(-0.0625, 0.0625),
            rotate=(-15, 15),
            border_mode=cv2.BORDER_REFLECT_101,
            p=0.5,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]


def _heavy() -> list:
    return _medium() + [
        A.VerticalFlip(p=0.5),
        A.OneOf([A.ElasticTransform(), A.GridDistortion(), A.OpticalDistortion()], p=0.25),
        A.HueSaturationValue(p=0.3),
        A.OneOf([A.GaussNoise(), A.GaussianBlur(), A.MotionBlur()], p=0.25),
    ]


_PRESETS = {"none": list, "light": _light, "medium": _medium, "heavy": _heavy}


# -- dataset ----------------------------------------------------------------------------------
class SegmentationDataset(Dataset):
    """Samples of a competition as {"image": uint8 CxHxW, "mask": target, "index": i}.

    The mask is uint8 1xHxW (binary), int64 HxW (multiclass) or uint8 CxHxW (multilabel);
    test datasets (`with_masks=False`) carry no mask. `seed` and `set_epoch` make augmentation
    a pure function of (seed, epoch, index).
    """

    def __init__(
        self,
        competition: Competition,
        samples: Sequence[Sample],
        transform: A.Compose | None = None,
        with_masks: bool = True,
        seed: int = 0,
    ):
        self.competition = competition
        self.samples = list(samples)
        self.transform = transform
        self.with_masks = with_masks
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = self.competition.read_image(sample)
        if image.ndim != 3 or image.shape[2] != 3:
            raise PodiumError(f"{sample.image}: expected an RGB image, got shape {image.shape}")
        mask = None
        if self.with_masks:
            mask = self.competition.read_mask(sample, image.shape[:2])
            if mask.shape[-2:] != image.shape[:2]:
                raise PodiumError(
                    f"{sample.image}: mask size {mask.shape[-1]}x{mask.shape[-2]} differs from "
                    f"image size {image.shape[1]}x{image.shape[0]}"
                )
            if self.competition.task == "multilabel":
                mask = np.ascontiguousarray(mask.transpose(1, 2, 0))  # albumentations wants HWC
        if self.transform is not None:
            rng_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
            self.transform.set_random_state(
                np.random.default_rng(rng_seed), random.Random(rng_seed)
            )
            out = (
                self.transform(image=image, mask=mask)
                if mask is not None
                else self.transform(image=image)
            )
            image, mask = out["image"], out.get("mask")
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "index": index,
        }
        if mask is not None:
            if self.competition.task == "binary":
                item["mask"] = torch.from_numpy(np.ascontiguousarray(mask[None]))
            elif self.competition.task == "multiclass":
                item["mask"] = torch.from_numpy(mask.astype(np.int64))
            else:
                item["mask"] = torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1)))
        return item


def pad_collate(items: list[dict]) -> dict:
    """Stack a batch; images of different sizes are zero-padded (bottom/right) to the largest,
    and `sizes` keeps each original (H, W) so predictions can be cropped back."""
    sizes = [tuple(item["image"].shape[-2:]) for item in items]
    height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    batch = {
        "index": torch.tensor([item["index"] for item in items]),
        "sizes": torch.tensor(sizes),
    }
    if "pseudo" in items[0]:  # a batch mixing pseudo-labelled images in (podium.pseudo_data)
        batch["pseudo"] = torch.tensor([bool(item["pseudo"]) for item in items])
    for key in ("image", "mask", "soft_mask", "pixel_weight"):
        if key not in items[0]:
            continue
        tensors = [item[key] for item in items]
        if all(tuple(t.shape[-2:]) == (height, width) for t in tensors):
            batch[key] = torch.stack(tensors)
            continue
        out = tensors[0].new_zeros((len(tensors), *tensors[0].shape[:-2], height, width))
        for i, t in enumerate(tensors):
            out[i, ..., : t.shape[-2], : t.shape[-1]] = t
        batch[key] = out
    if "labels" in items[0]:  # classification: one label vector per image, nothing to pad
        batch["labels"] = torch.stack([item["labels"] for item in items])
    return batch


def resolve_num_workers(value: int | str, processes: int = 1) -> int:
    """`auto`: the CPUs this process may use, shared between processes, at most 8."""
    if value != "auto":
        return int(value)
    return max(0, min(8, dist.cpu_count() // max(1, processes)))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    sampler=None,
    shuffle: bool = False,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    if len(sampler if sampler is not None else dataset) <= batch_size:
        # One batch: this process loads it rather than fork workers for it (a test set of a
        # few images; saves the fork, and one hang seen here with 2 workers and 1 batch).
        num_workers = 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        collate_fn=pad_collate,
        generator=generator,
        persistent_workers=False,  # workers fork each epoch and so see the dataset's epoch
    )


# -- folds ----------------------------------------------------------------------------------
# `podium doctor ... doctor.group_duplicates=true` writes this file next to folds.csv (id,
# cluster: near-duplicate images). While it exists, folds keep each cluster in one fold.
DUPLICATE_GROUPS = "duplicate_groups.csv"


def make_folds(
    samples: Sequence[Sample],
    n_folds: int,
    seed: int,
    duplicate_groups: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Assign each sample a fold: samples of one group share a fold, and folds are balanced on
    the stratification key (scikit-learn's StratifiedGroupKFold). `duplicate_groups` (id ->
    cluster) joins the groups of each cluster's images, so a cluster lands in one fold."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    if len(samples) < n_folds:
        raise PodiumError(f"{len(samples)} samples cannot make {n_folds} folds")
    groups = fold_groups(samples, duplicate_groups)
    if len(set(groups)) < n_folds:
        raise PodiumError(f"{len(set(groups))} groups cannot make {n_folds} folds")
    strata = [str(s.stratify) for s in samples]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    try:
        splits = list(splitter.split(np.zeros(len(samples)), strata, groups))
    except ValueError as e:  # e.g. every stratum smaller than n_folds: group folds alone
        log.warning("folds cannot be stratified (%s); grouping only", e)
        splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(np.zeros(len(samples)), groups=groups))
    return {samples[i].id: fold for fold, (_, val) in enumerate(splits) for i in val}


def fold_groups(
    samples: Sequence[Sample], duplicate_groups: Mapping[str, str] | None = None
) -> list[str]:
    """The fold group of each sample: its adapter group (else its id), with the groups that a
    duplicate cluster links merged into one (union-find: clusters may chain groups)."""
    own = [s.group if s.group is not None else s.id for s in samples]
    if not duplicate_groups:
        return own
    parent = {group: group for group in own}

    def root(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    first_of_cluster: dict[str, str] = {}
    for sample, group in zip(samples, own, strict=True):
        cluster = duplicate_groups.get(sample.id)
        if cluster is None:
            continue
        other = first_of_cluster.setdefault(cluster, group)
        parent[root(group)] = root(other)
    return [root(group) for group in own]


def read_duplicate_groups(path: Path, samples: Sequence[Sample]) -> dict[str, str] | None:
    """duplicate_groups.csv (id, cluster) as {id: cluster}; None when there is no such file.
    Ids the competition does not have mean the file is stale: an error, never ignored."""
    if not path.is_file():
        return None
    try:
        clusters = {row["id"]: row["cluster"] for row in io.read_csv_rows(path)}
    except KeyError:
        raise PodiumError(f"{path}: expected columns id,cluster") from None
    unknown = set(clusters) - {s.id for s in samples}
    if unknown:
        raise PodiumError(
            f"{path}: lists {len(unknown)} ids the competition does not have (e.g. "
            f"{min(unknown)}); run `podium doctor doctor.group_duplicates=true` again or delete it"
        )
    return clusters


def read_folds(
    path: Path,
    samples: Sequence[Sample],
    n_folds: int,
    duplicate_groups: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """folds.csv (id, fold), checked against the samples, the fold count and the duplicate
    clusters: folds for other samples, another count, or that split a cluster are an error."""
    rows = io.read_csv_rows(path)
    try:
        folds = {row["id"]: int(row["fold"]) for row in rows}
    except (KeyError, ValueError):
        raise PodiumError(f"{path}: expected columns id,fold with integer folds") from None
    ids = {s.id for s in samples}
    if set(folds) != ids:
        raise PodiumError(
            f"{path}: lists {len(folds)} ids but the competition has {len(ids)} "
            f"({len(set(folds) ^ ids)} differ); delete it to make new folds"
        )
    if len(set(folds.values())) != n_folds:
        raise PodiumError(
            f"{path}: has {len(set(folds.values()))} folds but competition.n_folds={n_folds}; "
            "delete it or set competition.n_folds"
        )
    cluster_folds: dict[str, set[int]] = {}
    for image_id, cluster in (duplicate_groups or {}).items():
        cluster_folds.setdefault(cluster, set()).add(folds[image_id])
    split = sorted(c for c, spanned in cluster_folds.items() if len(spanned) > 1)
    if split:
        raise PodiumError(
            f"{path}: near-duplicate clusters of {DUPLICATE_GROUPS} span folds ({len(split)}, "
            f"e.g. {split[0]}: folds {sorted(cluster_folds[split[0]])}); delete it to make folds "
            "that keep each cluster in one fold"
        )
    return folds


def load_or_make_folds(
    samples: Sequence[Sample], path: Path, n_folds: int, seed: int, cache_dir: Path | None = None
) -> dict[str, int]:
    """Read `folds.csv` (id, fold) if it exists and matches the samples, else make and save it.
    A folds.csv for other samples or another fold count, or one that splits a near-duplicate
    cluster of duplicate_groups.csv (beside it), is an error, never silently replaced.

    A data folder podium cannot write to (Kaggle's /kaggle/input, a read-only mount) keeps its
    folds in `cache_dir` (default: the workspace's `.cache/folds/`) as
    `<data folder>-<digest of its path>.csv`: the same file for every run on that data."""
    duplicate_groups = read_duplicate_groups(path.parent / DUPLICATE_GROUPS, samples)
    cached = None if path.is_file() else _cached_folds(path, cache_dir)
    for candidate in (path, cached):
        if candidate is not None and candidate.is_file():
            return read_folds(candidate, samples, n_folds, duplicate_groups)
    folds = make_folds(samples, n_folds, seed, duplicate_groups)
    rows, columns = [{"id": s.id, "fold": folds[s.id]} for s in samples], ["id", "fold"]
    clusters = len(set(duplicate_groups.values())) if duplicate_groups else 0
    kept = f", {clusters} near-duplicate clusters in one fold each" if clusters else ""
    try:
        io.write_csv(path, rows, columns)
        log.info("wrote %s (%d folds, grouped and stratified%s)", path, n_folds, kept)
        return folds
    except OSError as e:
        if cached is None:
            raise PodiumError(f"{path}: cannot write the folds ({e.strerror or e})") from None
        reason = e.strerror or e
    try:
        io.write_csv(cached, rows, columns)
    except OSError as e:
        raise PodiumError(f"{cached}: cannot write the folds ({e.strerror or e})") from None
    log.info(
        "%s is not writable (%s): wrote its %d folds to %s, which every run on it reads%s",
        path.parent, reason, n_folds, cached, kept,
    )  # fmt: skip
    return folds


def _cached_folds(path: Path, cache_dir: Path | None) -> Path | None:
    """Where the folds of a read-only data folder go (None: no workspace to keep them in)."""
    if cache_dir is None:
        from podium.workspace import NotAWorkspace, workspace_root

        try:
            cache_dir = workspace_root() / ".cache" / "folds"
        except NotAWorkspace:
            return None
    data_dir = path.resolve().parent
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{data_dir.name}-{digest}.csv"


def split_samples(samples: Sequence[Sample], folds: dict[str, int], fold: int):
    """(train, validation) samples for `fold`."""
    train = [s for s in samples if folds[s.id] != fold]
    val = [s for s in samples if folds[s.id] == fold]
    if not val:
        raise PodiumError(
            f"fold={fold}: no samples in that fold (folds are 0..{max(folds.values())})"
        )
    return train, val


# -- layout check -----------------------------------------------------------------------------
def check_layout(competition: Competition, decode: int = 3) -> str:
    """Check that the data folder holds what the adapter lists — every image and mask file
    exists, and the first `decode` train images, masks and test images decode — and return one
    line such as "tgs-salt-identification-challenge: 4000 train images (1562 empty masks),
    18000 test images, ready". Anything wrong is a PodiumError naming the file and the fix."""
    competition.require_data()
    train = _listed(competition, "train")
    test = _listed(competition, "test")
    if not train:
        raise PodiumError(
            f"{competition.name}: the adapter lists no training images in "
            f"{competition.data_dir}; {_refetch_hint(competition, None)}"
        )
    for kind, sample, path in _referenced_files(train, test):
        if not path.is_file():
            missing = sum(1 for *_, p in _referenced_files(train, test) if not p.is_file())
            more = f" (and {missing - 1} more)" if missing > 1 else ""
            raise PodiumError(
                f"{competition.name}: {kind} of sample {sample.id} is missing: {path}{more}; "
                f"{_refetch_hint(competition, path)}"
            )
    for sample in train[:decode]:
        image = competition.read_image(sample)
        competition.read_mask(sample, image.shape[:2])
    for sample in test[:decode]:
        competition.read_image(sample)
    masks = _mask_summary(competition, train)
    return (
        f"{competition.name}: {len(train)} train images ({masks}), {len(test)} test images, ready"
    )


def _listed(competition: Competition, split: str) -> list[Sample]:
    try:
        return competition.train_samples() if split == "train" else competition.test_samples()
    except PodiumError as e:
        raise PodiumError(
            f"{competition.name}: cannot list the {split} samples ({e}); "
            f"{_refetch_hint(competition, None)}"
        ) from None


def mask_files(sample: Sample) -> list[Path]:
    """The mask files a sample references (none when its masks are encoded strings)."""
    sources = sample.mask if isinstance(sample.mask, (list, tuple)) else [sample.mask]
    return [s for s in sources if isinstance(s, Path)]


def _referenced_files(train: list[Sample], test: list[Sample]):
    """(what, sample, path) of every file the samples reference."""
    for sample in train:
        yield "train image", sample, Path(sample.image)
        for mask in mask_files(sample):
            yield "mask", sample, mask
    for sample in test:
        yield "test image", sample, Path(sample.image)


def _mask_summary(competition: Competition, train: list[Sample]) -> str:
    """ "1562 empty masks" when masks are encoded strings (cheap to tell), else "5088 mask
    files" (telling empty ones apart would mean decoding every file)."""
    files = sum(len(mask_files(s)) for s in train)
    if files:
        return f"{files} mask files"

    def empty(source) -> bool:
        if isinstance(source, (list, tuple)):
            return all(empty(s) for s in source)
        return source is None or (
            isinstance(source, str) and competition.submission.is_empty(source)
        )

    return f"{sum(empty(s.mask) for s in train)} empty masks"


def _refetch_hint(competition: Competition, missing: Path | None) -> str:
    """What to do about a missing file: name the archive it is still packed in, if any, else
    say how to get the data again."""
    data_dir = competition.data_dir
    if missing is not None and missing.is_relative_to(data_dir):
        top = missing.relative_to(data_dir).parts[0]
        for archive in sorted(data_dir.glob(f"{top}.*")):
            if archives.is_archive(archive):
                return (
                    f"{archive.name} is still packed: unpack it, or let `podium download` do it "
                    f"(competition.yaml download.unpack)"
                )
    redo = "download it again" if competition.cfg.get("kaggle") else "make it again"
    return f"run `podium download competition={competition.name} force=true` to {redo}"
