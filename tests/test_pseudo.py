"""Pseudo-label rounds (`podium pseudo`, `podium train pseudo=DIR`) and full-data models
(`podium train fold=all`) on the tiny demo: what a round keeps, that its images only ever join
the training part, rounds, and a full-data run that trains on everything and claims no score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DEMO, TINY_TRAIN

from podium import cli, rundir
from podium.competition import load_competition
from podium.config import compose_config
from podium.infer import load_ensemble, tta_views
from podium.losses import build_loss
from podium.pseudo import PseudoRule
from podium.pseudo_data import MixedLoss, mixed_epoch_order
from podium.run_state import load_data

TEACHER_TRAIN = [*TINY_TRAIN, "trainer.max_epochs=2"]  # the last value of a key wins


@pytest.fixture(scope="module")
def workspace(demo_paths, tmp_path_factory) -> dict:
    """The demo data, a runs folder of this module's own (its ledger holds only these runs) and
    one trained teacher (fold 0)."""
    base = tmp_path_factory.mktemp("pseudo")
    paths = [demo_paths[0], f"paths.runs_dir={base / 'runs'}"]
    teacher = base / "runs" / "teacher"
    train = ["train", *TINY_DEMO, *TEACHER_TRAIN, *paths, f"hydra.run.dir={teacher}"]
    assert cli.main(train) == 0
    return {"base": base, "paths": paths, "teacher": teacher}


def pseudo_args(workspace: dict, out: Path, *extra: str) -> list[str]:
    runs = f"runs=[{workspace['teacher']}]"
    return ["pseudo", *TINY_DEMO[1:], *workspace["paths"], runs, f"out={out}", "progress=false",
            "num_workers=0", *extra]  # fmt: skip


def teacher_probabilities(workspace: dict) -> dict[str, np.ndarray]:
    """Each test image's ensemble probabilities (flip TTA, as `podium pseudo` predicts them),
    computed here image by image, as p x 255 rounded like the command's."""
    cfg = compose_config("pseudo", [*TINY_DEMO[1:], *workspace["paths"]])
    competition = load_competition(cfg)
    runs = [(workspace["teacher"], 1.0)]
    views = tta_views("flip")
    ensemble = load_ensemble(cfg, runs, "binary", views, torch.device("cpu"), "fp32")
    probs = {}
    for sample in competition.test_samples():
        image = torch.from_numpy(competition.read_image(sample).transpose(2, 0, 1).copy())
        p = ensemble(image[None])[0, 0]
        probs[sample.id] = rundir.quantize(p).numpy() / np.float32(255.0)
    return probs


def test_the_rule_keeps_images_and_pixels_as_stated():
    sure = np.array([[0.01, 0.02], [0.97, 0.99]], dtype=np.float32)
    unsure = np.array([[0.01, 0.5], [0.6, 0.99]], dtype=np.float32)  # half its pixels confident
    rule = PseudoRule(mode="image", labels="hard", low=0.1, high=0.9, min_confident=0.75)
    fraction, label = rule.apply(sure)
    assert fraction == 1.0 and label[0].tolist() == [[0, 0], [255, 255]]
    assert (label[1] == 255).all()  # image mode: every pixel of a kept image counts
    fraction, label = rule.apply(unsure)
    assert fraction == 0.5 and label is None
    pixel = PseudoRule(mode="pixel", labels="soft", low=0.1, high=0.9, min_confident=0.5)
    _, label = pixel.apply(unsure)
    assert label[1].tolist() == [[255, 0], [0, 255]]  # uncertain pixels weigh 0 in the loss
    assert label[0].tolist() == [[3, 128], [153, 252]]  # soft: p x 255, rounded


