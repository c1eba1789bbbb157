"""`podium tune`, `predict`, `validate` and `score` for classification competitions
(`podium.tasks` sends them here when competition.task is classification).

    tune      per-class thresholds on the runs' out-of-fold probabilities for the competition
              metric (fbeta, accuracy when multi-label); log_loss and multi-class argmax have
              none to tune. Saved as tuned.json and recorded with the runs, like segmentation's.
    predict   the runs' probabilities on the test set, averaged over TTA views (flips) and runs
              (with their weights), then the submission: tags decided by the tuned thresholds,
              or one probability column per class.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from podium import io, rundir
from podium.classify import scoring
from podium.classify.labels import ClassificationCompetition
from podium.classify.model import class_probabilities, load_classifier_run
from podium.classify.training import ClassificationDataset
from podium.competition import load_competition
from podium.data import build_transforms, make_loader, resolve_num_workers
from podium.datacheck import require_clean_data
from podium.infer import find_tuned, tta_views
from podium.io import PodiumError
from podium.models import predict_logits, resolve_device, resolve_precision
from podium.submission import print_verdict
from podium.tune import oof_from_files

log = logging.getLogger(__name__)

__all__ = ["tune_command", "predict_command", "validate_command", "score_command"]


def _competition(cfg: DictConfig) -> ClassificationCompetition:
    competition = load_competition(cfg)
    if not isinstance(competition, ClassificationCompetition):
        raise PodiumError(
            f"competition {competition.name}: task classification needs an adapter subclassing "
            "podium.classify.ClassificationCompetition"
        )
    return competition


# -- tune -----------------------------------------------------------------------------------------
def tune_command(cfg: DictConfig, run_dir: Path) -> float:
    """Tune per-class thresholds on the runs' OOF probabilities; save and record tuned.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    competition = _competition(cfg)
    runs = rundir.resolve_runs(cfg)
    if cfg.get("tta_candidates"):
        raise PodiumError("tta_candidates: not supported for classification (tune uses oof.npz)")
    items, _, _ = oof_from_files(runs, competition.task)
    probs = np.stack([p for p, _ in items])
    truth = np.stack([t for _, t in items]).astype(np.uint8)
    metric, default = competition.metric, float(cfg.threshold)
    search = cfg.search
    grid = (
        [round(t, 2) for t in np.arange(0.02, 0.981, 0.02)]
        if search.thresholds == "auto"
        else [float(t) for t in search.thresholds]
    )

    def image_scores(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return scoring.per_image_scores(
            metric, pred.astype(np.float32), labels, True, 0.5, beta=competition.beta
        )

    if competition.multi_label and metric in scoring.THRESHOLDED:
        thresholds, tuned_score, default_score = scoring.tune_thresholds(
            probs, truth, image_scores, default, grid, int(search.rounds)
        )
    else:  # log_loss scores the probabilities; multi-class decides by the argmax
        thresholds = None
        score_args = (probs, truth, competition.multi_label, default)
        tuned_score = default_score = scoring.score(metric, *score_args, beta=competition.beta)
    path = run_dir / rundir.TUNED
    tuned = {
        "competition": competition.name,
        "metric": metric,
        "runs": [str(p) for p, _ in runs],
        "run_weights": [w for _, w in runs],
        "images": len(items),
        # What podium.infer.find_tuned reads; classification uses `thresholds` below.
        "postprocess": {"threshold": default, "min_area": 0.0, "empty_area": 0.0},
        "thresholds": dict(zip(competition.classes, thresholds, strict=True))
        if thresholds
        else None,
        "tta": None,
        "default": {"threshold": default},
        "default_score": default_score,
        "tuned_score": tuned_score,
        "gain": tuned_score - default_score,
        "path": str(path),
    }
    io.write_json(path, tuned)
    rundir.record_tuning([p for p, _ in runs], tuned)
    chosen = " ".join(f"{c}={t:g}" for c, t in (tuned["thresholds"] or {}).items()) or "none"
    log.info(
        "OOF %s on %d images: threshold %g everywhere -> %.4f; per-class thresholds (%s) -> "
        "%.4f (gain %+.4f); saved %s", metric, len(items), default, default_score, chosen,
        tuned_score, tuned_score - default_score, path,
    )  # fmt: skip
    return tuned_score


def thresholds_for(
    cfg: DictConfig, competition: ClassificationCompetition, runs: Sequence[Path]
) -> tuple[list[float], dict | None]:
    """Each class's threshold for `predict`: what `podium tune` chose for these runs (`tuned`
    as in segmentation: auto, a path, or null), else `threshold` for every class."""
    postprocess, tuned = find_tuned(cfg, runs)
    by_class = (tuned or {}).get("thresholds")
    if not by_class:
        return [float(postprocess.threshold)] * len(competition.classes), tuned
    if sorted(by_class) != sorted(competition.classes):
        raise PodiumError(f"{tuned['path']}: its thresholds are for other classes")
    return [float(by_class[c]) for c in competition.classes], tuned


# -- predict --------------------------------------------------------------------------------------
def predict_command(cfg: DictConfig, run_dir: Path) -> float | None:
    """Ensemble the runs (x TTA views) on the test set into run_dir/submission.csv, validate it
    and score it when the competition has a local solution."""
    t_start = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    competition = _competition(cfg)
    runs = rundir.resolve_runs(cfg)
    thresholds, tuned = thresholds_for(cfg, competition, [p for p, _ in runs])
    tta = cfg.tta or "none"
    if [float(s) for s in cfg.tta_scales] != [1.0]:
        raise PodiumError("tta_scales: classification predicts at the trained size only ([1.0])")
    views = tta_views(tta)
    device = resolve_device(cfg.cpu_threads)
    precision = resolve_precision(str(cfg.precision), device)
    models, sizes = [], set()
    for path, weight in runs:
        model, run_cfg = load_classifier_run(path, str(cfg.checkpoint), str(cfg.weights))
        models.append((model.to(device=device, memory_format=torch.channels_last), weight))
        size = run_cfg.competition.get("image_size")
        sizes.add(tuple(size) if size else None)
    if len(sizes) > 1:
        raise PodiumError("runs: trained at different competition.image_size; predict them apart")
    competition.require_data()
    samples = competition.test_samples()
    require_clean_data(competition, samples, "test", with_masks=False)
    size = next(iter(sizes))
    transform = build_transforms(None, size, train=False) if size else None
    dataset = ClassificationDataset(competition, samples, transform, with_labels=False)
    loader = make_loader(dataset, int(cfg.batch_size), resolve_num_workers(cfg.num_workers))
    log.info(
        "predicting %d test images with %d runs x %d views (tta=%s), %s, %s",
        len(samples), len(runs), len(views), tta, device, precision,
    )  # fmt: skip
    t_predict = time.time()
    total_weight = sum(w for _, w in models)
    if total_weight <= 0:
        raise PodiumError("run_weights: at least one weight must be > 0")
    probs = []
    for batch in tqdm(loader, desc="predict", disable=not cfg.progress, mininterval=1.0):
        summed = None
        for model, weight in models:
            for view in views:
                logits = predict_logits(model, view.augment(batch["image"]), device, precision)
                p = class_probabilities(logits, competition.multi_label) * (weight / len(views))
                summed = p if summed is None else summed + p
        probs.append((summed / total_weight).cpu().numpy())
    probs = np.concatenate(probs)
    seconds = time.time() - t_predict
    path = run_dir / "submission.csv"
    n_rows = competition.write_predictions(path, [s.id for s in samples], probs, thresholds)
    problems = competition.validate_file(path)
    if problems:
        rejected = path.with_name(path.name + ".invalid")
        path.replace(rejected)
        raise PodiumError(
            f"{rejected}: invalid submission ({len(problems)} problems): {problems[0]}"
        )
    solution = competition.solution_path()
    score = None
    if solution is not None and Path(solution).is_file():
        score = competition.score_file(path, Path(solution))[0]
    io.write_json(run_dir / rundir.PREDICTED, {
        "competition": competition.name,
        "submission": str(path),
        "rows": n_rows,
        "images": len(samples),
        "runs": [str(p) for p, _ in runs],
        "run_weights": [w for _, w in runs],
        "tta": tta,
        "views": len(views),
        "thresholds": dict(zip(competition.classes, thresholds, strict=True)),
        "tuned": (tuned or {}).get("path"),
        "device": device.type,
        "precision": precision,
        "predict_s": round(seconds, 1),
        "duration_s": round(time.time() - t_start, 1),
        "local_score": score,
    })  # fmt: skip
    log.info("wrote %s (%d rows)", path, n_rows)
    if score is not None:
        log.info("local %s of the submission: %.4f", competition.metric, score)
    return score


# -- validate, score ------------------------------------------------------------------------------
def validate_command(cfg: DictConfig) -> int:
    """`podium validate competition=X file=F`: each problem with its row, exit 1 if any;
    without `file`: every training label read, and a submission for the test set validates."""
    competition = _competition(cfg)
    if not cfg.get("file"):
        train = competition.train_samples()
        counts = sum(competition.read_labels(s) for s in train)
        test = [s.id for s in competition.test_samples()]
        uniform = np.full((len(test), len(competition.classes)), 0.6, np.float32)
        with tempfile.TemporaryDirectory() as folder:  # a submission of every test image
            probe = Path(folder) / "submission.csv"
            competition.write_predictions(probe, test, uniform, [0.5] * len(competition.classes))
            problems = competition.validate_file(probe)
        if problems:
            raise PodiumError(f"competition {competition.name}: a written submission is invalid: "
                              f"{problems[0]}")  # fmt: skip
        rarest = min(range(len(counts)), key=lambda i: counts[i])
        print(
            f"{competition.name}: adapter OK: {len(train)} training images, rarest class "
            f"{competition.classes[rarest]} ({int(counts[rarest])} images), {len(test)} test "
            f"images, a submission for them validates"
        )
        return 0
    path = Path(cfg.file)
    return print_verdict(path, competition.validate_file(path), competition.name)


def score_command(cfg: DictConfig) -> int:
    """`podium score competition=X file=F [solution=S]`: the local score, printed last."""
    competition = _competition(cfg)
    if not cfg.get("file"):
        raise PodiumError("podium score: pass file=SUBMISSION.csv")
    solution = cfg.get("solution") or competition.solution_path()
    if solution is None or not Path(solution).is_file():
        raise PodiumError(f"competition {competition.name}: no solution file; pass solution=PATH")
    result, images = competition.score_file(Path(cfg.file), Path(solution))
    print(f"{cfg.file}: {images} images scored against {solution}")
    print(f"{competition.metric}: {result:.6f}")
    return 0
