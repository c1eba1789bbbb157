"""The data check and what it relies on, on generated data with one planted problem each: broken
PNG / JPEG / TIFF files, 12- and 16-bit images, 0/1, 0/255, colour and grey masks against each
mask encoding, size mismatches, every kind of bad RLE, and CSV files saved by Excel, cut short,
with a wrong header, empty, or with repeated ids; then through the real command line: each
problem is one line naming its file (and CSV row), the count follows, nothing trains."""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY_DEMO, TINY_TRAIN, run_podium
from omegaconf import OmegaConf
from PIL import Image

from podium import datacheck
from podium.competition import Competition, Sample, load_competition
from podium.config import compose_config
from podium.datacheck import DataCheckError, check_samples, require_clean
from podium.io import PodiumError, read_csv_rows

H, W = 24, 32


@functools.cache
def _base_config(name: str, data_root: str) -> dict:
    cfg = compose_config("tools", [f"competition={name}", f"paths.data_dir={data_root}"])
    config = OmegaConf.to_container(cfg.competition, resolve=False)
    config["data_dir"] = cfg.competition.data_dir
    return config


def competition(name: str, data_root: Path, **changes) -> Competition:
    config = OmegaConf.merge(_base_config(name, str(data_root)), changes)
    return load_competition(OmegaConf.create({"competition": config}))


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def blob_mask(value: int = 1) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (14, 11), 7, value, -1)
    return mask


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def image_folder(tmp_path: Path, count: int = 3, mask=None, ext: str = ".png", **changes):
    """`count` images with masks in image-folder's layout (masks: blob_mask() as 0/255)."""
    root = tmp_path / "image-folder"
    for i in range(count):
        write(root / "images" / f"im{i:03d}{ext}", image(i))
        write(root / "masks" / f"im{i:03d}.png", blob_mask(255) if mask is None else mask)
    return root, competition("image-folder", tmp_path, **changes)


def check(comp: Competition, split: str = "train", **kwargs) -> datacheck.DataReport:
    samples = comp.train_samples() if split == "train" else comp.test_samples()
    return check_samples(comp, samples, split, with_masks=split == "train", **kwargs)


