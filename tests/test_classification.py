"""Image classification competitions (podium.classify): metrics and per-class thresholds on
planted out-of-fold sets, the losses, the timm model's weights, and the whole loop on the
generated Planet Amazon look-alike (multi-label F2, tags) and its weather-only multi-class
variant (cross-entropy, accuracy, one probability column per class)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_podium
from omegaconf import OmegaConf
from sklearn.metrics import fbeta_score, log_loss

from podium import cli
from podium.classify import scoring
from podium.classify.model import (
    build_classification_loss,
    build_classifier,
    load_classifier_run,
)
from podium.competition import load_competition
from podium.config import ConfigError, compose_config
from podium.io import PodiumError

PLANET = "planet-understanding-the-amazon-from-space"
WEATHER = ["clear", "haze", "partly_cloudy", "cloudy"]
# Generated and trained small: 32 px chips, a 100k-parameter timm test network from scratch.
TINY_PLANET = [
    f"competition={PLANET}",
    "competition.kaggle=null",
    "competition.options.n_train=48",
    "competition.options.n_test=8",
    "competition.options.size=32",
    "competition.n_folds=2",
]
TINY_CLASSIFIER = [
    "model=timm_classifier",
    "model.name=test_efficientnet",
    "model.encoder_weights=null",
    "trainer.max_epochs=1",
    "trainer.batch_size=8",
    "trainer.num_workers=0",
    "trainer.progress=false",
]


# -- metrics and thresholds ---------------------------------------------------------------------
def test_fbeta_log_loss_and_accuracy_match_their_definitions():
    rng = np.random.default_rng(0)
    truth = (rng.random((200, 6)) < 0.3).astype(np.uint8)
    truth[truth.sum(1) == 0, 0] = 1  # every image has a label, as on Planet
    probs = np.clip(truth * 0.4 + rng.random((200, 6)) * 0.6, 0, 1).astype(np.float32)
    pred = (probs > 0.5).astype(int)
    expected = fbeta_score(truth, pred, beta=2, average="samples", zero_division=1)
    assert scoring.score("fbeta", probs, truth, True, 0.5, beta=2.0) == pytest.approx(expected)
    # Multi-class: argmax accuracy and log-loss as scikit-learn computes them.
    probs = rng.dirichlet(np.ones(4), 100).astype(np.float64)
    labels = rng.integers(0, 4, 100)
    onehot = np.eye(4, dtype=np.uint8)[labels]
    accuracy = float((probs.argmax(1) == labels).mean())
    assert scoring.score("accuracy", probs, onehot, False) == pytest.approx(accuracy)
    assert scoring.score("log_loss", probs, onehot, False) == pytest.approx(
        log_loss(labels, probs, labels=range(4))
    )
    # An image with no label and nothing predicted scores 1; one false tag alone scores 0.
    none = np.zeros((1, 3), np.float32)
    assert scoring.score("fbeta", none, none, True, 0.5, beta=2.0) == 1.0
    assert scoring.score("fbeta", none + 0.9, none, True, 0.5, beta=2.0) == 0.0


def test_f2_thresholds_tuned_on_oof_beat_one_half_where_they_should():
    """Planted OOF probabilities: class 0's positives sit at 0.15-0.45 (an under-confident
    model for a rare class), its negatives below 0.12; class 1 is well separated around 0.5.
    F2 (recall first) then wants class 0's threshold low, and class 1's unchanged."""
    rng = np.random.default_rng(1)
    n = 400
    truth = (rng.random((n, 2)) < [0.3, 0.5]).astype(np.uint8)
    probs = np.empty((n, 2), np.float32)
    probs[:, 0] = np.where(truth[:, 0], rng.uniform(0.15, 0.45, n), rng.uniform(0.0, 0.12, n))
    probs[:, 1] = np.where(truth[:, 1], rng.uniform(0.55, 1.0, n), rng.uniform(0.0, 0.45, n))

    def f2(pred, labels):
        return scoring.per_image_scores("fbeta", pred.astype(np.float32), labels, True, beta=2.0)

    grid = [round(t, 2) for t in np.arange(0.02, 0.981, 0.02)]
    thresholds, tuned, at_half = scoring.tune_thresholds(probs, truth, f2, 0.5, grid)
    assert at_half == pytest.approx(scoring.score("fbeta", probs, truth, True, 0.5, beta=2.0))
    assert 0.12 <= thresholds[0] < 0.15  # between the negatives and the positives
    assert tuned == pytest.approx(1.0) and at_half < 0.85
    assert thresholds[1] == 0.5  # a tie keeps the start: nothing to gain there
    # Already perfect at 0.5: nothing moves.
    probs[:, 0] = truth[:, 0] * 0.9
    thresholds, tuned, at_half = scoring.tune_thresholds(probs, truth, f2, 0.5, grid)
    assert thresholds == [0.5, 0.5] and tuned == at_half == 1.0


# -- losses and the model -------------------------------------------------------------------------
def test_losses_for_multi_label_and_multi_class_targets():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    multi_label = (torch.rand(6, 4) < 0.4).float()
    onehot = F.one_hot(torch.arange(6) % 4, 4).float()
    cfg = OmegaConf.create({"weights": {}, "focal": {"gamma": 0.0, "alpha": None}})

    def loss(terms: dict, target, multi: bool) -> float:
        return float(
            build_classification_loss(OmegaConf.merge(cfg, {"weights": terms}), multi)(
                logits, target
            )
        )

    bce = F.binary_cross_entropy_with_logits(logits, multi_label)
    ce = F.cross_entropy(logits, torch.arange(6) % 4)
    assert loss({"bce": 1.0}, multi_label, True) == pytest.approx(float(bce))
    assert loss({"ce": 1.0}, onehot, False) == pytest.approx(float(ce))
    # Focal with gamma 0 is the cross-entropy it weighs; gamma > 0 discounts easy examples.
    assert loss({"focal": 1.0}, multi_label, True) == pytest.approx(float(bce), rel=1e-5)
    assert loss({"focal": 1.0}, onehot, False) == pytest.approx(float(ce), rel=1e-5)
    cfg.focal.gamma = 2.0
    assert loss({"focal": 1.0}, onehot, False) < float(ce)
    with pytest.raises(PodiumError, match="loss.weights.dice: not a classification loss"):
        loss({"dice": 1.0}, onehot, False)


def test_local_weights_load_into_everything_but_the_head(tmp_path):
    from safetensors.torch import save_file

    cfg = OmegaConf.create({
        "name": "test_efficientnet", "encoder_weights": None, "drop_rate": 0.0,
        "mean": [0.5] * 3, "std": [0.25] * 3, "kwargs": None,
    })  # fmt: skip
    source = build_classifier(cfg, num_classes=1000)  # a head of another size, as pretrained
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.net.state_dict().items()}, str(path))
    model = build_classifier(OmegaConf.merge(cfg, {"encoder_weights": str(path)}), 17)
    mine, theirs = model.net.state_dict(), source.net.state_dict()
    head = {k for k in mine if mine[k].shape != theirs[k].shape}
    assert head and all(k.startswith("classifier") for k in head)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k not in head)
    broken = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in list(theirs.items())[1:]}, str(broken))
    with pytest.raises(PodiumError, match="does not fit.*1 tensors missing"):
        build_classifier(OmegaConf.merge(cfg, {"encoder_weights": str(broken)}), 17)


# -- wrong combinations -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([f"competition={PLANET}", "model=timm_classifier", "loss=dice"],
         "loss.weights.dice: not a loss for competition.task=classification; use loss=bce"),
        ([f"competition={PLANET}"],  # the segmentation defaults: a Unet
         "model.arch=Unet: not a model for competition.task=classification; use model=timm_"),
        ([f"competition={PLANET}", "model=timm_classifier", "loss=ce"],
         "loss.weights.ce: cross-entropy needs one class per image"),
        (["competition=demo_shapes", "loss=ce"],
         "loss.weights.ce: not a loss for competition.task=binary"),
        (["competition=demo_shapes", "model=timm_classifier", "loss=bce"],
         "model.arch=timm_classifier: not a model for competition.task=binary"),
    ],
)  # fmt: skip
def test_a_loss_or_model_of_the_other_task_is_refused(overrides, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        compose_config("train", overrides)


def test_the_cli_says_it_in_one_line_and_writes_nothing(tmp_path):
    overrides = [f"competition={PLANET}", "model=timm_classifier", "loss=dice"]
    proc = run_podium("train", *overrides, f"paths.runs_dir={tmp_path}", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == (
        "podium: error: loss.weights.dice: not a loss for competition.task=classification; "
        "use loss=bce, ce or focal"
    )
    assert not any(tmp_path.iterdir())


def test_validate_names_each_bad_row_of_a_probability_submission(tmp_path):
    cfg = compose_config("tools", [
        f"competition={PLANET}", f"paths.data_dir={tmp_path}",
        f"competition.classes=[{','.join(WEATHER)}]",
        "competition.classification.multi_label=false",
        "competition.classification.format=probabilities",
    ])  # fmt: skip
    competition = load_competition(cfg)
    data = tmp_path / PLANET
    data.mkdir()
    ids = ["test_0", "test_1", "test_2", "file_0"]
    (data / "sample_submission_v2.csv").write_text(
        "image_name,tags\n" + "".join(f"{i},clear\n" for i in ids)
    )
    assert [s.image.parent.name for s in competition.test_samples()] == [
        "test-jpg", "test-jpg", "test-jpg", "test-jpg-additional",
    ]  # fmt: skip
    good = tmp_path / "good.csv"
    probs = np.array([[0.7, 0.1, 0.1, 0.1]] * 4, np.float32)
    competition.write_predictions(good, ids, probs, [0.5] * 4)
    assert competition.validate_file(good) == []
    bad = tmp_path / "bad.csv"
    header = "image_name,clear,haze,partly_cloudy,cloudy\n"
    bad.write_text(header + "test_0,1.2,0,0,0\ntest_1,abc,0,0,0\ntest_1,1,0,0,0\nother,1,0,0,0\n")
    assert competition.validate_file(bad) == [
        "row 2: clear=1.2 is not a probability in [0, 1]",
        "row 3: clear='abc' is not a number",
        "row 4: id test_1 is listed twice",
        "2 test images have no row (first: test_2)",
        "1 rows are not test images (first: other)",
    ]
    bad.write_text("image_name,tags\ntest_0,clear\n")
    assert competition.validate_file(bad) == [
        "header is image_name,tags; expected image_name,clear,haze,partly_cloudy,cloudy"
    ]


# -- the loop on generated data ----------------------------------------------------------------
def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_planet_loop_download_train_tune_predict_validate(tmp_path, one_thread):
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.runs_dir={tmp_path / 'runs'}"]
    data = tmp_path / "data" / PLANET
    assert cli.main(["download", *TINY_PLANET, *paths]) == 0
    assert (data / "train_v2.csv").is_file() and (data / "sample_submission_v2.csv").is_file()
    assert len(list((data / "train-jpg").glob("*.jpg"))) == 48
    runs = []
    for fold in (0, 1):
        run = tmp_path / f"fold{fold}"
        train = [*TINY_PLANET, *paths, *TINY_CLASSIFIER, "loss=bce", f"fold={fold}"]
        assert cli.main(["train", *train, f"hydra.run.dir={run}"]) == 0
        runs.append(run)
    # OOF: per image, the probability of each of the 17 tags and the true tags.
    with np.load(runs[0] / "oof.npz") as oof:
        assert oof["prob_0"].shape == (17,) and oof["mask_0"].shape == (17,)
        assert len(oof["ids"]) == 24
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["metric"] == "fbeta" and 0 <= summary["best_score"] <= 1
    tune_dir = tmp_path / "tune"
    common = [*TINY_PLANET, *paths, f"runs=[{tmp_path}/fold*]", "num_workers=0"]
    assert cli.main(["tune", *common, "progress=false", f"hydra.run.dir={tune_dir}"]) == 0
    tuned = json.loads((tune_dir / "tuned.json").read_text())
    assert tuned["images"] == 48 and len(tuned["thresholds"]) == 17
    assert tuned["tuned_score"] >= tuned["default_score"]
    predict_dir = tmp_path / "predict"
    assert (
        cli.main(["predict", *common, "tta=flip", "progress=false", f"hydra.run.dir={predict_dir}"])
        == 0
    )
    predicted = json.loads((predict_dir / "predict.json").read_text())
    assert predicted["views"] == 4 and len(predicted["runs"]) == 2
    assert predicted["thresholds"] == tuned["thresholds"]  # found with the runs
    rows = _read_rows(predict_dir / "submission.csv")
    assert rows[0] == ["image_name", "tags"] and len(rows) == 9
    assert [r[0] for r in rows[1:]] == [f"test_{i}" for i in range(8)]
    proc = run_podium("validate", *common[:-2], f"file={predict_dir / 'submission.csv'}")
    assert "valid submission" in proc.stdout
    # A broken copy: an unknown tag and a missing image, each named.
    bad = tmp_path / "bad.csv"
    bad.write_text("image_name,tags\ntest_0,primary forest\n" + "".join(
        f"test_{i},clear\n" for i in range(1, 7)))  # fmt: skip
    proc = run_podium("validate", *common[:-2], f"file={bad}", check=False)
    assert proc.returncode == 1
    assert "row 2: unknown class 'forest'" in proc.stdout and "test_7" in proc.stdout


@pytest.mark.slow
def test_multi_class_cross_entropy_with_probability_columns(tmp_path, one_thread):
    """Planet's four weather tags, exactly one per chip: a multi-class task trained with
    cross-entropy, scored by accuracy, submitted as one probability column per class."""
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.runs_dir={tmp_path / 'runs'}"]
    weather = [
        *TINY_PLANET,
        f"competition.classes=[{','.join(WEATHER)}]",
        "competition.classification.multi_label=false",
        "competition.classification.format=probabilities",
        "competition.metric=accuracy",
    ]
    assert cli.main(["download", *weather, *paths]) == 0
    labels = _read_rows(tmp_path / "data" / PLANET / "train_v2.csv")[1:]
    assert all(tags in WEATHER for _, tags in labels)  # one weather tag per chip
    run = tmp_path / "run"
    train = [*weather, *paths, *TINY_CLASSIFIER, "loss=ce", f"hydra.run.dir={run}"]
    assert cli.main(["train", *train]) == 0
    model, cfg = load_classifier_run(run)
    probs = model(torch.rand(2, 3, 32, 32)).softmax(1)
    assert probs.shape == (2, 4) and cfg.loss.name == "ce"
    common = [*weather, *paths, f"runs=[{run}]", "num_workers=0"]
    assert cli.main(["tune", *common, f"hydra.run.dir={tmp_path / 'tune'}"]) == 0
    tuned = json.loads((tmp_path / "tune" / "tuned.json").read_text())
    assert tuned["thresholds"] is None  # the argmax decides: nothing to tune
    predict_dir = tmp_path / "predict"
    assert cli.main(["predict", *common, "tta=hflip", f"hydra.run.dir={predict_dir}"]) == 0
    rows = _read_rows(predict_dir / "submission.csv")
    assert rows[0] == ["image_name", *WEATHER] and len(rows) == 9
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-4 for r in rows[1:])  # softmax rows
    proc = run_podium("score", *common[:-2], f"file={predict_dir / 'submission.csv'}")
    accuracy = float(proc.stdout.strip().splitlines()[-1].split(": ")[1])
    assert json.loads((predict_dir / "predict.json").read_text())["local_score"] == pytest.approx(
        accuracy, abs=1e-6
    )
