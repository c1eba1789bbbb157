"""`podium doctor` on a generated image-folder competition: distinct random scenes, planted exact
copies and near-duplicates (noise, a brightness shift, a 2-pixel crop, a 1-pixel shift, a JPEG
re-encode, each in another group than its original), an odd mask and a mask of the wrong size.
Every planted pair must be found and no other; the fold option keeps each cluster in one fold.
The bucketed hash search must equal the all-pairs answer. With ../shared/data present, the
doctor runs on TGS Salt, Kvasir-SEG and ISBI 2012 as they are."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from podium import cli, dedup
from podium.competition import Sample, load_competition
from podium.config import compose_config
from podium.data import (
    fold_groups,
    load_or_make_folds,
    make_folds,
    read_duplicate_groups,
)
from podium.doctor.facts import scan
from podium.io import PodiumError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIZE = 128
N_DISTINCT = 40
# variant name -> how it is made from its original (and how its mask follows)
VARIANTS = {
    "exact": lambda image: image.copy(),
    "noise": lambda image: _noisy(image),
    "bright": lambda image: np.clip(image.astype(np.int16) + 30, 0, 255).astype(np.uint8),
    "crop": lambda image: image[2:, :-2],
    "shift": lambda image: _shifted(image),
    "jpeg": lambda image: image,  # saved as a quality-70 JPEG
}


def _noisy(image: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(7).normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _shifted(image: np.ndarray) -> np.ndarray:
    shift = np.float32([[1, 0, 1], [0, 1, 0]])
    return cv2.warpAffine(image, shift, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random background with 2-4 random boxes and discs; the mask is the discs."""
    low = rng.normal(0, 30, (4, 4, 3)).astype(np.float32)
    image = rng.uniform(50, 200, 3).astype(np.float32) + cv2.resize(
        low, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC
    )
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        x, y = (int(v) for v in rng.integers(12, SIZE - 12, 2))
        r = int(rng.integers(8, 28))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), r, colour, -1)
            cv2.circle(mask, (x, y), r, 255, -1)
        else:
            cv2.rectangle(image, (x - r, y - r // 2), (x + r, y + r // 2), colour, -1)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _write(path: Path, image: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])


def make_folder(root: Path) -> dict[str, set[str]]:
    """images/ + masks/ + test/ of an image-folder competition; returns the planted families
    (original id -> the ids that copy it). Ids are <group>_<name>: every image its own group."""
    rng = np.random.default_rng(2024)
    families: dict[str, set[str]] = {}
    for i in range(N_DISTINCT):
        image, mask = _scene(rng)
        image_id = f"g{i:02d}_scene"
        _write(root / "images" / f"{image_id}.png", image)
        _write(root / "masks" / f"{image_id}.png", mask)
        if i < len(VARIANTS):
            name, make = list(VARIANTS.items())[i]
            copy_id = f"g{100 + i}_{name}"
            ext = "jpg" if name == "jpeg" else "png"
            _write(root / "images" / f"{copy_id}.{ext}", make(image), quality=70)
            _write(
                root / "masks" / f"{copy_id}.png",
                VARIANTS["crop" if name == "crop" else "exact"](mask),
            )
            families[image_id] = {copy_id}
    # the test set: two new scenes and a copy of a training image
    for k in range(2):
        _write(root / "test" / f"t{k}.png", _scene(rng)[0])
    _write(
        root / "test" / "t_copy.png",
        cv2.cvtColor(cv2.imread(str(root / "images" / "g10_scene.png")), cv2.COLOR_BGR2RGB),
    )
    # an odd mask (a grey value among 0/255) and a mask of another size than its image
    odd = cv2.imread(str(root / "masks" / "g20_scene.png"), cv2.IMREAD_GRAYSCALE)
    odd[:4, :4] = 128
    _write(root / "masks" / "g20_scene.png", odd)
    _write(root / "masks" / "g21_scene.png", np.zeros((SIZE - 1, SIZE), np.uint8))
    return families


def doctor_args(folder: Path, out: Path, *more: str) -> list[str]:
    return [
        "doctor",
        "competition=image-folder",
        f"competition.data_dir={folder}",
        "competition.options.test_dir=test",
        "competition.options.group_regex='^(g[0-9]+)_'",
        f"doctor.out_dir={out}",
        "doctor.workers=2",
        *more,
    ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("doctor") / "data"
    return root, make_folder(root)


@pytest.fixture(scope="module")
def first_run(folder, tmp_path_factory) -> tuple[str, Path]:
    """One doctor run on the folder: (its stdout, its out_dir)."""
    import contextlib
    import io as stdio

    out = tmp_path_factory.mktemp("doctor-out")
    text = stdio.StringIO()
    with contextlib.redirect_stdout(text):
        assert cli.main(doctor_args(folder[0], out)) == 0
    return text.getvalue(), out


def read_pairs(out: Path) -> list[dict[str, str]]:
    with open(out / "image-folder" / "pairs.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_planted_pair_is_found_and_no_other(folder, first_run):
    _, families = folder
    found = {frozenset((r["id_a"], r["id_b"])) for r in read_pairs(first_run[1])}
    planted = {
        frozenset((original, copy)) for original, copies in families.items() for copy in copies
    }
    planted.add(frozenset(("g10_scene", "t_copy")))  # train-test
    assert found == planted
    by_id = {(r["id_a"], r["id_b"]): r for r in read_pairs(first_run[1])}
    assert by_id[("g00_scene", "g100_exact")]["exact"] == "True"
    assert by_id[("g10_scene", "t_copy")]["split_b"] == "test"


def test_the_terminal_says_each_problem_in_one_line(first_run):
    stdout, out = first_run
    problems = stdout.split("problems:\n", 1)[1].splitlines()
    assert problems[-1] == f"report: {out / 'image-folder.md'}"
    lines = problems[:-1]
    assert all(line.startswith("  - ") for line in lines)
    text = "\n".join(lines)
    assert "6 pairs across the adapter's groups" in text  # every copy is in another group
    assert "duplicates: 1 train-test pair (test images" in text
    assert (
        "masks: 1 mask off the 0/255 convention of the others, e.g. g20_scene: {0,128,255}" in text
    )
    assert (
        "1 mask of another size than the image, e.g. g21_scene: mask 128x127, image 128x128" in text
    )
    assert "1 mask the adapter cannot decode, e.g. g21_scene: " in text  # the wrong size
    assert stdout.startswith("images: 46 train, 3 test; sizes 128x128 (48), 126x126 (1)")


def test_the_markdown_has_its_sections_and_figures(first_run):
    _, out = first_run
    text = (out / "image-folder.md").read_text()
    for title in ("Problems", "Images", "Masks", "Train vs test", "Duplicates and folds"):
        assert f"\n## {title}\n" in text
    for figure in ("sizes", "intensity", "coverage", "duplicates"):
        assert f"(image-folder/{figure}.png)" in text
        assert (out / "image-folder" / f"{figure}.png").stat().st_size > 1000
    assert "Convention: **0/255**" in text and "| g00_scene |" in text


def test_grouping_duplicates_puts_each_cluster_in_one_fold(folder, tmp_path, capsys):
    root, families = folder
    assert cli.main(doctor_args(root, tmp_path, "doctor.group_duplicates=true")) == 0
    groups_file = root / "duplicate_groups.csv"
    try:
        with open(groups_file, newline="") as f:
            rows = list(csv.DictReader(f))
        assert {
            frozenset(r["id"] for r in rows if r["cluster"] == c)
            for c in {r["cluster"] for r in rows}
        } == {frozenset((o, *c)) for o, c in families.items()}
        cfg = compose_config("tools", doctor_args(root, tmp_path)[1:6])
        samples = load_competition(cfg).train_samples()
        folds = load_or_make_folds(samples, root / "folds.csv", 5, 42)

        def in_one_fold(fold_of: dict[str, int]) -> list[bool]:
            return [len({fold_of[i] for i in (o, *c)}) == 1 for o, c in families.items()]

        assert all(in_one_fold(folds))
        # without the clusters, some copy lands in another fold than its original
        assert not all(in_one_fold(make_folds(samples, 5, 42)))
        assert "0 across folds" in capsys.readouterr().out
        # A folds.csv that splits a cluster (made before the doctor ran) is stale: an error.
        split = dict(folds, g100_exact=(folds["g00_scene"] + 1) % 5)
        (root / "folds.csv").write_text(
            "id,fold\n" + "".join(f"{i},{f}\n" for i, f in split.items())
        )
        with pytest.raises(PodiumError, match=r"clusters of duplicate_groups.csv span folds \(1, "):
            load_or_make_folds(samples, root / "folds.csv", 5, 42)
        # the doctor itself reports the stale folds.csv as a problem, and exits 0
        assert cli.main(doctor_args(root, tmp_path)) == 0
        assert (
            "folds.csv: near-duplicate clusters of duplicate_groups.csv span"
            in capsys.readouterr().out
        )
    finally:
        groups_file.unlink(missing_ok=True)
        (root / "folds.csv").unlink(missing_ok=True)


def test_the_cache_rereads_only_changed_files(folder, tmp_path, monkeypatch):
    from podium.doctor import facts as facts_module

    root, _ = folder
    competition = load_competition(compose_config("tools", doctor_args(root, tmp_path)[1:6]))
    splits = {"train": competition.train_samples(), "test": competition.test_samples()}
    first = scan(competition, splits, tmp_path / "cache.npz")
    reads = []
    real = facts_module.read_facts
    monkeypatch.setattr(
        facts_module, "read_facts", lambda *a, **k: reads.append(a[1].id) or real(*a, **k)
    )
    again = scan(competition, splits, tmp_path / "cache.npz")
    assert reads == ["g21_scene"]  # only the sample whose mask failed (failures are not cached)
    for a, b in zip(first, again, strict=True):
        assert (a.facts.phash, a.facts.mask_values, a.facts.coverage, a.facts.mode) == (
            b.facts.phash,
            b.facts.mask_values,
            b.facts.coverage,
            b.facts.mode,
        )
        np.testing.assert_array_equal(a.facts.thumb, b.facts.thumb)
    touched = root / "images" / "g05_scene.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    reads.clear()
    scan(competition, splits, tmp_path / "cache.npz")
    assert sorted(reads) == ["g05_scene", "g21_scene"]


@pytest.mark.parametrize("max_distance", [0, 3, 8, 12, 16])
def test_the_bucketed_search_equals_all_pairs(max_distance):
    rng = np.random.default_rng(max_distance)
    hashes = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, 3000, dtype=np.uint64
    )
    for i in range(0, 600, 2):  # near copies at 0..20 bits
        flips = rng.choice(64, int(rng.integers(0, 21)), replace=False)
        hashes[i + 1] = hashes[i] ^ np.uint64(sum(1 << int(b) for b in flips))
    hashes[700:705] = hashes[699]  # a bucket of six equal hashes
    expected = dedup.all_pairs(hashes, max_distance)
    assert len(expected) > 20
    for bands in (None, 4, 7):
        np.testing.assert_array_equal(dedup.near_pairs(hashes, max_distance, bands), expected)
    assert len(dedup.near_pairs(hashes[:1], max_distance)) == 0


def test_clusters_chain_pairs_and_fold_groups_chain_clusters():
    labels = dedup.clusters(6, np.array([[0, 1, 3], [1, 2, 5], [4, 5, 0]]))
    assert labels[0] == labels[1] == labels[2] != labels[3] and labels[4] == labels[5]
    samples = [Sample(f"i{k}", Path("x"), group=f"g{k // 2}") for k in range(8)]  # g0..g3
    groups = fold_groups(samples, {"i1": "c", "i2": "c", "i3": "d", "i5": "d"})  # g0-g1-g2
    assert len({groups[k] for k in range(6)}) == 1 and groups[6] == groups[7] != groups[0]
    folds = make_folds(samples, 2, 0, {"i1": "c", "i2": "c", "i3": "d", "i5": "d"})
    assert len({folds[f"i{k}"] for k in range(6)}) == 1


def test_a_stale_duplicate_groups_file_is_an_error(tmp_path):
    (tmp_path / "duplicate_groups.csv").write_text("id,cluster\ngone,gone\n")
    with pytest.raises(PodiumError, match="1 ids the competition does not have .*gone"):
        read_duplicate_groups(tmp_path / "duplicate_groups.csv", [Sample("a", Path("x"))])


def test_a_bad_threshold_is_a_one_line_error(folder, tmp_path, capsys):
    # A config error (podium.schema): exit 2, one line.
    assert cli.main(doctor_args(folder[0], tmp_path, "doctor.hash_distance=40")) == 2
    assert (
        capsys.readouterr().err
        == "podium: error: doctor.hash_distance=40: expected an integer from 0 to 20\n"
    )


# -- real data ----------------------------------------------------------------------------------
def run_on_shared(name: str, tmp_path: Path, capsys) -> tuple[str, str]:
    args = [
        "doctor",
        "competition=image-folder",
        f"competition.data_dir={SHARED / name}",
        f"doctor.out_dir={tmp_path}",
    ]
    assert cli.main(args) == 0
    return capsys.readouterr().out, (tmp_path / "image-folder.md").read_text()


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "tgs_salt").is_dir(), reason="../shared/data/tgs_salt absent")
def test_doctor_on_tgs_salt(tmp_path, capsys):
    stdout, report = run_on_shared("tgs_salt", tmp_path, capsys)
    assert stdout.startswith("images: 3200 train; sizes 101x101 (3200)\n")
    # 1214 of the 3200 masks are empty (tgs_salt/README.md), all masks 0/255
    assert "masks: 0/255; 37.9% empty; foreground in 62.1%" in stdout
    assert "Raw value sets of the mask files: {0,255} (1986), {0} (1214)." in report
    assert "RGB (3x8-bit) (3200)" in report
    assert "64 featureless images not compared" in stdout  # TGS's blank patches
    assert "duplicates: 3 pairs (0 exact) in 3 clusters" in stdout  # of 72 hash candidates


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "tgs_salt").is_dir(), reason="../shared/data/tgs_salt absent")
def test_doctor_on_tgs_salt_in_its_kaggle_layout(tmp_path, capsys):
    """The TGS adapter reads masks from train.csv (run-length); the 18000 test images listed in
    sample_submission.csv are not in ../shared/data: one problem line, and the doctor goes on."""
    real, root = SHARED / "tgs_salt", tmp_path / "data" / "tgs-salt-identification-challenge"
    (root / "train").mkdir(parents=True)
    for name in ("train.csv", "depths.csv", "sample_submission.csv"):
        os.symlink(real / "original" / name, root / name)
    os.symlink(real / "images", root / "train" / "images")
    args = [
        "doctor",
        "competition=tgs-salt-identification-challenge",
        f"paths.data_dir={tmp_path / 'data'}",
        f"doctor.out_dir={tmp_path / 'out'}",
    ]
    assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert "masks: encoded (no mask files); 37.9% empty; salt in 62.1%" in stdout
    assert "  - images: 18000 test images cannot be read, e.g. " in stdout
    assert "(file missing)" in stdout


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "kvasir_seg").is_dir(), reason="../shared/data/kvasir_seg absent")
def test_doctor_on_kvasir(tmp_path, capsys):
    stdout, report = run_on_shared("kvasir_seg", tmp_path, capsys)
    assert stdout.startswith("images: 664 train; sizes ")
    assert "masks: 0/255; 0.0% empty" in stdout
    assert "RGB (3x8-bit) (664)" in report
    # frames of one colonoscopy: 5 pairs (of 398 hash candidates), e.g. the same polyp twice
    assert "duplicates: 5 pairs" in stdout


@pytest.mark.realdata
@pytest.mark.skipif(
    not (SHARED / "isbi2012_em").is_dir(), reason="../shared/data/isbi2012_em absent"
)
def test_doctor_on_isbi(tmp_path, capsys):
    stdout, report = run_on_shared("isbi2012_em", tmp_path, capsys)
    assert stdout.startswith("images: 24 train; sizes 512x512 (24)\n")
    assert "masks: 0/255; 0.0% empty" in stdout


def test_the_benchmark_runs_and_ends_with_its_headline(tmp_path, monkeypatch, capsys):
    import re
    import runpy
    import sys

    import torch

    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # the script sets them; restored after
    threads = torch.get_num_threads()
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(sys, "argv", ["doctor.py", "--tiny", "--results", str(results)])
    try:
        runpy.run_path(str(bench / "doctor.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"doctor search 2000 in \d+\.\d s; all-pairs/bucketed \d+\.\d", last)
    assert "planted copies found 19/19" in results.read_text()
