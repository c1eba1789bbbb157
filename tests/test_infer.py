"""Post-processing, OOF tuning, run selection and streaming submissions (`podium tune/predict`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_DEMO, TINY_TRAIN, run_podium
from omegaconf import OmegaConf

from podium import cli, infer, ledger, rundir, tune
from podium.competition import Competition, Sample
from podium.config import COMPETITION_DEFAULTS, compose_config
from podium.data import SegmentationDataset, make_loader
from podium.io import PodiumError
from podium.metrics import dice
from podium.postprocess import PostProcess, remove_small_components
from podium.rundir import write_oof
from podium.submission import write_submission
from podium.tune import tune_postprocess


# -- post-processing ----------------------------------------------------------------------------
def blobs() -> np.ndarray:
    mask = np.zeros((20, 20), np.uint8)
    mask[2:8, 2:8] = 1  # 36 pixels
    mask[15:17, 15:17] = 1  # 4 pixels
    mask[12, 3] = 1  # 1 pixel
    mask[13, 4] = 1  # touches it diagonally: one 8-connected component of 2
    return mask


def test_min_area_removes_only_small_components():
    mask = blobs()
    assert remove_small_components(mask, 3).sum() == 36 + 4
    assert remove_small_components(mask, 5).sum() == 36
    assert remove_small_components(mask, 2).sum() == mask.sum()  # the diagonal pair stays
    assert remove_small_components(mask, 37).sum() == 0


def test_postprocess_thresholds_then_cleans_then_applies_the_empty_rule():
    probs = blobs()[None].astype(np.float32) * 0.6  # 1x20x20 probabilities
    assert PostProcess(0.5)(probs, "binary").sum() == 42
    assert PostProcess(0.7)(probs, "binary").sum() == 0
    assert PostProcess(0.5, min_area=5)(probs, "binary").sum() == 36
    assert PostProcess(0.5, empty_area=43)(probs, "binary").sum() == 0  # 42 < 43: emptied
    assert PostProcess(0.5, empty_area=42)(probs, "binary").sum() == 42
    # min_area first: the 36 left are fewer than 40, so the mask empties.
    assert PostProcess(0.5, min_area=5, empty_area=40)(probs, "binary").sum() == 0
    # Areas scale with the image (tuned at one resolution, applied at another).
    assert PostProcess(0.5, min_area=2.5)(probs, "binary", area_scale=2.0).sum() == 36


def test_postprocess_cleans_each_class():
    labels = np.zeros((2, 20, 20), np.float32)
    labels[0] = blobs() * 0.9
    labels[1, 10:20, 0:2] = 0.9  # 20 pixels
    multilabel = PostProcess(0.5, min_area=5)(labels, "multilabel")
    assert multilabel.shape == (2, 20, 20) and multilabel.sum((1, 2)).tolist() == [36, 20]
    # Multiclass: argmax over background + 2 classes; removed pixels become background.
    probs = np.concatenate([1 - labels.max(0, keepdims=True), labels])
    classes = PostProcess(min_area=5)(probs, "multiclass")
    assert (classes == 1).sum() == 36 and (classes == 2).sum() == 20
    assert PostProcess(empty_area=30)(probs, "multiclass").max() == 1  # class 2 (20 px) emptied


# -- tuning -------------------------------------------------------------------------------------
def constructed_oof(seed: int, count: int = 12) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Under-confident blobs (p = 0.4 on the truth) plus confident 2-pixel specks (p = 0.9)
    that are never in the truth; a quarter of the images are empty but for a speck."""
    rng = np.random.default_rng(seed)
    probs, masks = [], []
    for i in range(count):
        truth = np.zeros((24, 24), np.uint8)
        if i % 4:
            y, x = rng.integers(2, 12, 2)
            truth[y : y + 8, x : x + 9] = 1
        p = np.where(truth > 0, 0.4, 0.15).astype(np.float32)
        p[21, 20:22] = 0.9
        probs.append(np.rint(p[None] * 255).astype(np.uint8))
        masks.append(truth[None])
    return probs, masks


def test_tune_finds_the_threshold_and_min_area_the_data_needs():
    probs, masks = constructed_oof(0)
    items = [(p.astype(np.float32) / 255, m[0]) for p, m in zip(probs, masks, strict=True)]
    result = tune_postprocess(
        items, dice, "binary", PostProcess(), thresholds=[0.1, 0.3, 0.5, 0.7],
        min_areas=[0, 2, 3, 10], empty_areas=[0, 5],
    )  # fmt: skip
    assert result.default_score < 0.5  # at 0.5 only the specks survive
    assert result.best == PostProcess(0.3, min_area=3, empty_area=0)
    assert result.score == pytest.approx(1.0)


