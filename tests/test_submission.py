"""Submission validation (a corpus of malformed files, each refused with its row and reason),
local scoring by hand, and the `podium validate` / `podium score` commands on the demo."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY_DEMO, run_podium
from test_adapters import make_competition

from podium.io import PodiumError, read_csv_rows
from podium.submission import score_submission, validate_submission, write_submission

HEADER = "id,rle_mask\n"
VALID = HEADER + "a,1 3\nb,\nc,2 2 7 3\n"
SIZES = {"a": (4, 5), "b": (4, 5), "c": (3, 3)}  # (H, W): a and b have 20 pixels, c has 9


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A demo_shapes-style folder: sample_submission.csv, test images of two sizes, solution."""
    base = tmp_path_factory.mktemp("submit")
    folder = base / "demo_shapes"
    (folder / "test" / "images").mkdir(parents=True)
    for image_id, shape in SIZES.items():
        cv2.imwrite(str(folder / "test" / "images" / f"{image_id}.png"), np.zeros(shape, np.uint8))
    (folder / "sample_submission.csv").write_text(HEADER + "a,\nb,\nc,\n")
    (folder / "solution").mkdir()
    (folder / "solution" / "solution.csv").write_text(HEADER + "a,1 4\nb,\nc,\n")
    return base


@pytest.fixture(scope="module")
def competition(data_dir):
    return make_competition("demo_shapes", data_dir)


def problems_of(competition, tmp_path, content: str | bytes) -> list[str]:
    path = tmp_path / "submission.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, newline="")
    return validate_submission(competition, path)


def test_a_valid_submission_has_no_problems(competition, tmp_path):
    assert problems_of(competition, tmp_path, VALID) == []
    # Row order is free here, a BOM is harmless and blank lines are skipped (as pandas does).
    shuffled = "\ufeff" + HEADER + "c,\n\nb,\na,1 3\n"
    assert problems_of(competition, tmp_path, shuffled) == []


# (name, file content, what the one problem (or each problem) must say)
MALFORMED = [
    ("bad header", "ID,rle_mask\na,\nb,\nc,\n", ["row 1: header is 'ID,rle_mask', expected"]),
    ("swapped columns", "rle_mask,id\n,a\n,b\n,c\n", ["row 1: header is 'rle_mask,id'"]),
    ("semicolons", "id;rle_mask\na;\nb;\nc;\n", ["row 1: header", "wrong delimiter ';'"]),
    ("tabs", "id\trle_mask\na\t\nb\t\nc\t\n", ["row 1: header", "wrong delimiter '\\t'"]),
    ("missing id", HEADER + "a,\nb,\n", ["id 'c' (row 4 of sample_submission.csv) is missing"]),
    ("extra id", VALID + "zz,\n", ["row 5: id 'zz' is not in sample_submission.csv"]),
    ("duplicate id", VALID + "a,\n", ["row 5: duplicate id 'a' (first at row 2)"]),
    ("empty id", VALID + ",1 1\n", ["row 5: empty id"]),
    ("blanks around id", HEADER + " a,\nb,\nc,\n", ["row 2: id ' a' has blanks around it"]),
    ("odd-length RLE", HEADER + "a,1 3 5\nb,\nc,\n", ["row 2 (id 'a'): odd number of values"]),
    ("zero start", HEADER + "a,0 3\nb,\nc,\n", ["row 2 (id 'a'): pair 1: start 0 is below 1"]),
    ("negative start", HEADER + "a,-2 3\nb,\nc,\n", ["row 2 (id 'a'): value 1 '-2' is not"]),
    ("zero length", HEADER + "a,3 0\nb,\nc,\n", ["row 2 (id 'a'): pair 1: run length 0"]),
    (
        "overlapping runs",
        HEADER + "a,1 5 3 2\nb,\nc,\n",
        ["row 2 (id 'a'): pair 2: run 3..4 over"],
    ),
    (
        "unsorted runs",
        HEADER + "a,10 2 1 3\nb,\nc,\n",
        ["row 2 (id 'a'): pair 2: runs are not"],
    ),
    (
        "run past the image end",
        HEADER + "a,19 3\nb,\nc,\n",
        ["row 2 (id 'a'): pair 1: run 19..21 ends past the image end (the 4x5 image has"],
    ),
    (
        "run past the end of the smaller image",
        HEADER + "a,\nb,\nc,8 3\n",
        ["row 4 (id 'c'): pair 1: run 8..10 ends past the image end (the 3x3 image"],
    ),
    ("NaN", HEADER + "a,\nb,nan\nc,\n", ["row 3 (id 'b'): 'nan' is not a mask; an empty mask is"]),
    ("wrong empty token", HEADER + "a,\nb,-1\nc,\n", ["row 3 (id 'b'): '-1' is not a mask"]),
    ("decimal numbers", HEADER + "a,1.0 3\nb,\nc,\n", ["row 2 (id 'a'): value 1 '1.0' is not"]),
    ("commas in the RLE", HEADER + 'a,"1,3"\nb,\nc,\n', ["row 2 (id 'a'): value 1 '1,3' contains"]),
    ("tab in the RLE", HEADER + 'a,"1\t3"\nb,\nc,\n', ["row 2 (id 'a'): values must be separated"]),
    ("unquoted comma", HEADER + "a,1,3\nb,\nc,\n", ["row 2: 3 fields, expected 2"]),
    ("huge number", HEADER + "a,99999999999999999999 1\nb,\nc,\n", ["row 2 (id 'a'): value 1"]),
    ("row numbers are file lines", HEADER + "a,\n\nb,\nc,0 1\n", ["row 5 (id 'c'): pair 1: start"]),
    ("empty file", "", ["row 1: the file is empty; expected the header id,rle_mask"]),
    ("not UTF-8", b"id,rle_mask\na,\nb,\xff\xfe\nc,\n", ["row 3: not UTF-8 text"]),
    ("unterminated quote", HEADER + 'a,\nb,\nc,"1 3\n', ["row 4: malformed CSV"]),
]


