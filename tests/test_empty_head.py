"""The empty-mask head (`model.aux_head=empty`): the model's pair output, its loss, the OOF key,
TTA/ensemble/tile averaging, the gate `podium tune` chooses (off wins ties) and `predict`
applies, and runs without the head loading as before."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DEMO, TINY_TRAIN
from omegaconf import OmegaConf

from podium import cli, rundir
from podium.config import compose_config
from podium.infer import Ensemble, predict_images, predict_tiled, tta_views
from podium.losses import EmptyHeadLoss, build_loss
from podium.metrics import METRICS
from podium.models import build_model, load_run_model, split_output
from podium.postprocess import PostProcess
from podium.tune import tune_postprocess

TINY_MODEL = [
    "model=unet_mobilenet",
    "model.encoder_weights=null",
    "model.kwargs={decoder_channels:[32,16,16,8,8]}",
]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return METRICS["dice"](pred, truth)


def tiny_model(aux_head: str = "empty") -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = compose_config("train", [*TINY_MODEL, f"model.aux_head={aux_head}"])
    return build_model(cfg.model, 1).eval()


# -- the model and its loss ---------------------------------------------------------------------
def test_the_head_gives_one_logit_per_image_at_any_input_size():
    model = tiny_model()
    masks, nonempty = split_output(model(torch.randn(3, 3, 50, 70)))
    assert masks.shape == (3, 1, 50, 70) and nonempty.shape == (3,)
    plain = tiny_model("none")
    masks, nonempty = split_output(plain(torch.randn(2, 3, 50, 70)))
    assert masks.shape == (2, 1, 50, 70) and nonempty is None
    assert model.has_empty_head and not plain.has_empty_head


def test_the_loss_adds_the_weighted_bce_of_not_empty():
    cfg = compose_config("train", TINY_MODEL)
    segmentation = build_loss(cfg.loss, "binary")
    logits = torch.randn(2, 1, 8, 8)
    target = torch.zeros(2, 1, 8, 8)
    target[1, 0, 2, 3] = 1  # image 0 empty, image 1 not
    nonempty = torch.tensor([-1.0, 2.0])
    loss = EmptyHeadLoss(segmentation, 0.5)((logits, nonempty), target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(nonempty, torch.tensor([0.0, 1]))
    assert torch.isclose(loss, segmentation(logits, target) + 0.5 * bce)
    assert torch.isclose(
        EmptyHeadLoss(segmentation, 0.5)(logits, target), segmentation(logits, target)
    )


# -- prediction: views, models, tiles -----------------------------------------------------------
def test_ensemble_averages_the_head_over_views_and_only_over_models_that_have_it():
    head, plain = tiny_model(), tiny_model("none")
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    views = tta_views("flip")
    probs, nonempty = Ensemble([head], "binary", views, "cpu")(images)
    by_hand = []
    for view in views:
        x = (view.augment(images).float() / 255 - torch.tensor(head.mean).view(1, 3, 1, 1)) / (
            torch.tensor(head.std).view(1, 3, 1, 1)
        )
        with torch.no_grad():
            by_hand.append(split_output(head(x))[1].sigmoid())
    assert torch.allclose(nonempty, torch.stack(by_hand).mean(0), atol=1e-5)
    mixed_probs, mixed_nonempty = Ensemble([head, plain], "binary", views, "cpu", weights=[1, 3])(
        images
    )
    alone = Ensemble([plain], "binary", views, "cpu")(images)
    assert isinstance(alone, torch.Tensor)  # no head: probabilities only, as before
    assert torch.allclose(mixed_nonempty, nonempty, atol=1e-6)  # the plain model has no say
    assert torch.allclose(mixed_probs, 0.25 * probs + 0.75 * alone, atol=1e-5)
    predicted = predict_images(Ensemble([head], "binary", views, "cpu"), images, [(64, 64)] * 2)
    assert [round(g, 5) for _, g in predicted] == [round(float(g), 5) for g in nonempty]


def test_tiles_keep_the_largest_tile_value():
    image = torch.zeros(1, 40, 40)

    def forward(batch):  # P(not empty) of a tile: its top-left pixel, planted below
        return batch.clone(), batch[:, 0, 0, 0].clone()

    image[0, 24, 24] = 0.9  # the top-left pixel of the last tile (starts 0, 12, 24)
    probs, nonempty = predict_tiled(forward, image, tile_size=16, overlap=0.25, batch_size=3)
    assert probs.shape == (1, 40, 40) and float(nonempty) == pytest.approx(0.9)


# -- the gate: post-processing and tuning --------------------------------------------------------
def planted_oof(seed: int, head_knows: bool) -> tuple[list, list[float]]:
    """Half the images empty but with a false-positive blob as large as the true masks (so no
    area rule can remove it), half with a mask predicted well. The head says which is which
    (`head_knows`), or says nothing useful (the same value for every image)."""
    rng = np.random.default_rng(seed)
    items, nonempty = [], []
    for i in range(24):
        empty = i % 2 == 0
        truth = np.zeros((32, 32), np.uint8)
        probs = np.full((1, 32, 32), 0.05, np.float32)
        y, x = rng.integers(4, 20, size=2)
        probs[0, y : y + 8, x : x + 8] = 0.9
        if not empty:
            truth[y : y + 8, x : x + 8] = 1
        items.append((probs, truth))
        if head_knows:
            nonempty.append(float(rng.uniform(0.0, 0.3) if empty else rng.uniform(0.7, 1.0)))
        else:
            nonempty.append(1.0)
    return items, nonempty


def search(items, nonempty, gates=(0.1, 0.3, 0.5, 0.7, 0.9)):
    return tune_postprocess(
        items, dice, "binary", PostProcess(), thresholds=[0.3, 0.5, 0.7],
        min_areas=[0, 10, 70], empty_areas=[0, 10, 70], nonempty=nonempty, empty_gates=gates,
    )  # fmt: skip


def test_tune_picks_a_gate_that_helps_where_the_head_knows():
    items, nonempty = planted_oof(0, head_knows=True)
    result = search(items, nonempty)
    assert result.best.empty_gate is not None and 0.3 <= result.best.empty_gate <= 0.7
    assert result.default_score == pytest.approx(0.5)  # every empty image scores 0 ungated
    assert result.score == pytest.approx(1.0)
    without = search(items, None)  # no head: the area rules cannot tell the blobs apart
    assert without.best.empty_gate is None and without.score == pytest.approx(0.5)


def test_gate_off_never_changes_a_prediction():
    items, nonempty = planted_oof(1, head_knows=False)
    result = search(items, nonempty)
    # Every gate up to 1.0 ties with off here (the head says 1.0 everywhere): off wins ties.
    assert result.best.empty_gate is None
    rng = np.random.default_rng(2)
    for probs, _ in items:
        for value in (None, 0.0, 0.5, 1.0, float(rng.uniform())):
            gated = result.best(probs, "binary", nonempty=value)
            assert np.array_equal(gated, replace_gate(result.best)(probs, "binary"))
    for pp in (PostProcess(), PostProcess(0.3, 10, 70), PostProcess(0.7, empty_area=5)):
        for probs, _ in items:
            assert np.array_equal(pp(probs, "binary", nonempty=0.0), pp(probs, "binary"))


def replace_gate(pp: PostProcess) -> PostProcess:
    return PostProcess(pp.threshold, pp.min_area, pp.empty_area)


def test_the_gate_empties_masks_below_it_and_needs_the_head():
    probs = np.full((1, 8, 8), 0.9, np.float32)
    gate = PostProcess(empty_gate=0.4)
    assert gate(probs, "binary", nonempty=0.39).sum() == 0
    assert gate(probs, "binary", nonempty=0.4).sum() == 64
    with pytest.raises(ValueError, match="empty_gate"):
        gate(probs, "binary")


# -- end to end: training writes the OOF key; old runs load ----------------------------------------
@pytest.mark.slow
def test_a_run_with_the_head_writes_its_oof_and_predict_applies_the_gate(
    demo_paths, tmp_path, one_thread
):
    run = tmp_path / "run"
    overrides = [*TINY_DEMO, *TINY_TRAIN, *demo_paths, "model.aux_head=empty"]
    assert cli.main(["train", *overrides, f"hydra.run.dir={run}"]) == 0
    ids = [image_id for image_id, _, _ in rundir.read_oof(run)]
    nonempty = rundir.read_oof_nonempty(run)
    assert sorted(nonempty) == sorted(ids) and len(ids) == 12
    assert all(0.0 < p < 1.0 for p in nonempty.values())
    model, _ = load_run_model(run)
    assert model.has_empty_head
    # A gate of 1.0 empties every mask (the head's probability is below 1): predict applies it.
    predict_dir = tmp_path / "predict"
    tiny = [*TINY_DEMO[1:], *demo_paths, f"runs=[{run}]", "num_workers=0", "progress=false"]
    gated = ["tuned=null", "threshold=0.0", "empty_gate=1.0", f"hydra.run.dir={predict_dir}"]
    assert cli.main(["predict", *tiny, *gated]) == 0
    summary = json.loads((predict_dir / "predict.json").read_text())
    assert summary["postprocess"]["empty_gate"] == 1.0
    with open(predict_dir / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == 8 and all(mask == "" for _, mask in rows)


def write_run_without_head(folder: Path) -> Path:
    """A run as podium wrote it before the head existed: no aux_head key in its config."""
    cfg = compose_config("train", TINY_MODEL)
    config = OmegaConf.to_container(cfg, resolve=False)
    for key in ("aux_head", "aux_dropout"):
        config["model"].pop(key)
    config["loss"].pop("aux_weight")
    config["competition"]["image_size"] = None
    torch.manual_seed(0)
    model = build_model(cfg.model, 1)
    checkpoint = {"model": model.state_dict(), "ema": None, "config": config}
    folder.mkdir(parents=True)
    rundir.save_checkpoint(checkpoint, rundir.checkpoint_path(folder, "best"))
    rundir.write_config(folder, config)
    return folder


def test_a_checkpoint_without_the_head_still_loads_for_predict(tmp_path):
    run = write_run_without_head(tmp_path / "old")
    model, cfg = load_run_model(run)
    assert not model.has_empty_head and "aux_head" not in cfg.model
    ensemble = Ensemble([model], "binary", tta_views("hflip"), "cpu")
    assert not ensemble.has_nonempty
    images = torch.randint(0, 256, (2, 3, 48, 40), dtype=torch.uint8)
    predicted = predict_images(ensemble, images, [(48, 40), (32, 40)])
    assert [p.shape for p, _ in predicted] == [(1, 48, 40), (1, 32, 40)]
    assert [g for _, g in predicted] == [None, None]
    # An old oof.npz (no nonempty_ keys) reads as "no head".
    rundir.write_oof(run, ["a"], [np.zeros((1, 4, 4), np.uint8)], [np.zeros((1, 4, 4), np.uint8)])
    assert rundir.read_oof_nonempty(run) == {}


def test_the_write_up_describes_the_head_when_used():
    from podium.report.method import _facts_from_config

    def facts(*overrides: str) -> dict[str, str]:
        cfg = compose_config("train", [*TINY_MODEL, *overrides])
        records = [{"precision": "fp32", "device": "cpu", "epochs_run": 1, "best_epoch": 1}]
        return _facts_from_config(OmegaConf.to_container(cfg, resolve=True), records)

    with_head = facts("model.aux_head=empty", "loss.aux_weight=0.25")
    assert "weight 0.25" in with_head["Empty-mask head"]
    assert "Empty-mask head" not in facts()