def fake_run(folder: Path, fold: int, probs, masks, ids) -> Path:
    folder.mkdir(parents=True)
    cfg = {"fold": fold, "competition": {"name": "demo_shapes", "image_size": None}}
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    write_oof(folder, ids, probs, masks)
    return folder


def test_tune_command_saves_the_gain_and_predict_finds_it(tmp_path, caplog):
    runs_dir = tmp_path / "runs"
    probs, masks = constructed_oof(1, count=16)
    ids = [f"im{i}" for i in range(16)]
    for fold in range(2):  # two folds, 8 OOF images each
        part = slice(8 * fold, 8 * fold + 8)
        fake_run(runs_dir / "demo_shapes" / f"f{fold}", fold, probs[part], masks[part], ids[part])
    cfg = compose_config(
        "tune", [f"paths.runs_dir={runs_dir}", "runs=[f*]", "search.min_areas=[0,3]"]
    )
    tune_dir = runs_dir / "demo_shapes" / "t1_tune"
    with caplog.at_level("INFO", logger="podium.tune"):
        score = tune.tune_command(cfg, tune_dir)
    tuned = json.loads((tune_dir / "tuned.json").read_text())
    assert tuned["images"] == 16 and tuned["postprocess"]["min_area"] == 3
    assert tuned["gain"] == pytest.approx(score - tuned["default_score"]) and tuned["gain"] > 0.3
    assert "gain +" in caplog.text
    # predict finds it for exactly these runs, and not for a subset.
    runs = [runs_dir / "demo_shapes" / "f0", runs_dir / "demo_shapes" / "f1"]
    predict_cfg = compose_config("predict", [f"paths.runs_dir={runs_dir}"])
    postprocess, found = infer.find_tuned(predict_cfg, runs)
    assert found["path"] == str(tune_dir / "tuned.json")
    assert postprocess == PostProcess(**tuned["postprocess"])
    assert infer.find_tuned(predict_cfg, runs[:1]) == (PostProcess(), None)


def test_predict_finds_a_tuning_made_anywhere(tmp_path):
    """`podium tune ... hydra.run.dir=ELSEWHERE` used to be missed (predict scanned only
    <runs_dir>/<competition>/*/tuned.json): the tuning is recorded with the runs it tuned."""
    runs_dir = tmp_path / "runs"
    probs, masks = constructed_oof(1, count=8)
    ids = [f"im{i}" for i in range(8)]
    runs = [fake_run(runs_dir / "demo_shapes" / "f0", 0, probs, masks, ids)]
    cfg = compose_config("tune", [f"paths.runs_dir={runs_dir}", "runs=[f0]"])
    elsewhere = tmp_path / "somewhere" / "else"
    tune.tune_command(cfg, elsewhere)
    tuned = json.loads((elsewhere / "tuned.json").read_text())
    predict_cfg = compose_config("predict", [f"paths.runs_dir={runs_dir}"])
    postprocess, found = infer.find_tuned(predict_cfg, runs)
    assert postprocess == PostProcess(**tuned["postprocess"]) != PostProcess()
    assert found["path"] == str(elsewhere / "tuned.json")
    # A later tuning of the same runs wins; a different ensemble finds none.
    later = compose_config("tune", [f"paths.runs_dir={runs_dir}", "runs=[f0]", "search.rounds=1"])
    tune.tune_command(later, tmp_path / "later")
    assert infer.find_tuned(predict_cfg, runs)[1]["path"] == str(tmp_path / "later" / "tuned.json")
    other = fake_run(runs_dir / "demo_shapes" / "f1", 1, probs, masks, ids)
    assert infer.find_tuned(predict_cfg, [*runs, other]) == (PostProcess(), None)


def test_runs_come_from_globs_weights_and_the_ledger(tmp_path):
    runs_dir = tmp_path / "runs"
    probs, masks = constructed_oof(2, count=2)
    made = [
        fake_run(runs_dir / "demo_shapes" / f"r{i}", i, probs, masks, ["a", "b"]) for i in (0, 1)
    ]
    for i, run in enumerate(made):
        record = {
            "kind": "run",
            "experiment_name": "demo",
            "fold": i,
            "seed": 0,
            "run_dir": str(run),
        }
        ledger.append(ledger.ledger_path(runs_dir, "demo_shapes"), record)

    def resolve(*overrides):
        return rundir.resolve_runs(
            compose_config("predict", [f"paths.runs_dir={runs_dir}", *overrides])
        )

    assert resolve("runs=[r*]") == [(made[0], 1.0), (made[1], 1.0)]
    assert resolve(f"runs=[{made[1]},r0]", "run_weights=[2,1]") == [(made[1], 2.0), (made[0], 1.0)]
    assert resolve("runs_of=demo") == [(made[0], 1.0), (made[1], 1.0)]
    with pytest.raises(PodiumError, match="runs: 'nothing\\*' names no run directory"):
        resolve("runs=[nothing*]")
    with pytest.raises(PodiumError, match="runs_of=other: no runs"):
        resolve("runs_of=other")


