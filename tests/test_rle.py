"""RLE codec: orientation, index base, strictness, peers (pytorch-toolbelt and the classic Kaggle
kernel code) and the real competition files (skipped when ../shared/data is absent)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from podium.rle import RleError, rle_decode, rle_encode, rle_parse, rle_runs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TGS = SHARED / "tgs_salt"
KAGGLE_MASKS = SHARED / "kaggle_masks"


# -- peers ------------------------------------------------------------------------------------
def _toolbelt_rle():
    """pytorch_toolbelt/utils/rle.py loaded on its own: the package __init__ imports torch."""
    spec = importlib.util.find_spec("pytorch_toolbelt")
    if spec is None or spec.origin is None:
        pytest.skip("pytorch_toolbelt is not installed")
    path = Path(spec.origin).parent / "utils" / "rle.py"
    module_spec = importlib.util.spec_from_file_location("toolbelt_rle", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def kernel_rle_encode(img: np.ndarray, order: str) -> str:
    """The classic Kaggle-kernel encoder ('mask2rle'): pad with zeros, diff, +1 for 1-based."""
    pixels = img.flatten(order=order)
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def kernel_rle_decode(mask_rle: str, shape: tuple[int, int], order: str) -> np.ndarray:
    """The classic Kaggle-kernel decoder ('rle2mask')."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape, order=order)


def random_masks(seed: int = 0):
    rng = np.random.default_rng(seed)
    for shape in [(1, 1), (1, 7), (7, 1), (5, 8), (13, 11), (32, 48), (101, 101)]:
        for density in (0.0, 0.05, 0.5, 0.95, 1.0):
            yield (rng.random(shape) < density).astype(np.uint8)
        blob = np.zeros(shape, np.uint8)
        blob[shape[0] // 4 : 3 * shape[0] // 4 + 1, shape[1] // 3 : shape[1] - 1] = 1
        yield blob


# -- orientation and base, by hand -------------------------------------------------------------
# 3x4 mask: column 1 set in rows 1-2, and the top-right pixel.
#   0 0 0 1
#   0 1 0 0
#   0 1 0 0
HAND = np.array([[0, 0, 0, 1], [0, 1, 0, 0], [0, 1, 0, 0]], np.uint8)


def test_column_major_numbers_down_the_columns():
    # F: pixel k (1-based) is row (k-1) % 3, column (k-1) // 3: column 1 is pixels 4..6,
    # so rows 1-2 are 5, 6; the top-right pixel (0, 3) is pixel 10.
    assert rle_encode(HAND, "F") == "5 2 10 1"
    assert rle_encode(HAND, "F", base=0) == "4 2 9 1"


def test_row_major_numbers_along_the_rows():
    # C: pixel k (1-based) is row (k-1) // 4, column (k-1) % 4: (0,3) is 4, (1,1) is 6, (2,1) is 10.
    assert rle_encode(HAND, "C") == "4 1 6 1 10 1"
    np.testing.assert_array_equal(rle_decode("4 1 6 1 10 1", (3, 4), "C"), HAND)
    np.testing.assert_array_equal(rle_decode("5 2 10 1", (3, 4), "F"), HAND)


def test_runs_array_and_edges():
    full = np.ones((2, 3), np.uint8)
    assert rle_encode(full) == "1 6"
    assert rle_encode(np.zeros((2, 3), np.uint8)) == ""
    corners = np.zeros((2, 3), np.uint8)
    corners[0, 0] = corners[1, 2] = 1
    assert rle_runs(corners, "F").tolist() == [1, 1, 6, 1]
    np.testing.assert_array_equal(rle_decode("1 1 6 1", (2, 3)), corners)


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("base", [0, 1])
def test_round_trip(order, base):
    for mask in random_masks():
        text = rle_encode(mask, order, base)
        np.testing.assert_array_equal(rle_decode(text, mask.shape, order, base), mask)


def test_bad_conventions_are_refused():
    with pytest.raises(ValueError, match="order must be"):
        rle_encode(HAND, "row-major")
    with pytest.raises(ValueError, match="base must be"):
        rle_decode("1 1", (3, 4), "F", base=2)


# -- peers -------------------------------------------------------------------------------------
def test_matches_pytorch_toolbelt():
    toolbelt = _toolbelt_rle()
    for mask in random_masks(1):
        ours = rle_encode(mask, "F")
        assert toolbelt.rle_to_string(toolbelt.rle_encode(mask)) == ours
        if ours:
            theirs = toolbelt.rle_decode(ours, mask.shape, np.uint8)
            np.testing.assert_array_equal(theirs, rle_decode(ours, mask.shape, "F"))


@pytest.mark.parametrize("order", ["F", "C"])
def test_matches_kaggle_kernel_code(order):
    for mask in random_masks(2):
        ours = rle_encode(mask, order)
        assert kernel_rle_encode(mask, order) == ours
        np.testing.assert_array_equal(
            kernel_rle_decode(ours, mask.shape, order), rle_decode(ours, mask.shape, order)
        )


# -- strictness --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, reason",
    [
        ("1 2 3", "odd number of values (3)"),
        ("0 2", "pair 1: start 0 is below 1"),
        ("3 2 8 0", "pair 2: run length 0 is not positive"),
        ("-1 2", "'-1' is not a non-negative integer"),
        ("1 -2", "'-2' is not a non-negative integer"),
        ("1.0 2", "'1.0' is not a non-negative integer"),
        ("+1 2", "'+1' is not a non-negative integer"),
        ("1,2", "contains a separator"),
        ("nan", "is 'nan': not a run-length string"),
        ("None", "is 'None': not a run-length string"),
        ("1\t2", "separated by spaces"),
        ("\u0663 2", "is not a non-negative integer"),  # an Arabic-Indic digit
        ("8 2 3 1", "pair 2: runs are not sorted (start 3 after 8)"),
        ("3 1 3 2", "pair 2: runs are not sorted"),
        ("2 4 5 2", "pair 2: run 5..6 overlaps the previous run 2..5"),
        ("11 3", "pair 1: run 11..13 ends past the image end (the 3x4 image has pixels 1..12)"),
        ("1 1 12 2", "pair 2: run 12..13 ends past the image end"),
        ("123456789012345678901 1", "far too large"),
    ],
)
def test_malformed_strings_are_refused_with_the_reason(text, reason):
    with pytest.raises(RleError) as error:
        rle_decode(text, (3, 4))
    assert reason in str(error.value)