@pytest.mark.parametrize("name, content, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_submissions_are_refused_with_row_and_reason(
    competition, tmp_path, name, content, expected
):
    problems = problems_of(competition, tmp_path, content)
    assert problems, f"{name}: accepted"
    for fragment in expected:
        matching = [p for p in problems if fragment in p]
        assert matching, f"{name}: {fragment!r} not in {problems}"
        assert re.search(r"\brow \d+", matching[0]), matching[0]  # names the row


def test_header_only_lists_every_missing_id_and_the_count(competition, tmp_path):
    problems = problems_of(competition, tmp_path, HEADER)
    assert problems == [
        "id 'a' (row 2 of sample_submission.csv) is missing",
        "id 'b' (row 3 of sample_submission.csv) is missing",
        "id 'c' (row 4 of sample_submission.csv) is missing",
        "0 rows, expected 3 (as in sample_submission.csv)",
    ]


def test_problems_are_capped_with_a_count_of_the_rest(competition, tmp_path):
    rows = "".join(f"x{i},\n" for i in range(30))
    problems = validate_submission(competition, _write(tmp_path, VALID + rows), max_problems=5)
    assert len(problems) == 6 and problems[-1] == "... and 26 more problems"  # 30 extra + count


def test_row_order_is_checked_when_the_competition_requires_it(data_dir, tmp_path):
    ordered = make_competition("demo_shapes", data_dir, options={"ordered_rows": True})
    assert validate_submission(ordered, _write(tmp_path, VALID)) == []
    problems = validate_submission(ordered, _write(tmp_path, HEADER + "b,\na,\nc,\n"))
    assert problems == [
        "row 2: id 'b' is out of order (sample_submission.csv has 'a' here; this competition "
        "requires its order)"
    ]


def test_a_non_blank_empty_token_is_enforced(tmp_path):
    folder = tmp_path / "image-folder"
    (folder / "test").mkdir(parents=True)
    cv2.imwrite(str(folder / "test" / "a.png"), np.zeros((4, 5), np.uint8))
    (folder / "sample_submission.csv").write_text("ImageId,EncodedPixels\na,-1\n")
    siim_like = make_competition(
        "image-folder",
        tmp_path,
        options={"test_dir": "test"},
        submission={"id_column": "ImageId", "mask_column": "EncodedPixels", "empty": "-1"},
    )
    ok = "ImageId,EncodedPixels\na, -1\n"  # SIIM's files write ' -1': blanks are fine
    assert validate_submission(siim_like, _write(tmp_path, ok)) == []
    blank = validate_submission(siim_like, _write(tmp_path, "ImageId,EncodedPixels\na,\n"))
    assert blank == ["row 2 (id 'a'): empty value; this competition writes an empty mask as '-1'"]