# -- streaming ----------------------------------------------------------------------------------
class Squares(Competition):
    """A competition made of test images written by the test."""

    def __init__(self, folder: Path, sizes):
        comp = OmegaConf.create(COMPETITION_DEFAULTS | {"name": "squares", "dir": str(folder)})
        comp.data_dir = str(folder)
        super().__init__(comp)
        self.samples = []
        for i, (h, w) in enumerate(sizes):
            image = np.zeros((h, w, 3), np.uint8)
            image[h // 4 : h // 2, w // 4 : w // 2] = 255
            path = folder / f"s{i}.png"
            cv2.imwrite(str(path), image)
            self.samples.append(Sample(id=f"s{i}", image=path))

    def test_samples(self):
        return self.samples


def brightness(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().mean(1, keepdim=True) / 255.0


def test_rows_are_made_as_they_are_asked_for(tmp_path):
    competition = Squares(tmp_path, [(16, 16), (16, 20), (12, 16)] * 4)
    samples = competition.test_samples()
    loader = make_loader(SegmentationDataset(competition, samples, with_masks=False), 2, 0)
    batches_seen = []

    def counting(batch):
        batches_seen.append(len(batch))
        return brightness(batch)

    rows = infer.predict_rows(competition, samples, loader, counting, PostProcess())
    first = next(rows)
    assert first[0] == "s0" and len(loader) == 6
    assert sum(batches_seen) <= 4  # two batches in flight at most, not the whole test set
    rest = list(rows)
    assert [r[0] for r in [first, *rest]] == [s.id for s in samples]
    # The masks are the bright squares, at each image's own size.
    for (row_id, encoded), sample in zip([first, *rest], samples, strict=True):
        h, w = cv2.imread(str(sample.image)).shape[:2]
        expected = np.zeros((h, w), np.uint8)
        expected[h // 4 : h // 2, w // 4 : w // 2] = 1
        assert encoded == competition.encode_mask(expected), row_id


def test_an_interrupted_prediction_leaves_no_submission(tmp_path):
    competition = Squares(tmp_path, [(16, 16)] * 4)
    samples = competition.test_samples()
    loader = make_loader(SegmentationDataset(competition, samples, with_masks=False), 1, 0)

    def failing(batch):
        if failing.calls == 2:
            raise KeyboardInterrupt
        failing.calls += 1
        return brightness(batch)

    failing.calls = 0
    rows = infer.predict_rows(competition, samples, loader, failing, PostProcess())
    with pytest.raises(KeyboardInterrupt):
        write_submission(tmp_path / "submission.csv", rows, competition.submission)
    assert not (tmp_path / "submission.csv").exists()
    assert not list(tmp_path.glob(".submission.csv*"))


# -- the commands -------------------------------------------------------------------------------
@pytest.mark.slow
def test_tune_then_predict_on_the_tiny_demo(demo_paths, tmp_path, one_thread):
    runs_dir = Path(demo_paths[1].split("=", 1)[1])
    runs = []
    for fold in (0, 1):
        run = tmp_path / f"fold{fold}"
        overrides = [*TINY_DEMO, *TINY_TRAIN, *demo_paths, f"fold={fold}", f"hydra.run.dir={run}"]
        assert cli.main(["train", *overrides]) == 0
        runs.append(run)
    tune_dir = runs_dir / "demo_shapes" / f"{tmp_path.name}_tune"
    tiny = [*TINY_DEMO[1:], *demo_paths, f"runs=[{tmp_path}/fold*]", "num_workers=0"]
    # Re-predict the validation folds with two TTA sets; tune keeps the better one.
    tune = [*tiny, "tta_candidates=[hflip,flip]", "progress=false", f"hydra.run.dir={tune_dir}"]
    assert cli.main(["tune", *tune]) == 0
    tuned = json.loads((tune_dir / "tuned.json").read_text())
    assert tuned["images"] == 24 and set(tuned["by_tta"]) == {"hflip", "flip"}
    assert tuned["tta"] == max(tuned["by_tta"], key=tuned["by_tta"].get)
    predict_dir = tmp_path / "predict"
    proc = run_podium("predict", *tiny, f"hydra.run.dir={predict_dir}")
    summary = json.loads((predict_dir / "predict.json").read_text())
    assert summary["tuned"] == str(tune_dir / "tuned.json")
    assert summary["postprocess"] == tuned["postprocess"] and summary["tta"] == tuned["tta"]
    assert summary["views"] == {"hflip": 2, "flip": 4}[tuned["tta"]]
    assert summary["runs"] == [str(r) for r in runs]
    with open(predict_dir / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "rle_mask"] and len(rows) == 1 + 8
    assert 0.0 <= summary["local_score"] <= 1.0
    assert "local dice of the submission" in proc.stderr + proc.stdout
