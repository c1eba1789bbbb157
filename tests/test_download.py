"""`podium download` leaves data ready to train: the real `podium` command and the real kaggle
client against the fake Kaggle server, serving TGS Salt, Carvana and Ultrasound Nerve in their
real nested shapes (tests/kaggle_layouts.py says where each shape comes from)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import kaggle_layouts
import pytest
from conftest import ROOT, TINY_TRAIN, run_podium
from kaggle_fake import FakeCompetition, FakeKaggle, make_zip

TGS = "tgs-salt-identification-challenge"
CARVANA = "carvana-image-masking-challenge"
NERVE = "ultrasound-nerve-segmentation"
KEY = "podium-download-secret-key-77aa"
TGS_TRAIN = [f"{n:010x}" for n in range(15)]
TGS_TEST = [f"{n:010x}" for n in range(100, 103)]
# A run that proves the data trains: one short epoch of a small UNet from scratch.
ONE_EPOCH = [*TINY_TRAIN, "model.encoder_weights=null", "trainer.limit_train_batches=2"]
# The generated Carvana and Nerve images are smaller than the real ones.
CARVANA_OPTIONS = ["competition.image_size=null", "competition.options.image_shape=[48,72]"]
NERVE_OPTIONS = ["competition.options.image_shape=[42,58]"]


@pytest.fixture
def world(kaggle_home, monkeypatch):
    fake = FakeKaggle(key=KEY)
    fake.add_competition(FakeCompetition(TGS, "TGS", kaggle_layouts.tgs_salt(TGS_TRAIN, TGS_TEST)))
    fake.add_competition(FakeCompetition(CARVANA, "Carvana", kaggle_layouts.carvana()))
    fake.add_competition(FakeCompetition(NERVE, "Nerve", kaggle_layouts.ultrasound_nerve()))
    with fake:
        monkeypatch.setenv("KAGGLE_USERNAME", fake.username)
        monkeypatch.setenv("KAGGLE_KEY", KEY)
        monkeypatch.setenv("PODIUM_FAKE_KAGGLE_URL", fake.url)
        monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests" / "kaggle_sitecustomize"))
        yield fake


def files_under(folder: Path) -> set[str]:
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and ".podium-kaggle" not in p.parts
        and p.name != "folds.csv"
        and not p.name.startswith(".podium-datacheck-")  # the data check's cache
    }


def podium(tmp_path: Path, *args: str, check: bool = True):
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.runs_dir={tmp_path / 'runs'}"]
    return run_podium(*args, *paths, check=check, timeout=300)


def train_one_epoch(tmp_path: Path, competition: str, *extra: str) -> dict:
    run_dir = tmp_path / "runs" / f"{competition}-{len(list(tmp_path.glob('runs/*')))}"
    podium(tmp_path, "train", f"competition={competition}", *ONE_EPOCH, *extra,
           f"hydra.run.dir={run_dir}")  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and (run_dir / "checkpoints" / "best.pt").is_file()
    return summary


@pytest.mark.slow
def test_tgs_salt_download_then_train(world: FakeKaggle, tmp_path: Path) -> None:
    proc = podium(tmp_path, "download", f"competition={TGS}")
    assert proc.stdout.strip().splitlines()[-1] == (
        f"{TGS}: 15 train images (5 empty masks), 3 test images, ready"
    )
    data = tmp_path / "data" / TGS
    expected = {f"train/images/{i}.png" for i in TGS_TRAIN} | {
        f"train/masks/{i}.png" for i in TGS_TRAIN
    }
    expected |= {f"test/images/{i}.png" for i in TGS_TEST}
    expected |= {"train.csv", "depths.csv", "sample_submission.csv"}
    assert files_under(data) == expected  # train.zip and test.zip unpacked, then removed

    again = podium(tmp_path, "download", f"competition={TGS}")  # complete: skipped
    assert "already complete, skipping" in again.stderr and "ready" in again.stdout
    mtime = (data / "train" / "images" / f"{TGS_TRAIN[0]}.png").stat().st_mtime_ns
    assert mtime == (data / "train" / "images" / f"{TGS_TRAIN[0]}.png").stat().st_mtime_ns

    (data / "train" / "masks" / f"{TGS_TRAIN[1]}.png").write_bytes(b"x")
    podium(tmp_path, "download", f"competition={TGS}", "force=true")  # redone
    assert (data / "train" / "masks" / f"{TGS_TRAIN[1]}.png").read_bytes()[:4] == b"\x89PNG"
    assert files_under(data) == expected

    train_one_epoch(tmp_path, TGS)


@pytest.mark.slow
@pytest.mark.parametrize("masks", ["gif", "csv"])
def test_carvana_download_then_train(world: FakeKaggle, tmp_path: Path, masks: str) -> None:
    proc = podium(tmp_path, "download", f"competition={CARVANA}", *CARVANA_OPTIONS,
                  f"competition.options.masks={masks}")  # fmt: skip
    summary = "12 mask files" if masks == "gif" else "0 empty masks"
    assert proc.stdout.strip().splitlines()[-1] == (
        f"{CARVANA}: 12 train images ({summary}), 4 test images, ready"
    )
    data = tmp_path / "data" / CARVANA
    tops = {name.split("/")[0] for name in files_under(data)}
    assert tops == {
        "train", "train_hq", "train_masks", "test", "test_hq", "train_masks.csv",
        "metadata.csv", "sample_submission.csv",
    }  # fmt: skip
    assert len(list((data / "train_masks").glob("*_mask.gif"))) == 12
    again = podium(tmp_path, "download", f"competition={CARVANA}", *CARVANA_OPTIONS)
    assert "already complete, skipping" in again.stderr and "unpacking" not in again.stderr
    train_one_epoch(tmp_path, CARVANA, *CARVANA_OPTIONS, f"competition.options.masks={masks}")


@pytest.mark.slow
def test_ultrasound_nerve_download_then_train(world: FakeKaggle, tmp_path: Path) -> None:
    proc = podium(tmp_path, "download", f"competition={NERVE}", *NERVE_OPTIONS)
    assert proc.stdout.strip().splitlines()[-1] == (
        f"{NERVE}: 12 train images (6 empty masks), 3 test images, ready"
    )
    data = tmp_path / "data" / NERVE
    assert (data / "train_masks.csv").is_file() and (data / "sample_submission.csv").is_file()
    assert len(list((data / "train").glob("*_mask.tif"))) == 12
    assert not list(data.glob("*.zip"))
    again = podium(tmp_path, "download", f"competition={NERVE}", *NERVE_OPTIONS)
    assert "already complete, skipping" in again.stderr and "unpacking" not in again.stderr
    train_one_epoch(tmp_path, NERVE, *NERVE_OPTIONS)


def test_a_missing_image_is_one_line_naming_it(world: FakeKaggle, tmp_path: Path) -> None:
    files = kaggle_layouts.tgs_salt(TGS_TRAIN, TGS_TEST)
    with zipfile.ZipFile(io.BytesIO(files["train.zip"])) as zf:  # all but one image
        members = {n: zf.read(n) for n in zf.namelist() if n != f"images/{TGS_TRAIN[0]}.png"}
    world.competitions[TGS].files = files | {"train.zip": make_zip(members)}
    proc = podium(tmp_path, "download", f"competition={TGS}", check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("podium: error")]
    missing = tmp_path / "data" / TGS / "train" / "images" / f"{TGS_TRAIN[0]}.png"
    assert (
        len(lines) == 1
        and f"train image of sample {TGS_TRAIN[0]} is missing: {missing}" in (lines[0])
    )
    assert "force=true" in lines[0] and "Traceback" not in proc.stderr


def test_a_member_archive_left_packed_is_named(world: FakeKaggle, tmp_path: Path) -> None:
    # competition.download.unpack can leave an archive packed; the layout check then names it.
    proc = podium(tmp_path, "download", f"competition={TGS}",
                  "competition.download.unpack={train.zip:false}", check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "train.zip is still packed" in proc.stderr
    assert (tmp_path / "data" / TGS / "train.zip").is_file()


def test_training_on_a_missing_image_is_one_line(world: FakeKaggle, tmp_path: Path) -> None:
    podium(tmp_path, "download", f"competition={TGS}")
    image = tmp_path / "data" / TGS / "train" / "images" / f"{TGS_TRAIN[3]}.png"
    image.unlink()
    workers = ["trainer.num_workers=2", "trainer.limit_train_batches=null"]
    proc = podium(tmp_path, "train", f"competition={TGS}", *ONE_EPOCH, *workers, check=False)
    assert proc.returncode == 1  # the data check names it, before any DataLoader worker starts
    assert f"podium: data check: {image}: cannot read image (file missing)\n" in proc.stderr
    assert "podium: error: data check: 1 of 15 train samples has problems" in proc.stderr
    assert "Traceback" not in proc.stderr and "WARN" not in proc.stderr