def test_without_a_sample_submission_the_test_images_define_the_rows(tmp_path):
    folder = tmp_path / "image-folder"
    for sub in ("images", "masks", "test"):
        (folder / sub).mkdir(parents=True)
    for image_id, shape in SIZES.items():
        cv2.imwrite(str(folder / "test" / f"{image_id}.png"), np.zeros(shape, np.uint8))
    competition = make_competition("image-folder", tmp_path, options={"test_dir": "test"})
    assert validate_submission(competition, _write(tmp_path, VALID)) == []
    problems = validate_submission(competition, _write(tmp_path, HEADER + "a,\nb,\n"))
    assert problems[0] == "id 'c' (row 4 of the test samples) is missing"


def test_written_submissions_validate(competition, tmp_path):
    rows = []
    for sample in competition.test_samples():
        pred = np.zeros(competition.image_shape(sample), np.uint8)
        pred[-1, -1] = 1  # the very last pixel: the edge case of the size check
        rows += competition.submission_rows(sample, pred)
    path = tmp_path / "out" / "submission.csv"
    assert write_submission(path, rows, competition.submission) == 3
    assert validate_submission(competition, path) == []
    assert read_csv_rows(path)[2] == {"id": "c", "rle_mask": "9 1"}


def test_mean_dice_by_hand(competition, data_dir, tmp_path):
    solution = data_dir / "demo_shapes" / "solution" / "solution.csv"
    # a: truth pixels 1-4, prediction 3-6 -> overlap 2: Dice 2*2/(4+4) = 0.5
    # b: both empty -> 1;   c: empty truth, one predicted pixel -> 0;   mean = 1.5 / 3
    submission = _write(tmp_path, HEADER + "c,1 1\nb,\na,3 4\n")
    assert score_submission(competition, submission, solution) == pytest.approx(0.5)
    assert score_submission(competition, solution, solution) == 1.0


def test_scoring_an_invalid_submission_is_an_error(competition, data_dir, tmp_path):
    solution = data_dir / "demo_shapes" / "solution" / "solution.csv"
    with pytest.raises(PodiumError, match=r"row 2 \(id 'a'\): odd number of values"):
        score_submission(competition, _write(tmp_path, HEADER + "a,1\nb,\nc,\n"), solution)
    with pytest.raises(PodiumError, match="id 'c' .* is missing"):
        score_submission(competition, _write(tmp_path, HEADER + "a,\nb,\n"), solution)


def _write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "submission.csv"
    path.write_text(content, newline="")
    return path


# -- the commands, on the generated demo ----------------------------------------------------------
def _last_number(text: str) -> float:
    return float(re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)[-1])


def test_validate_and_score_commands_on_the_demo(demo_paths, demo_data_dir, tmp_path):
    demo = [*TINY_DEMO[1:], *demo_paths]
    sample = demo_data_dir / "sample_submission.csv"
    solution = demo_data_dir / "solution" / "solution.csv"
    run_podium("validate", *demo, f"file={sample}")
    bad = tmp_path / "bad.csv"
    lines = sample.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].split(",")[0] + ",0 5", *lines[3:]]) + "\n")
    proc = run_podium("validate", *demo, f"file={bad}", check=False)
    assert proc.returncode == 1
    assert "row 2 (id " in proc.stdout and "start 0 is below 1" in proc.stdout
    assert "is missing" in proc.stdout and "INVALID" in proc.stdout
    perfect = run_podium("score", *demo, f"file={solution}")
    assert _last_number(perfect.stdout) == 1.0
    # The sample submission predicts every image empty: it scores 1 on the empty images, 0 on
    # the others, so exactly the fraction of empty test masks.
    truth = read_csv_rows(solution)
    expected = sum(not row["rle_mask"] for row in truth) / len(truth)
    empty = run_podium("score", *demo, f"file={sample}")
    assert _last_number(empty.stdout) == pytest.approx(expected, abs=1e-6)
    assert empty.stdout.strip().splitlines()[-1].startswith("dice: ")