@pytest.mark.slow
def test_a_round_trains_on_exactly_the_confident_images_never_in_a_validation_fold(
    workspace, tmp_path
):
    probs = teacher_probabilities(workspace)
    # A band and a threshold that split these (barely trained) teacher's images.
    pixels = np.concatenate([p.ravel() for p in probs.values()])
    low, high = (float(q) for q in np.quantile(pixels, [0.3, 0.7]))
    fractions = {i: float(((p < low) | (p > high)).mean()) for i, p in probs.items()}
    ordered = sorted(set(fractions.values()))
    assert len(ordered) >= 2, "the teacher gives every image the same confident fraction"
    gaps = [(b - a, (a + b) / 2) for a, b in zip(ordered, ordered[1:], strict=False)]
    min_confident = max(gaps)[1]  # far from every image's fraction
    expected = {i for i, f in fractions.items() if f >= min_confident}
    assert 0 < len(expected) < len(probs)

    out = tmp_path / "round1"
    rule = [f"rule.low={low}", f"rule.high={high}", f"rule.min_confident={min_confident}"]
    assert cli.main(pseudo_args(workspace, out, *rule)) == 0
    manifest = json.loads((out / "pseudo.json").read_text())
    assert manifest["round"] == 1 and manifest["teachers"] == [str(workspace["teacher"])]
    assert (manifest["kept"], manifest["total"]) == (len(expected), len(probs))
    assert manifest["rule"]["min_confident"] == min_confident

    test_ids = set(probs)
    for fold in range(4):  # every fold: the same pseudo images, all in the training part
        overrides = [*TINY_DEMO, *TINY_TRAIN, *workspace["paths"], f"fold={fold}",
                     f"pseudo={out}", "pseudo_ratio=0.5"]  # fmt: skip
        data = load_data(compose_config("train", overrides))
        pseudo_ids = {item[0] for item in data.train_set.pseudo.items}
        val_ids = {s.id for s in data.val_set.samples}
        assert pseudo_ids == expected
        assert not pseudo_ids & val_ids and pseudo_ids <= test_ids
        assert {s.id for s in data.train_set.samples}.isdisjoint(val_ids)
        # Every batch of the epoch: 2 of its 4 images pseudo-labelled.
        order = data.epoch_order(0, 0)
        n_labelled = len(data.train_set.samples)
        for start in range(0, len(order), 4):
            assert sum(i >= n_labelled for i in order[start : start + 4]) == 2
        item = data.train_set[order[3]]
        assert item["pseudo"] and item["mask"].shape == item["pixel_weight"].shape


@pytest.mark.slow
def test_a_pseudo_set_of_validation_images_is_refused(workspace, demo_data_dir, tmp_path, capsys):
    """Images labelled by `images=FOLDER` that are the training images themselves: for any
    fold, some are validation images, and training refuses them in one line."""
    out = tmp_path / "leaky"
    folder = f"images={demo_data_dir / 'train' / 'images'}"
    assert cli.main(pseudo_args(workspace, out, folder, "rule.min_confident=0")) == 0
    run = tmp_path / "student"
    train = ["train", *TINY_DEMO, *TINY_TRAIN, *workspace["paths"], f"pseudo={out}",
             f"hydra.run.dir={run}"]  # fmt: skip
    assert cli.main(train) == 1
    assert "are validation images of this fold" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.slow
def test_rounds_are_recorded_and_a_second_round_learns_from_the_students(
    workspace, tmp_path, capsys
):
    round1 = tmp_path / "round1"
    assert cli.main(pseudo_args(workspace, round1, "rule.min_confident=0", "rule.mode=pixel")) == 0
    student = tmp_path / "student"
    train = ["train", *TINY_DEMO, *TINY_TRAIN, *workspace["paths"], f"pseudo={round1}",
             "pseudo_weight=0.5", f"hydra.run.dir={student}"]  # fmt: skip
    assert cli.main(train) == 0
    recorded = json.loads((student / "summary.json").read_text())["pseudo"]
    assert recorded["round"] == 1 and recorded["teachers"] == [str(workspace["teacher"])]
    assert recorded["rule"]["mode"] == "pixel" and recorded["weight"] == 0.5

    round2 = tmp_path / "round2"
    runs = f"runs=[{student}]"
    assert cli.main([*pseudo_args(workspace, round2, "rule.min_confident=0"), runs]) == 0
    manifest = json.loads((round2 / "pseudo.json").read_text())
    assert manifest["round"] == 2 and manifest["teachers"] == [str(student)]

    capsys.readouterr()
    assert cli.main(["runs", *TINY_DEMO[1:], *workspace["paths"]]) == 0
    printed = capsys.readouterr().out
    assert f"Pseudo-label round 1 (`{round1}`)" in printed and "optimistic" in printed
    writeup = ["writeup", *TINY_DEMO[1:], *workspace["paths"], f"writeup_dir={tmp_path}"]
    assert cli.main(writeup) == 0
    text = (tmp_path / "demo_shapes.md").read_text()
    assert f"Pseudo-label round 1 (`{round1}`)" in text
    assert "**CV with pseudo-labels is optimistic**" in text


