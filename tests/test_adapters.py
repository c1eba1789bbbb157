"""Competition adapters on tiny fake copies of each competition's exact file layout: list ->
decode -> folds (no group crosses them) -> write a submission -> validate -> score; and, when
../shared/data is present, on the real files."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from podium.competition import Competition, load_competition
from podium.config import compose_config
from podium.data import make_folds
from podium.io import PodiumError
from podium.rle import rle_encode
from podium.submission import (
    check_adapter,
    score_command,
    score_submission,
    validate_submission,
    write_submission,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KAGGLE_MASKS = SHARED / "kaggle_masks"


@functools.cache
def _competition_config(name: str, data_dir: str) -> dict:
    cfg = compose_config("tools", [f"competition={name}", f"paths.data_dir={data_dir}"])
    config = OmegaConf.to_container(cfg.competition, resolve=False)  # keep task interpolations
    config["data_dir"] = cfg.competition.data_dir
    return config


def make_competition(name: str, data_dir: Path, **changes) -> Competition:
    """The adapter of competitions/<name> on `data_dir`/<name>, with config keys changed."""
    config = OmegaConf.merge(_competition_config(name, str(data_dir)), changes)
    return load_competition(OmegaConf.create({"competition": config}))


def assert_groups_stay_in_one_fold(competition: Competition) -> dict[str, int]:
    samples = competition.train_samples()
    folds = make_folds(samples, int(competition.cfg.n_folds), int(competition.cfg.folds_seed))
    by_group: dict[str, set[int]] = {}
    for sample in samples:
        by_group.setdefault(sample.group or sample.id, set()).add(folds[sample.id])
    assert all(len(f) == 1 for f in by_group.values()), by_group
    assert len(set(folds.values())) == int(competition.cfg.n_folds)
    return folds


def write_and_validate(competition: Competition, tmp_path: Path, predict) -> Path:
    """A submission from `predict(sample) -> prediction` for every test image; must be valid."""
    rows = (
        row
        for s in competition.test_samples()
        for row in competition.submission_rows(s, predict(s))
    )
    path = tmp_path / "submission.csv"
    write_submission(path, rows, competition.submission)
    assert validate_submission(competition, path) == []
    return path


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def write_csv(path: Path, header: str, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


# -- Carvana --------------------------------------------------------------------------------------
CARVANA = "carvana-image-masking-challenge"


def fake_carvana(base: Path, shape=(8, 12)) -> Path:
    """4 cars x 16 views: train/*.jpg, train_masks/*_mask.gif ({0,1} palette GIFs as Kaggle's),
    train_masks.csv (row-major RLE), test/*.jpg and sample_submission.csv ('1 1' placeholders)."""
    root = base / CARVANA
    height, width = shape
    csv_rows = []
    for car_index, car in enumerate(["0cdf5b5d0ce1", "11f3dc041cfb", "2a4a8964ebf3", "3c6ac8"]):
        for view in range(1, 17):
            name = f"{car}_{view:02d}"
            write_png(root / "train" / f"{name}.jpg", np.full((*shape, 3), 90, np.uint8))
            mask = np.zeros(shape, np.uint8)
            mask[2 : 4 + view % 3, car_index + 1 : width - view % 4] = 1
            (root / "train_masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask, mode="L").convert("P").save(
                root / "train_masks" / f"{name}_mask.gif"
            )
            csv_rows.append((f"{name}.jpg", rle_encode(mask, "C")))
    write_csv(root / "train_masks.csv", "img,rle_mask", csv_rows)
    test_ids = ["fff0000000aa_01.jpg", "fff0000000aa_02.jpg", "fff0000000bb_01.jpg"]
    for image_id in test_ids:
        write_png(root / "test" / image_id, np.zeros((*shape, 3), np.uint8))
    write_csv(root / "sample_submission.csv", "img,rle_mask", [(i, "1 1") for i in test_ids])
    return root


def test_carvana_fake_layout(tmp_path):
    root = fake_carvana(tmp_path)
    carvana = make_competition(CARVANA, tmp_path, options={"image_shape": [8, 12]}, n_folds=3)
    summary = check_adapter(carvana)
    assert summary["train"] == 64 and summary["groups"] == 4 and summary["test"] == 3
    samples = carvana.train_samples()
    assert samples[0].id == "0cdf5b5d0ce1_01.jpg" and samples[0].group == "0cdf5b5d0ce1"
    folds = assert_groups_stay_in_one_fold(carvana)  # the 16 views of a car share a fold
    assert sorted(list(folds.values()).count(f) for f in set(folds.values())) == [16, 16, 32]
    # The GIF masks and train_masks.csv (row-major) give the same masks.
    from_csv = make_competition(CARVANA, tmp_path, options={"image_shape": [8, 12], "masks": "csv"})
    for gif_sample, csv_sample in list(zip(samples, from_csv.train_samples(), strict=True))[::7]:
        np.testing.assert_array_equal(
            carvana.read_mask(gif_sample, (8, 12)), from_csv.read_mask(csv_sample, (8, 12))
        )
    # Row-major: a horizontal bar on row 2, columns 3-8 is ONE run starting at 2*12 + 3 + 1.
    bar = np.zeros((8, 12), np.uint8)
    bar[2, 3:9] = 1
    assert carvana.submission_rows(samples[0], bar) == [("0cdf5b5d0ce1_01.jpg", "28 6")]
    path = write_and_validate(carvana, tmp_path, lambda s: bar)
    assert path.read_text().splitlines()[:2] == ["img,rle_mask", "fff0000000aa_01.jpg,28 6"]
    write_csv(
        root / "solution.csv",
        "img,rle_mask",
        [
            (i, "28 6")
            for i in ("fff0000000aa_01.jpg", "fff0000000aa_02.jpg", "fff0000000bb_01.jpg")
        ],
    )
    assert score_submission(carvana, path, root / "solution.csv") == 1.0


@pytest.mark.realdata
@pytest.mark.skipif(not KAGGLE_MASKS.is_dir(), reason=f"{KAGGLE_MASKS} not present")
def test_carvana_real_masks_and_sample_submission(tmp_path):
    real = KAGGLE_MASKS / CARVANA
    root = tmp_path / CARVANA
    (root / "train").mkdir(parents=True)
    os.symlink(real / "train_masks_gif_sample", root / "train_masks")
    os.symlink(real / "sample_submission.csv", root / "sample_submission.csv")
    for gif in sorted((root / "train_masks").glob("*.gif")):  # empty stand-ins for the JPEGs
        (root / "train" / gif.name.replace("_mask.gif", ".jpg")).touch()
    carvana = make_competition(CARVANA, tmp_path)
    samples = carvana.train_samples()
    assert len(samples) == 16 and {s.group for s in samples} == {"0cdf5b5d0ce1"}
    gaps = []
    for sample in samples:
        mask = carvana.read_mask(sample, (1280, 1918))
        assert mask.shape == (1280, 1918) and 0.05 < mask.mean() < 0.5
        starts = [int(v) for v in carvana.encode_mask(mask).split()[::2][:4]]
        gaps += list(np.diff(starts))
    # Row-major runs of a silhouette step by about one image row (1918): the printed heads of
    # the real train_masks.csv step by 1867-1918 (kaggle_masks/README.md).
    assert 1800 < np.median(gaps) <= 1918
    # The real 100,064-row sample submission is valid ('1 1' everywhere).
    assert validate_submission(carvana, carvana.sample_submission_path()) == []


# -- Ultrasound Nerve -----------------------------------------------------------------------------
NERVE = "ultrasound-nerve-segmentation"


def fake_nerve(base: Path, shape=(6, 8)) -> Path:
    """6 subjects x 3 frames: train/<s>_<i>.tif (+ _mask.tif), train_masks.csv (column-major
    RLE, empty masks as ''), test/<n>.tif, sample_submission.csv (img, pixels)."""
    root = base / NERVE
    rows = []
    for subject in range(1, 7):
        for img in range(1, 4):
            write_png(root / "train" / f"{subject}_{img}.tif", np.full(shape, 50, np.uint8))
            mask = np.zeros(shape, np.uint8)
            if img != 2:  # many empty masks, as in the real data
                mask[1 : 2 + img, subject % 4 : subject % 4 + 3] = 1
            write_png(root / "train" / f"{subject}_{img}_mask.tif", mask * 255)
            rows.append((subject, img, rle_encode(mask, "F")))
    write_csv(root / "train_masks.csv", "subject,img,pixels", rows)
    for img in range(1, 4):
        write_png(root / "test" / f"{img}.tif", np.zeros(shape, np.uint8))
    write_csv(root / "sample_submission.csv", "img,pixels", [(i, "") for i in range(1, 4)])
    return root


def test_ultrasound_nerve_fake_layout(tmp_path):
    root = fake_nerve(tmp_path)
    nerve = make_competition(NERVE, tmp_path, options={"image_shape": [6, 8]})
    summary = check_adapter(nerve)
    assert summary == {**summary, "train": 18, "groups": 6, "test": 3}
    samples = nerve.train_samples()
    assert samples[0].id == "1_1" and samples[0].group == "1"
    assert [s.stratify for s in samples[:3]] == [True, False, True]
    assert_groups_stay_in_one_fold(nerve)  # a subject's frames share a fold
    # train_masks.csv decodes to the _mask.tif files.
    for sample in samples:
        tif = cv2.imread(str(root / "train" / f"{sample.id}_mask.tif"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(nerve.read_mask(sample, (6, 8)), (tif > 0).astype(np.uint8))
    # Column-major: a vertical bar in column 2, rows 1-4, is one run from 2*6 + 1 + 1.
    bar = np.zeros((6, 8), np.uint8)
    bar[1:5, 2] = 1
    path = write_and_validate(nerve, tmp_path, lambda s: bar if s.id == "1" else bar * 0)
    assert path.read_text().splitlines() == ["img,pixels", "1,14 4", "2,", "3,"]
    write_csv(root / "solution.csv", "img,pixels", [(1, "14 4"), (2, ""), (3, "1 1")])
    # Dice per image: 1 (exact), 1 (empty/empty), 0 (a missed pixel): mean 2/3.
    assert score_submission(nerve, path, root / "solution.csv") == pytest.approx(2 / 3)


@pytest.mark.realdata
@pytest.mark.skipif(not KAGGLE_MASKS.is_dir(), reason=f"{KAGGLE_MASKS} not present")
def test_ultrasound_nerve_real_train_masks_group_by_subject(tmp_path):
    root = tmp_path / NERVE
    root.mkdir()
    os.symlink(KAGGLE_MASKS / NERVE / "train_masks.csv", root / "train_masks.csv")
    nerve = make_competition(NERVE, tmp_path)
    samples = nerve.train_samples()
    assert len(samples) == 5635 and len({s.group for s in samples}) == 47
    assert sum(s.stratify for s in samples) == 2323  # non-empty masks
    assert_groups_stay_in_one_fold(nerve)
    assert nerve.read_mask(samples[0], (420, 580)).sum() > 0


# -- TGS Salt -------------------------------------------------------------------------------------
TGS = "tgs-salt-identification-challenge"


def fake_tgs(base: Path) -> Path:
    """train/images/<id>.png, train/masks/<id>.png, train.csv, depths.csv, test/images/<id>.png,
    sample_submission.csv: 12 training and 3 test ids of the real 101x101 size."""
    root = base / TGS
    train_ids = [f"{i:02d}a{i * 7 % 10}b0c1d" for i in range(12)]
    test_ids = ["ffe1", "ffe2", "ffe3"]
    rows = []
    for index, image_id in enumerate(train_ids):
        write_png(
            root / "train" / "images" / f"{image_id}.png", np.full((101, 101, 3), 99, np.uint8)
        )
        flat = np.zeros(101 * 101, np.uint8)
        flat[: min(index, 6) * 1020 if index < 11 else None] = 1  # 0, 1/10 .. 6/10, then full
        mask = flat.reshape((101, 101), order="F")
        write_png(root / "train" / "masks" / f"{image_id}.png", mask * 255)
        rows.append((image_id, rle_encode(mask, "F")))
    write_csv(root / "train.csv", "id,rle_mask", rows)
    depths = [(i, 100 + n) for n, i in enumerate(train_ids + test_ids)]
    write_csv(root / "depths.csv", "id,z", depths)
    for image_id in test_ids:
        write_png(root / "test" / "images" / f"{image_id}.png", np.zeros((101, 101, 3), np.uint8))
    write_csv(root / "sample_submission.csv", "id,rle_mask", [(i, "1 1") for i in test_ids])
    return root


def test_tgs_salt_fake_layout(tmp_path):
    root = fake_tgs(tmp_path)
    tgs = make_competition(TGS, tmp_path)
    summary = check_adapter(tgs)
    assert summary["train"] == 12 and summary["test"] == 3
    samples = tgs.train_samples()
    # Coverage classes ceil(10 * area / 10201): 0 for the empty mask, 1 for 1020 px ...
    assert [s.stratify for s in samples] == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 10]
    assert samples[3].meta["depth"] == 103 and tgs.test_samples()[0].meta["depth"] == 112
    for sample in samples:
        png = cv2.imread(str(root / "train" / "masks" / f"{sample.id}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(tgs.read_mask(sample, (101, 101)), (png > 0).astype(np.uint8))
    truth = np.zeros((101, 101), np.uint8)
    truth[10:20, 10:20] = 1  # 100 px
    pred = np.zeros_like(truth)
    pred[10:20, 10:18] = 1  # 80 px inside: IoU 0.8 -> hits at 0.50..0.75 = 0.6
    write_csv(
        root / "solution.csv",
        "id,rle_mask",
        [(i, rle_encode(truth)) for i in ("ffe1", "ffe2")] + [("ffe3", "")],
    )
    path = write_and_validate(
        tgs, tmp_path, lambda s: {"ffe1": truth, "ffe2": pred}.get(s.id, pred * 0)
    )
    # per image: 1 (exact), 0.6, 1 (empty/empty): mean 2.6 / 3
    assert score_submission(tgs, path, root / "solution.csv") == pytest.approx(2.6 / 3)


@pytest.mark.realdata
@pytest.mark.skipif(
    not (SHARED / "tgs_salt").is_dir(), reason="../shared/data/tgs_salt not present"
)
def test_tgs_salt_real_files(tmp_path):
    real = SHARED / "tgs_salt"
    root = tmp_path / TGS
    (root / "train").mkdir(parents=True)
    for name in ("train.csv", "depths.csv", "sample_submission.csv"):
        os.symlink(real / "original" / name, root / name)
    os.symlink(real / "images", root / "train" / "images")
    tgs = make_competition(TGS, tmp_path)
    summary = check_adapter(tgs)
    assert summary["train"] == 3200 and summary["test"] == 18000
    samples = tgs.train_samples()
    assert sum(s.stratify == 0 for s in samples) == 1214  # empty masks (tgs_salt/README.md)
    for sample in samples[::400]:
        png = cv2.imread(str(real / "masks" / f"{sample.id}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(tgs.read_mask(sample, (101, 101)), (png > 0).astype(np.uint8))
    assert validate_submission(tgs, tgs.sample_submission_path()) == []


# -- Robotic instruments (EndoVis 2017) -----------------------------------------------------------
ROBOTIC = "robotic-instruments-2017"
FRAME = (
    12,
    16,
)  # fake frames; cropped by [1, 2, 8, 10] to 8x10 like the real 1080x1920 -> 1024x1280


def fake_endovis(base: Path) -> Path:
    """train/instrument_dataset_{1..4} (2 frames each) and test/instrument_dataset_{1,2}
    (1 frame each, with ground truth) in the release's layout. Every frame has a bipolar
    forceps (shaft 10 / wrist 20 / claspers 30 in a row), a prograsp forceps shaft, and a
    non-robotic tool in Other_labels."""
    root = base / ROBOTIC
    for split, videos, frames in (("train", range(1, 5), 2), ("test", (1, 2), 1)):
        for video in videos:
            folder = root / split / f"instrument_dataset_{video}"
            for frame in range(frames):
                name = f"frame{frame:03d}.png"
                write_png(folder / "left_frames" / name, np.full((*FRAME, 3), 40 * video, np.uint8))
                bipolar = np.zeros(FRAME, np.uint8)
                bipolar[2, 3:6], bipolar[2, 6:8], bipolar[2, 8:10] = 10, 20, 30
                prograsp = np.zeros(FRAME, np.uint8)
                prograsp[5, 3 + frame : 7] = 10
                other = np.zeros(FRAME, np.uint8)
                other[7, 2:4] = 255
                truth = folder / "ground_truth"
                write_png(truth / "Maryland_Bipolar_Forceps_labels" / name, bipolar)
                write_png(truth / "Right_Prograsp_Forceps_labels" / name, prograsp)
                write_png(truth / "Other_labels" / name, other)
    return root


def endovis(base: Path, labels: str) -> Competition:
    return make_competition(ROBOTIC, base, options={"labels": labels, "crop": [1, 2, 8, 10]})


def test_robotic_instruments_fake_layout(tmp_path, capsys):
    root = fake_endovis(tmp_path)
    binary, parts, types = (endovis(tmp_path, k) for k in ("binary", "parts", "type"))
    assert (binary.task, parts.task, types.task) == ("binary", "multiclass", "multiclass")
    assert (binary.num_outputs, parts.num_outputs, types.num_outputs) == (1, 4, 8)
    sample = binary.train_samples()[0]
    assert sample.id == "instrument_dataset_1_frame000" and sample.group == "instrument_dataset_1"
    # Frame 0 after the crop (rows 1.., cols 2..): the bipolar forceps on row 1, cols 1-7
    # (shaft 1-3, wrist 4-5, claspers 6-7); the prograsp shaft on row 4, cols 1-4; the other
    # tool on row 6, cols 0-1 (type task only).
    expected_type = np.zeros((8, 10), np.uint8)
    expected_type[1, 1:8], expected_type[4, 1:5], expected_type[6, 0:2] = 1, 2, 7
    expected_parts = np.zeros((8, 10), np.uint8)
    expected_parts[1, 1:4], expected_parts[1, 4:6], expected_parts[1, 6:8] = 1, 2, 3
    expected_parts[4, 1:5] = 1
    np.testing.assert_array_equal(types.read_mask(sample, (8, 10)), expected_type)
    np.testing.assert_array_equal(parts.read_mask(sample, (8, 10)), expected_parts)
    np.testing.assert_array_equal(binary.read_mask(sample, (8, 10)), (expected_parts > 0) * 1)
    assert binary.read_image(sample).shape == (8, 10, 3)
    for competition in (binary, parts, types):
        summary = check_adapter(competition)
        assert summary["train"] == 8 and summary["groups"] == 4 and summary["test"] == 2
        assert_groups_stay_in_one_fold(competition)  # a video never spans two folds

    binary.prepare()  # writes the sample submissions and solutions of the three tasks
    for kind, competition in (("binary", binary), ("parts", parts), ("type", types)):
        assert (root / f"sample_submission_{kind}.csv").is_file()
        solution = root / "solution" / f"solution_{kind}.csv"
        assert competition.solution_path() == solution
        perfect = write_and_validate(
            competition, tmp_path, lambda s, c=competition: c.read_mask(s, (8, 10))
        )
        assert score_submission(competition, perfect, solution) == 1.0
    header = (root / "sample_submission_parts.csv").read_text().splitlines()[:4]
    assert header == [
        "id,rle_mask",
        "instrument_dataset_1_frame000_shaft,",
        "instrument_dataset_1_frame000_wrist,",
        "instrument_dataset_1_frame000_claspers,",
    ]

    # Parts, by hand: predict only the bipolar forceps' parts right (the prograsp shaft is
    # missed). Truth shaft = 3 + 4 px, predicted 3 -> IoU 3/7; wrist and claspers exact.
    # EndoVis IoU per frame = (3/7 + 1 + 1) / 3 on both test frames.
    def half(sample):
        pred = parts.read_mask(sample, (8, 10))
        pred[4] = 0
        return pred

    path = write_and_validate(parts, tmp_path, half)
    assert score_submission(parts, path, root / "solution" / "solution_parts.csv") == (
        pytest.approx((3 / 7 + 2) / 3)
    )
    # `podium score` prints the extra metric (Dice: shaft 2*3/(3+7) = 0.6) and the IoU last.
    cfg = OmegaConf.create({"competition": parts.cfg, "file": str(path), "solution": None})
    assert score_command(cfg) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"endovis_dice: {(0.6 + 2) / 3:.6f}"
    assert lines[-1] == f"endovis_iou: {(3 / 7 + 2) / 3:.6f}"


def test_robotic_instruments_refuses_a_frame_smaller_than_the_crop(tmp_path):
    fake_endovis(tmp_path)
    competition = make_competition(ROBOTIC, tmp_path)  # the real crop: 1024x1280 at (320, 28)
    with pytest.raises(PodiumError, match=r"smaller than the crop 1280x1024 at \(320, 28\)"):
        competition.read_image(competition.train_samples()[0])


# -- image-folder ---------------------------------------------------------------------------------
def test_image_folder_fake_layout(tmp_path):
    root = tmp_path / "image-folder"
    shapes = {
        "v1_001": (6, 7),
        "v1_002": (6, 7),
        "v2_001": (9, 5),
        "v3_001": (6, 7),
        "v4_001": (5, 5),
        "v5_001": (6, 6),
    }
    for image_id, shape in shapes.items():
        write_png(root / "images" / f"{image_id}.jpg", np.full((*shape, 3), 120, np.uint8))
        mask = np.zeros(shape, np.uint8)
        mask[1:4, 1:3] = 250  # JPEG-like noise around 255 and 0 is thresholded away
        mask[0, 0] = 12
        write_png(root / "masks" / f"{image_id}.png", mask)
    write_png(root / "test" / "t1.png", np.zeros((4, 9, 3), np.uint8))
    folder = make_competition(
        "image-folder", tmp_path, options={"group_regex": r"^(v\d+)_", "test_dir": "test"}
    )
    summary = check_adapter(folder)
    assert summary["train"] == 6 and summary["groups"] == 5 and summary["test"] == 1
    sample = folder.train_samples()[2]
    assert sample.id == "v2_001" and sample.group == "v2"
    mask = folder.read_mask(sample, (9, 5))
    assert mask.sum() == 6 and mask[0, 0] == 0
    assert_groups_stay_in_one_fold(folder)
    write_and_validate(folder, tmp_path, lambda s: np.ones(folder.image_shape(s), np.uint8))


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "kvasir_seg").is_dir(), reason="../shared/data/kvasir_seg absent")
def test_image_folder_on_kvasir_as_is():
    cfg = compose_config(
        "tools", ["competition=image-folder", f"competition.data_dir={SHARED / 'kvasir_seg'}"]
    )
    kvasir = load_competition(cfg)
    summary = check_adapter(kvasir)
    assert summary["train"] == 664 and summary["test"] == 0 and summary["foreground_pixels"] > 0
    sample = kvasir.train_samples()[0]
    mask = kvasir.read_mask(sample, kvasir.image_shape(sample))
    assert 0.005 < mask.mean() < 0.77  # polyp coverage range of the README


def test_unknown_metric_is_a_one_line_error(tmp_path):
    with pytest.raises(PodiumError, match="unknown metric 'f1'"):
        make_competition(TGS, tmp_path, metric="f1")