# -- broken image files ---------------------------------------------------------------------------
def _truncate(path: Path, fraction: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _bad_crc(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[data.find(b"IDAT") + 12] ^= 0xFF  # a byte of the compressed pixels
    path.write_bytes(bytes(data))


BROKEN_IMAGES = {  # name: (extension, how to break it, what the line says)
    "png_truncated": (".png", _truncate, "cannot read image"),
    "png_bad_crc": (".png", _bad_crc, "broken PNG file"),
    "png_zero_bytes": (".png", lambda p: p.write_bytes(b""), "empty file, 0 bytes"),
    "jpeg_truncated": (".jpg", lambda p: _truncate(p, 0.9), "image file is truncated"),
    "jpeg_zero_bytes": (".jpg", lambda p: p.write_bytes(b""), "empty file, 0 bytes"),
    "jpeg_garbage": (".jpg", lambda p: p.write_bytes(b"\xff\xd8not a jpeg" * 20), "cannot read"),
    "tiff_truncated": (".tif", lambda p: _truncate(p, 0.5), "cannot read image"),
    "tiff_zero_bytes": (".tif", lambda p: p.write_bytes(b""), "empty file, 0 bytes"),
}


@pytest.mark.parametrize("kind", BROKEN_IMAGES)
def test_a_broken_image_file_is_one_line_naming_it(tmp_path, kind, capfd):
    ext, damage, reason = BROKEN_IMAGES[kind]
    root, comp = image_folder(tmp_path, 4, ext=ext)
    broken = root / "images" / f"im002{ext}"
    if kind == "tiff_truncated":  # Pillow's TIFF: the directory first, then the pixels
        Image.fromarray(image(2)).save(broken)
    damage(broken)
    report = check(comp)
    assert report.bad_samples == 1 and len(report.problems) == 1, report.problems
    assert report.problems[0].startswith(f"{broken}: ") and reason in report.problems[0]
    assert "libpng" not in "".join(capfd.readouterr())  # OpenCV's messages stay quiet


def test_a_missing_image_listed_by_a_csv_is_named(tmp_path):
    root, comp = fake_tgs(tmp_path, ["1 5", ""])
    (root / "train" / "images" / "id0.png").unlink()
    report = check(comp)
    assert report.problems == [f"{root / 'train' / 'images' / 'id0.png'}: cannot read image "
                               "(file missing)"]  # fmt: skip


def test_a_broken_mask_file_and_a_mask_of_another_size(tmp_path):
    root, comp = image_folder(tmp_path, 3)
    write(root / "masks" / "im000.png", np.zeros((H, W + 1), np.uint8))
    _truncate(root / "masks" / "im001.png")
    problems = check(comp).problems
    assert problems[0] == (
        f"{root / 'masks' / 'im000.png'}: mask is {W + 1}x{H} but image "
        f"{root / 'images' / 'im000.png'} is {W}x{H}"
    )
    assert problems[1].startswith(f"{root / 'masks' / 'im001.png'}: cannot read mask (")


def test_an_image_of_another_size_than_declared(tmp_path):
    root, comp = image_folder(tmp_path, 2, options={"image_shape": [H, W]})
    write(root / "images" / "im001.png", np.zeros((H, W + 4, 3), np.uint8))
    write(root / "masks" / "im001.png", np.zeros((H, W + 4), np.uint8))
    (line,) = check(comp).problems
    assert line.startswith(f"{root / 'images' / 'im001.png'}: image is {W + 4}x{H} but the ")


# -- mask conventions -----------------------------------------------------------------------------
def _red(mask01: np.ndarray) -> np.ndarray:
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[mask01 > 0] = (0, 0, 255)  # red in OpenCV's BGR order
    return bgr


def _red_and_green(mask01: np.ndarray) -> np.ndarray:
    bgr = _red(mask01)
    bgr[0, 0] = (0, 255, 0)
    return bgr


def _grey_ramp(mask01: np.ndarray) -> np.ndarray:
    return (mask01 * np.arange(W, dtype=np.uint8)[None, :] * 8).astype(np.uint8)


def _dark_noise(mask01: np.ndarray) -> np.ndarray:
    return mask01 + (np.arange(H * W).reshape(H, W) % 3 == 0).astype(np.uint8)  # 0, 1, 2


FOREGROUND = int(blob_mask().sum())
RED_MAP = {"mask_encoding": "colour_map", "mask_colours": [[0, 0, 0], [255, 0, 0]]}
MASKS = {  # case: (stored mask, settings, expected foreground pixels or an error's words)
    "01_binary": (blob_mask(1), {}, FOREGROUND),
    "01_binary_01": (blob_mask(1), {"mask_encoding": "binary_01"}, FOREGROUND),
    "01_binary_255": (blob_mask(1), {"mask_encoding": "binary_255"}, "set .*binary_01"),
    "255_binary": (blob_mask(255), {}, FOREGROUND),
    "255_binary_255": (blob_mask(255), {"mask_encoding": "binary_255"}, FOREGROUND),
    "255_binary_01": (blob_mask(255), {"mask_encoding": "binary_01"}, "set .*binary_255"),
    "65535_binary": (blob_mask(1).astype(np.uint16) * 65535, {}, FOREGROUND),
    "red_binary": (_red(blob_mask()), {}, r"mask has colours \(e.g. RGB \(255, 0, 0\)\).*nonzero"),
    "red_nonzero": (_red(blob_mask()), {"mask_encoding": "nonzero"}, FOREGROUND),
    "red_colour_map": (_red(blob_mask()), RED_MAP, FOREGROUND),
    "green_colour_map": (_red_and_green(blob_mask()), RED_MAP, r"colours \(0, 255, 0\) are not"),
    "grey_binary": (_grey_ramp(blob_mask()), {}, r"mask values 0, 56, 64, .* do not fit"),
    "grey_nonzero": (_grey_ramp(blob_mask()), {"mask_encoding": "nonzero"}, FOREGROUND),
    "grey_class_ids": (_grey_ramp(blob_mask()), {"mask_encoding": "class_ids"}, "not class ids"),
    "dark_noise_binary": (_dark_noise(blob_mask()), {}, r"mask values 0, 1, 2 do not fit"),
}


@pytest.mark.parametrize("case", MASKS)
def test_mask_values_against_each_encoding(tmp_path, case):
    stored, settings, expected = MASKS[case]
    root, comp = image_folder(tmp_path, 2, mask=stored, **settings)
    report = check(comp)
    if isinstance(expected, int):
        assert report.problems == []
        mask = comp.read_mask(comp.train_samples()[0], (H, W))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert int(mask.sum()) == expected
    else:
        assert report.bad_samples == 2
        assert report.problems[0].startswith(f"{root / 'masks' / 'im000.png'}: ")
        assert re.search(expected, report.problems[0]), report.problems[0]


def test_lossy_jpeg_masks_are_read_as_binary(tmp_path):
    root, comp = image_folder(tmp_path, 1, options={"mask_name": "{id}.jpg"})
    path = root / "masks" / "im000.jpg"
    assert cv2.imwrite(str(path), blob_mask(255), [cv2.IMWRITE_JPEG_QUALITY, 75])
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert len(np.unique(stored)) > 2  # compression noise near 0 and 255
    assert check(comp).problems == []
    assert int(comp.read_mask(comp.train_samples()[0], (H, W)).sum()) == FOREGROUND


def test_class_id_masks_of_a_multiclass_competition(tmp_path):
    labels = blob_mask(2)
    labels[:3] = 1
    root, comp = image_folder(tmp_path, 2, mask=labels, task="multiclass",
                              classes=["bg", "a", "b"], mask_encoding="class_ids")  # fmt: skip
    assert check(comp).problems == []
    assert set(np.unique(comp.read_mask(comp.train_samples()[0], (H, W)))) == {0, 1, 2}
    labels[0, 0] = 3
    write(root / "masks" / "im001.png", labels)
    (line,) = check(comp).problems
    assert line.startswith(f"{root / 'masks' / 'im001.png'}: mask values 0, 1, 2, 3 are not class")
    binary = competition("image-folder", tmp_path, task="multiclass", classes=["bg", "a", "b"])
    assert "need mask_encoding class_ids or colour_map" in check(binary).problems[0]


def test_mask_conventions_are_checked_when_the_competition_loads(tmp_path):
    with pytest.raises(PodiumError, match="unknown mask_encoding 'binary_0255'"):
        competition("image-folder", tmp_path, mask_encoding="binary_0255")
    with pytest.raises(PodiumError, match="needs mask_colours, 2 distinct"):
        competition("image-folder", tmp_path, mask_encoding="colour_map")
    with pytest.raises(PodiumError, match="mask_colours is set but mask_encoding is binary"):
        competition("image-folder", tmp_path, mask_colours=[[0, 0, 0], [255, 0, 0]])
    with pytest.raises(PodiumError, match="image_bit_depth=11.5: expected auto or the bits"):
        competition("image-folder", tmp_path, image_bit_depth="11.5")


# -- 16-bit images --------------------------------------------------------------------------------
def sixteen_bit(tmp_path: Path, top: int, ext: str = ".png", **changes):
    ramp = np.linspace(0, top, H * W).reshape(H, W).astype(np.uint16)
    root, comp = image_folder(tmp_path, 2, **changes)
    for path in (root / "images").iterdir():
        path.unlink()
        write(path.with_suffix(ext), ramp)
    return root, competition("image-folder", tmp_path, **changes)


def test_12_bit_data_in_16_bit_files_needs_its_depth(tmp_path):
    root, comp = sixteen_bit(tmp_path, 4095)
    # What OpenCV's default read did (podium before): divided by 256, max 15, near-black.
    assert cv2.imread(str(root / "images" / "im000.png")).max() == 15
    (line,) = check(comp).problems
    assert line == (
        f"{comp.data_dir}: 2 train images are "
        "16-bit files whose values reach only 4095: set competition.image_bit_depth=12 "
        "(0..4095 becomes 0..255), or 16 to scale 0..65535 as stored"
    )
    with pytest.raises(DataCheckError, match="the train data needs a setting"):
        require_clean(check(comp))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_a_declared_bit_depth_scales_16_bit_images(tmp_path, ext):
    _, comp = sixteen_bit(tmp_path, 4095, ext, image_bit_depth=12)
    assert check(comp).problems == []
    rgb = comp.read_image(comp.train_samples()[0])
    assert rgb.dtype == np.uint8 and rgb.max() == 255 and rgb.min() == 0
    stored = cv2.imread(str(comp.train_samples()[0].image), cv2.IMREAD_UNCHANGED)
    assert rgb[H // 2, W // 2, 0] == round(int(stored[H // 2, W // 2]) * 255 / 4095)


def test_values_above_the_declared_bit_depth_are_named(tmp_path):
    root, comp = sixteen_bit(tmp_path, 5000, image_bit_depth=12)
    problems = check(comp).problems
    assert problems[0] == (
        f"{root / 'images' / 'im000.png'}: values reach 5000, above "
        "competition.image_bit_depth=12 (0..4095)"
    )


def test_full_range_16_bit_images_pass_as_16_bit(tmp_path):
    _, comp = sixteen_bit(tmp_path, 65535)
    assert check(comp).problems == []
    assert comp.read_image(comp.train_samples()[0]).max() == 255


# -- RLE labels (TGS Salt's layout) ---------------------------------------------------------------
def fake_tgs(tmp_path: Path, rles: list[str], header: str = "id,rle_mask", text: str | None = None):
    root = tmp_path / "tgs-salt-identification-challenge"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(len(rles)):
        write(root / "train" / "images" / f"id{i}.png", np.zeros((101, 101, 3), np.uint8))
    body = "".join(f'id{i},"{rle}"\n' for i, rle in enumerate(rles))
    (root / "train.csv").write_text(text if text is not None else f"{header}\n{body}")
    return root, competition("tgs-salt-identification-challenge", tmp_path)


BAD_RLE = {  # run-length string: what the line says
    "odd_count": ("1 5 9", "odd number of values (3)"),
    "non_numeric": ("1 5 x 2", "value 3 'x' is not a non-negative integer"),
    "nan": ("nan", "value 1 is 'nan'"),
    "comma": ("1,5", "contains a separator"),
    "negative": ("-4 2", "value 1 '-4' is not a non-negative integer"),
    "zero_length": ("1 5 20 0", "pair 2: run length 0 is not positive"),
    "below_base": ("0 3", "pair 1: start 0 is below 1"),
    "out_of_range": ("10200 5", "ends past the image end"),
    "overlapping": ("1 10 5 3", "overlaps the previous run"),
    "unsorted": ("50 2 10 2", "runs are not sorted"),
}


@pytest.mark.parametrize("kind", BAD_RLE)
def test_every_kind_of_bad_rle_names_its_csv_row(tmp_path, kind):
    rle, reason = BAD_RLE[kind]
    root, comp = fake_tgs(tmp_path, ["1 5", "", rle, "30 3"])
    report = check(comp)
    assert report.bad_samples == 1
    assert report.problems[0].startswith(f"{root / 'train.csv'} row 4: mask of sample id2: ")
    assert reason in report.problems[0]


# -- CSV files ------------------------------------------------------------------------------------
def test_a_csv_saved_by_excel_bom_and_crlf_reads_like_any_other(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("id,rle_mask\na,1 5\nb,\n")
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbfid,rle_mask\r\na,1 5\r\nb,\r\n,\r\n")  # BOM, CRLF, blank row
    assert read_csv_rows(excel, columns=["id", "rle_mask"], key="id") == read_csv_rows(plain)
    assert read_csv_rows(excel)[1].origin == (str(excel), 3)
    root, comp = fake_tgs(tmp_path, ["1 5", ""])
    (root / "train.csv").write_bytes(b"\xef\xbb\xbfid,rle_mask\r\nid0,1 5\r\nid1,\r\n")
    assert [s.id for s in comp.train_samples()] == ["id0", "id1"]
    assert check(comp).problems == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,rle_mask\na,1 5\nb\nc,\n", r"rows.csv row 3: 1 value but the header has 2 columns"),
        ("id,rle_mask\na,1 5,7\n", r"rows.csv row 2: 3 values but the header has 2 columns"),
        ("id,mask\na,1 5\n", r"rows.csv: no column 'rle_mask' in the header \(id, mask\)"),
        ("id;rle_mask\na;1 5\n", r"no column 'id' .*semicolon-separated: save it with commas"),
        ("", r"rows.csv: the file is empty \(no header row\)"),
        ("\ufeff\r\n", r"rows.csv: the file is empty \(no header row\)"),
        ("id,id\na,b\n", r"rows.csv: column 'id' appears twice in the header"),
        ("id,rle_mask\na,1 5\nb,\na,1 6\n", r"rows.csv rows 2 and 4: id a appears twice with "
                                            r"different rle_mask \('1 5' and '1 6'\)"),
    ],
    ids=["short_row", "long_row", "wrong_header", "semicolons", "empty", "bom_only",
         "repeated_column", "duplicate_id_differs"],
)  # fmt: skip
def test_a_bad_csv_is_one_error_naming_file_and_row(tmp_path, text, message):
    path = tmp_path / "rows.csv"
    path.write_text(text, newline="")
    with pytest.raises(PodiumError, match=message):
        read_csv_rows(path, columns=["id", "rle_mask"], key="id")


def test_an_exactly_repeated_row_is_a_warning_and_used_once(tmp_path, caplog):
    path = tmp_path / "rows.csv"
    path.write_text("id,rle_mask\na,1 5\nb,\na,1 5\n")
    with caplog.at_level(logging.WARNING):
        rows = read_csv_rows(path, key="id")
    assert [r["id"] for r in rows] == ["a", "b"]
    assert "1 exact repeat(s) of earlier rows, each used once (first: row 4, id a)" in caplog.text


def test_a_column_an_adapter_asks_for_is_named_with_the_file(tmp_path):
    root, comp = fake_tgs(tmp_path, [], text="id,mask\nid0,1 5\n")
    with pytest.raises(
        PodiumError, match=r"train.csv: no column 'rle_mask' \(the header has: id, mask\)"
    ):
        comp.train_samples()
    row = read_csv_rows(root / "train.csv")[0]
    with pytest.raises(PodiumError, match=r"train.csv: no column 'z' \(the header has: id, mask"):
        row["z"]


def test_an_empty_train_csv_is_reported_as_empty(tmp_path):
    root, comp = fake_tgs(tmp_path, [], text="id,rle_mask\n")
    (root / "folds.csv").write_text("id,fold\nid0,0\n")  # an old one: not the one to blame
    with pytest.raises(PodiumError, match=r"no training samples in .* labels CSV empty"):
        check(comp)
    (root / "train.csv").write_text("")
    with pytest.raises(PodiumError, match=r"train.csv: the file is empty"):
        comp.train_samples()


def test_one_id_listed_twice_by_an_adapter(tmp_path, caplog):
    root, comp = image_folder(tmp_path, 2)
    first, second = comp.train_samples()
    same = Sample(first.id, first.image, first.mask)
    other = Sample(first.id, second.image, second.mask)
    with caplog.at_level(logging.WARNING):
        require_clean(check_samples(comp, [first, second, same], "train"))
    assert "1 train sample(s) repeat an earlier one exactly" in caplog.text
    report = check_samples(comp, [first, second, other], "train")
    assert report.problems == [
        f"{second.image}: sample id {first.id} is listed twice with different images or masks "
        f"(also {first.image})"
    ]


# -- the cache, the workers ----------------------------------------------------------------------
def test_a_second_run_reads_only_what_changed(tmp_path):
    root, comp = image_folder(tmp_path, 6)
    write(root / "masks" / "im005.png", blob_mask(7))  # a problem: never cached
    first = check(comp)
    assert first.read == 6 and first.bad_samples == 1
    assert (root / ".podium-datacheck-train.json").is_file()
    again = check(comp)
    assert again.read == 1 and again.problems == first.problems
    time.sleep(0.01)
    write(root / "images" / "im001.png", image(9))  # a new modification time
    write(root / "masks" / "im005.png", blob_mask(255))  # fixed
    fixed = check(comp)
    assert fixed.read == 2 and fixed.problems == []
    assert check(comp).read == 0
    changed = competition("image-folder", tmp_path, mask_encoding="binary_255")
    assert check(changed).read == 6  # another reading setting: every verdict is redone


def test_a_read_only_data_folder_caches_in_the_workspace(tmp_path, monkeypatch):
    _, comp = image_folder(tmp_path, 2)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / ".podium").write_text("")
    monkeypatch.setenv("PODIUM_ROOT", str(workspace))
    monkeypatch.setattr(datacheck, "_writable", lambda folder: False)
    assert check(comp).read == 2 and check(comp).read == 0
    (cached,) = (workspace / "data" / ".podium-datacheck").iterdir()
    assert cached.name.startswith("image-folder-") and cached.name.endswith("-train.json")
    assert not list(comp.data_dir.glob(".podium-datacheck-*"))


def test_worker_processes_find_what_this_process_finds(tmp_path):
    count = datacheck.PARALLEL_FROM + 10
    root, comp = image_folder(tmp_path, count)
    _truncate(root / "images" / "im007.png")
    write(root / "masks" / "im150.png", blob_mask(9))
    pooled = check(comp, workers=2)
    (root / ".podium-datacheck-train.json").unlink()
    here = check(comp, workers=1)
    assert pooled.read == here.read == count
    assert pooled.problems == here.problems and len(here.problems) == 2


# -- through the command line --------------------------------------------------------------------
def copy_demo(demo_data_dir: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A private copy of the tiny demo's data (the session's stays intact), and the paths."""
    data = tmp_path / "data"
    shutil.copytree(demo_data_dir, data / "demo_shapes")
    return data / "demo_shapes", [f"paths.data_dir={data}", f"paths.runs_dir={tmp_path / 'runs'}"]


def plant_problems(data: Path) -> list[str]:
    """Four broken training samples in the demo's data; what each line must start with."""
    images = data / "train" / "images"
    _truncate(images / "tr0000_1.png")
    _bad_crc(images / "tr0002_3.png")
    rows = (data / "train.csv").read_text().splitlines()
    rows[5] = rows[5].split(",")[0] + ",1 5 9"  # odd count
    rows[9] = rows[9].split(",")[0] + ",4090 20"  # past the end of a 64x64 image
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    return [  # in the order of train.csv
        f"podium: data check: {images / 'tr0000_1.png'}: cannot read image (",
        f"podium: data check: {data / 'train.csv'} row 6: mask of sample tr0001_0: odd number",
        f"podium: data check: {data / 'train.csv'} row 10: mask of sample tr0002_0: pair 1: run",
        f"podium: data check: {images / 'tr0002_3.png'}: cannot read image (broken PNG file",
    ]


def assert_refused(proc, expected: list[str], count: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("podium: ")]
    assert [line[: len(e)] for line, e in zip(lines, expected, strict=False)] == expected
    assert lines[len(expected)] == (
        f"podium: error: data check: {count}; fix or remove them (listed above)"
    )
    assert len(lines) == len(expected) + 1
    assert "Traceback" not in proc.stderr and "libpng" not in proc.stderr


def test_train_refuses_bad_data_before_the_first_step(demo_data_dir, tmp_path):
    data, paths = copy_demo(demo_data_dir, tmp_path)
    expected = plant_problems(data)
    run_dir = tmp_path / "runs" / "refused"
    proc = run_podium("train", *TINY_DEMO, *TINY_TRAIN, *paths, f"hydra.run.dir={run_dir}",
                      check=False)  # fmt: skip
    assert_refused(proc, expected, "4 of 48 train samples have problems")
    assert not run_dir.exists()  # no checkpoints/, nothing half-made
    assert not (tmp_path / "runs" / "demo_shapes" / "ledger.jsonl").exists()
    assert "folds.csv" not in proc.stderr


def test_download_checks_the_data_it_has(demo_data_dir, tmp_path):
    data, paths = copy_demo(demo_data_dir, tmp_path)
    expected = plant_problems(data)
    (data / "test" / "images" / "te0000_1.png").write_bytes(b"")
    expected.append(
        f"podium: data check: {data / 'test' / 'images' / 'te0000_1.png'}: cannot read image "
        "(empty file, 0 bytes)"
    )
    proc = run_podium("download", *TINY_DEMO[1:], *paths, check=False)
    count = "4 of 48 train samples have problems; 1 of 8 test samples has problems"
    assert_refused(proc, expected, count)
    assert "ready" not in proc.stdout


def test_image_folder_names_a_red_mask_and_the_setting_that_reads_it(tmp_path):
    root, _ = image_folder(tmp_path, 5, mask=_red(blob_mask()))
    proc = run_podium("train", "competition=image-folder", f"competition.data_dir={root}",
                      *TINY_TRAIN, f"hydra.run.dir={tmp_path / 'run'}", check=False)  # fmt: skip
    expected = [f"podium: data check: {root / 'masks' / f'im{i:03d}.png'}: mask has colours (e.g. "
                "RGB (255, 0, 0)) but mask_encoding is binary; set competition.mask_encoding="
                "nonzero" for i in range(5)]  # fmt: skip
    assert_refused(proc, expected, "5 of 5 train samples have problems")


@pytest.mark.slow
def test_predict_refuses_a_broken_test_image(demo_paths, demo_data_dir, tmp_path):
    from podium import cli

    run = tmp_path / "run"
    assert cli.main(["train", *TINY_DEMO, *TINY_TRAIN, *demo_paths, f"hydra.run.dir={run}"]) == 0
    data, paths = copy_demo(demo_data_dir, tmp_path)
    broken = data / "test" / "images" / "te0001_2.png"
    _bad_crc(broken)
    proc = run_podium("predict", *TINY_DEMO[1:], *paths, f"runs=[{run}]", "num_workers=0",
                      f"hydra.run.dir={tmp_path / 'predict'}", check=False)  # fmt: skip
    expected = [f"podium: data check: {broken}: cannot read image (broken PNG file"]
    assert_refused(proc, expected, "1 of 8 test samples has problems")
    assert not (tmp_path / "predict" / "submission.csv").exists()
    cache = json.loads((data / ".podium-datacheck-test.json").read_text())
    assert len(cache["verdicts"]) == 7  # the clean ones, for next time


@pytest.mark.slow
def test_under_ddp_rank_0_checks_and_every_rank_stops_with_its_line(demo_data_dir, tmp_path):
    data, paths = copy_demo(demo_data_dir, tmp_path)
    expected = plant_problems(data)
    proc = run_podium("train", *TINY_DEMO, *TINY_TRAIN, *paths, "trainer.devices=2",
                      f"hydra.run.dir={tmp_path / 'runs' / 'ddp'}", check=False)  # fmt: skip
    assert_refused(proc, expected, "4 of 48 train samples have problems")
    assert not (tmp_path / "runs" / "ddp").exists()