@pytest.mark.slow
def test_fold_all_trains_on_every_image_and_claims_no_score(workspace, tmp_path, capsys):
    overrides = [*TINY_DEMO, *TINY_TRAIN, *workspace["paths"], "fold=all"]
    data = load_data(compose_config("train", overrides))
    assert len(data.train_set) == 48 and len(data.val_set) == 0

    # No trainer.max_epochs given: the recipe's CV run (the teacher: same config) decides.
    no_epochs = [o for o in overrides if not o.startswith("trainer.max_epochs")]
    other = tmp_path / "other"  # another recipe (learning rate): no CV run to count on
    assert cli.main(["train", *no_epochs, "optimizer.lr=0.002", f"hydra.run.dir={other}"]) == 2
    assert "give trainer.max_epochs=N" in capsys.readouterr().err and not other.exists()
    full = tmp_path / "full"
    teacher_best = json.loads((workspace["teacher"] / "summary.json").read_text())["best_epoch"]
    assert cli.main(["train", *no_epochs, f"hydra.run.dir={full}"]) == 0
    summary = json.loads((full / "summary.json").read_text())
    assert summary["fold"] == "all" and summary["full_data"] is True
    assert summary["best_score"] is None and summary["epochs_run"] == teacher_best
    assert summary["images_seen"] == teacher_best * 3 * 4  # 3 batches of 4 per epoch
    assert not (full / "oof.npz").exists()
    rows = (full / "metrics.csv").read_text().splitlines()[1:]
    assert rows and all(row.split(",")[5] == "" for row in rows)  # no val_score
    best = torch.load(full / "checkpoints" / "best.pt", weights_only=True)["model"]
    last = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], last[k]) for k in best)  # the last epoch is the model

    capsys.readouterr()
    tune = ["tune", *TINY_DEMO[1:], *workspace["paths"], f"runs=[{full}]",
            f"hydra.run.dir={tmp_path / 'tune'}"]  # fmt: skip
    assert cli.main(tune) == 1
    assert "full-data models (fold=all)" in capsys.readouterr().err
    assert cli.main(["runs", *TINY_DEMO[1:], *workspace["paths"]]) == 0
    printed = capsys.readouterr().out
    assert "Full-data models (`fold=all`)" in printed and str(full.name) in printed
    writeup = ["writeup", *TINY_DEMO[1:], *workspace["paths"], f"writeup_dir={tmp_path}"]
    assert cli.main(writeup) == 0
    text = (tmp_path / "demo_shapes.md").read_text()
    assert "### Full-data models and pseudo-labels" in text
    assert "Full-data models (`fold=all`)" in text and f"| {full} " in text


def test_mixed_batches_deal_pseudo_images_evenly_and_replay():
    order = mixed_epoch_order(10, 3, batch_size=4, per_batch=1, world=2, steps=5, seed=1, epoch=2)
    assert order == mixed_epoch_order(10, 3, 4, 1, 2, 5, seed=1, epoch=2)  # a function of both
    for rank in range(2):
        shard = order[rank::2]
        batches = [shard[i : i + 4] for i in range(0, len(shard), 4)]
        assert all(sum(i >= 10 for i in batch) == 1 for batch in batches)
    # The labelled stream goes through every image before repeating one.
    stream = [i for e in range(4) for i in mixed_epoch_order(10, 3, 4, 1, 1, 5, 0, e) if i < 10]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))


def test_the_loss_ignores_uncertain_pixels_and_weighs_pseudo_images():
    torch.manual_seed(0)
    base = build_loss(compose_config("train", ["loss=bce_dice"]).loss, "binary")
    logits = torch.randn(4, 1, 8, 8)
    target = (torch.rand(4, 1, 8, 8) > 0.5).to(torch.uint8)
    pseudo = torch.tensor([False, False, True, True])
    weight = torch.full_like(target, 255)
    weight[2:, :, :4] = 0  # the top half of the pseudo images is uncertain
    soft = target * 255
    loss = MixedLoss(base, 0.5)
    value = loss(logits, target, pseudo=pseudo, soft_mask=soft, pixel_weight=weight)
    flipped = soft.clone()
    flipped[2:, :, :4] = 255 - flipped[2:, :, :4]  # other labels where nothing counts
    same = loss(logits, target, pseudo=pseudo, soft_mask=flipped, pixel_weight=weight)
    assert torch.allclose(value, same)
    flipped[2:, :, 4:] = 255 - flipped[2:, :, 4:]  # and where it counts: the loss changes
    assert not torch.allclose(value, loss(logits, target, pseudo, flipped, weight))
    unweighted = MixedLoss(base, 0.0)(logits, target, pseudo, soft, weight)
    assert torch.allclose(unweighted, base(logits[:2], target[:2]) * 2 / 4)
    assert torch.equal(loss(logits, target), base(logits, target))  # validation: the base loss
