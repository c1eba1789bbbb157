"""Folds (grouped, stratified, persisted), dataset checks, and reproducible augmentation."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from podium.competition import Competition, Sample
from podium.config import COMPETITION_DEFAULTS
from podium.data import (
    SegmentationDataset,
    build_transforms,
    load_or_make_folds,
    make_folds,
    make_loader,
    pad_collate,
)
from podium.io import PodiumError


def samples_with_groups(n_groups=30, per_group=4):
    rng = np.random.default_rng(0)
    out = []
    for g in range(n_groups):
        empty = rng.random() < 0.3
        for k in range(per_group):
            out.append(Sample(id=f"g{g}_{k}", image=Path("x"), group=f"g{g}", stratify=empty))
    return out


def test_folds_never_split_a_group():
    samples = samples_with_groups()
    folds = make_folds(samples, n_folds=5, seed=1)
    by_group = defaultdict(set)
    for s in samples:
        by_group[s.group].add(folds[s.id])
    assert all(len(f) == 1 for f in by_group.values())
    assert set(folds.values()) == set(range(5))


def test_folds_are_stratified():
    # 100 singleton groups, 20 of them "empty": each of 5 folds should get 4 empties.
    samples = [Sample(id=str(i), image=Path("x"), stratify=i < 20) for i in range(100)]
    folds = make_folds(samples, n_folds=5, seed=3)
    empties = Counter(folds[s.id] for s in samples if s.stratify)
    assert sorted(empties.values()) == [4, 4, 4, 4, 4]


def test_folds_are_persisted_and_reused(tmp_path):
    samples = samples_with_groups()
    path = tmp_path / "folds.csv"
    first = load_or_make_folds(samples, path, 5, seed=1)
    assert path.read_text().splitlines()[0] == "id,fold"
    # A different seed must not change persisted folds: the file wins.
    assert load_or_make_folds(samples, path, 5, seed=99) == first
    with pytest.raises(PodiumError, match="delete it"):
        load_or_make_folds(samples[:-4], path, 5, seed=1)
    with pytest.raises(PodiumError, match="n_folds=4"):
        load_or_make_folds(samples, path, 4, seed=1)


class PngCompetition(Competition):
    def train_samples(self):
        return []


def png_competition(tmp_path, task="binary"):
    cfg = OmegaConf.merge(
        OmegaConf.create(COMPETITION_DEFAULTS),
        {"name": "t", "dir": str(tmp_path), "data_dir": str(tmp_path), "task": task},
    )
    return PngCompetition(cfg)


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)
    return path


def test_dataset_reads_and_checks_masks(tmp_path):
    comp = png_competition(tmp_path)
    image = write(tmp_path / "a.png", np.full((20, 30, 3), 100, np.uint8))
    good = write(tmp_path / "a_mask.png", (np.eye(20, 30) * 255).astype(np.uint8))
    item = SegmentationDataset(comp, [Sample("a", image, good)])[0]
    assert item["image"].shape == (3, 20, 30) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (1, 20, 30) and set(item["mask"].unique().tolist()) == {0, 1}

    small = write(tmp_path / "small.png", np.zeros((10, 30), np.uint8))
    with pytest.raises(PodiumError, match="small.png"):
        SegmentationDataset(comp, [Sample("a", image, small)])[0]
    grey = write(
        tmp_path / "grey.png", np.tile(np.arange(0, 250, 8, dtype=np.uint8), (20, 1))[:, :30]
    )
    with pytest.raises(PodiumError, match=r"grey.png: mask values 0, 8, 16.* do not fit mask_"):
        SegmentationDataset(comp, [Sample("a", image, grey)])[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(PodiumError, match="broken.png"):
        SegmentationDataset(comp, [Sample("b", broken, None)])[0]


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    comp = png_competition(tmp_path)
    rng = np.random.default_rng(0)
    image = write(tmp_path / "r.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    augment = OmegaConf.create({"preset": "heavy", "crop": [24, 24]})
    samples = [Sample(str(i), image, None) for i in range(3)]

    def views(epoch, seed=0):
        ds = SegmentationDataset(comp, samples, build_transforms(augment, None, True), seed=seed)
        ds.set_epoch(epoch)
        return [ds[i]["image"] for i in (2, 0, 1, 2)]  # access order must not matter

    a, b = views(0), views(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(a[0], a[3])
    assert not torch.equal(a[0], views(1)[0]) and not torch.equal(a[0], views(0, seed=1)[0])
    assert a[0].shape == (3, 24, 24)


def test_pad_collate_keeps_original_sizes():
    items = [
        {"image": torch.ones(3, 4, 6, dtype=torch.uint8), "mask": torch.ones(1, 4, 6), "index": 0},
        {"image": torch.ones(3, 5, 3, dtype=torch.uint8), "mask": torch.ones(1, 5, 3), "index": 1},
    ]
    batch = pad_collate(items)
    assert batch["image"].shape == (2, 3, 5, 6) and batch["mask"].shape == (2, 1, 5, 6)
    assert batch["sizes"].tolist() == [[4, 6], [5, 3]]
    assert batch["image"][0, :, 4:].sum() == 0 and batch["image"][1, :, :, 3:].sum() == 0


def test_folds_fall_back_to_grouping_when_strata_are_too_small():
    # Ten samples, each its own stratum: no stratification possible, groups still respected.
    samples = [Sample(str(i), Path("x"), group=f"g{i // 2}", stratify=i) for i in range(10)]
    folds = make_folds(samples, n_folds=5, seed=0)
    assert sorted(Counter(folds.values()).values()) == [2, 2, 2, 2, 2]
    assert all(folds[str(i)] == folds[str(i + 1)] for i in range(0, 10, 2))


def test_a_single_batch_loads_without_worker_processes():
    data = torch.utils.data.TensorDataset(torch.zeros(8, 1))
    assert make_loader(data, batch_size=8, num_workers=2).num_workers == 0
    assert make_loader(data, batch_size=4, num_workers=2).num_workers == 2
    assert make_loader(data, 4, 2, sampler=[0, 1, 2]).num_workers == 0  # what the sampler draws