def test_lenient_only_about_blanks_and_adjacent_runs():
    # Leading/trailing/double spaces (SIIM's full file has a leading space) are fine, and runs
    # that touch (5 2 7 1) decode as one, as every Kaggle decoder does.
    np.testing.assert_array_equal(rle_decode(" 5  2 10 1 ", (3, 4)), HAND)
    np.testing.assert_array_equal(rle_decode("5 1 6 1 10 1", (3, 4)), HAND)
    assert rle_decode("", (3, 4)).sum() == 0 and rle_decode(None, (3, 4)).sum() == 0


def test_parse_checks_without_building_the_mask():
    starts, lengths = rle_parse("5 2 10 1")
    assert starts.tolist() == [4, 9] and lengths.tolist() == [2, 1]
    assert rle_parse("9999999 5")[1].tolist() == [5]  # no size: anything positive and sorted
    with pytest.raises(RleError, match="past the image end"):
        rle_parse("9999999 5", 1000)


# -- real competition files ----------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.skipif(not TGS.is_dir(), reason=f"{TGS} not present")
def test_tgs_train_csv_round_trips_byte_identical_and_matches_the_png_masks():
    with open(TGS / "original" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3200
    transposed_differs = 0
    for row in rows:
        mask = rle_decode(row["rle_mask"], (101, 101), "F", 1)
        assert rle_encode(mask, "F", 1) == row["rle_mask"], row["id"]
        png = cv2.imread(str(TGS / "masks" / f"{row['id']}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(mask, (png > 0).astype(np.uint8), err_msg=row["id"])
        transposed_differs += not np.array_equal(rle_decode(row["rle_mask"], (101, 101), "C"), mask)
    assert transposed_differs > 1500  # the order matters: a row-major reading is wrong


@pytest.mark.realdata
@pytest.mark.skipif(not KAGGLE_MASKS.is_dir(), reason=f"{KAGGLE_MASKS} not present")
def test_ultrasound_nerve_masks_are_column_major_single_blobs():
    with open(KAGGLE_MASKS / "ultrasound-nerve-segmentation" / "train_masks.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5635
    for row in rows:  # every row passes the strict check (cheap: no mask is built)
        rle_parse(row["pixels"], (420, 580), 1)
    non_empty = [r["pixels"] for r in rows if r["pixels"]][::40]  # decoding all takes ~10 s
    for text in non_empty:
        mask = rle_decode(text, (420, 580), "F")
        assert rle_encode(mask, "F") == text
        assert cv2.connectedComponents(mask, connectivity=8)[0] - 1 == 1
        striped = rle_decode(text, (420, 580), "C")
        assert cv2.connectedComponents(striped, connectivity=8)[0] - 1 > 10


@pytest.mark.realdata
@pytest.mark.skipif(not KAGGLE_MASKS.is_dir(), reason=f"{KAGGLE_MASKS} not present")
def test_severstal_runs_reach_the_last_pixel_so_the_base_is_one():
    path = (
        KAGGLE_MASKS
        / "severstal-steel-defect-detection"
        / "train_subset_long__rebuilt_from_N-31V.csv"
    )
    with open(path) as f:
        rows = list(csv.DictReader(f))
    last_pixel = 0
    for row in rows:
        starts, lengths = rle_parse(row["EncodedPixels"], (256, 1600), base=1)
        last_pixel = max(last_pixel, int(starts[-1] + lengths[-1]))
    assert last_pixel == 256 * 1600  # 0-based indices could not end there
