"""`podium tune`: choose the post-processing (threshold, small-component removal, empty-mask
rule, optionally the TTA set) on out-of-fold predictions — never on the test set — and record it
with the runs it was tuned on, where `podium predict` finds it (podium.rundir).

    tune_postprocess    coordinate search of PostProcess against the competition metric
    oof_from_files      the runs' oof.npz files: folds concatenated, seeds averaged
    oof_by_prediction   each run's validation fold predicted again (to choose a TTA set)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from podium import io, rundir
from podium.competition import Competition, load_competition
from podium.data import (
    SegmentationDataset,
    load_or_make_folds,
    make_loader,
    resolve_num_workers,
    split_samples,
)
from podium.full_data import is_full_data
from podium.infer import load_ensemble, predict_batch, tta_views
from podium.io import PodiumError
from podium.models import resolve_device, resolve_precision
from podium.postprocess import PostProcess

log = logging.getLogger(__name__)

__all__ = [
    "TuneResult",
    "tune_postprocess",
    "area_grid",
    "oof_from_files",
    "oof_by_prediction",
    "tune_command",
]


@dataclass
class TuneResult:
    best: PostProcess
    score: float
    default_score: float
    evaluations: int


def tune_postprocess(
    items: Sequence[tuple[np.ndarray, np.ndarray]],
    score_image: Callable[[np.ndarray, np.ndarray], float],
    task: str,
    start: PostProcess,
    thresholds: Sequence[float],
    min_areas: Sequence[float],
    empty_areas: Sequence[float],
    rounds: int = 3,
) -> TuneResult:
    """Search PostProcess on (probabilities CxHxW in [0, 1], truth) pairs for the best mean
    `score_image`: threshold, then min_area, then empty_area, repeated until a pass changes
    nothing (at most `rounds`). A value replaces the current one only if it scores strictly
    higher, so ties keep the defaults."""

    def evaluate(pp: PostProcess) -> float:
        return float(np.mean([score_image(pp(probs, task), truth) for probs, truth in items]))

    axes = [("min_area", min_areas), ("empty_area", empty_areas)]
    if task != "multiclass":  # the argmax ignores the threshold
        axes.insert(0, ("threshold", thresholds))
    scores = {start: evaluate(start)}
    best = start
    for _ in range(rounds):
        before = best
        for name, grid in axes:
            for value in grid:
                candidate = replace(best, **{name: value})
                if candidate not in scores:
                    scores[candidate] = evaluate(candidate)
                if scores[candidate] > scores[best] + 1e-12:
                    best = candidate
        if best == before:
            break
    return TuneResult(best, scores[best], scores[start], len(scores))


def area_grid(median_area: float, steps: int = 12) -> list[float]:
    """0 and `steps` sizes from 0.01% to 2% of the median image area (pixels, rounded)."""
    sizes = np.geomspace(max(1.0, median_area * 1e-4), max(2.0, median_area * 0.02), steps)
    return [0.0, *sorted({float(round(s)) for s in sizes})]


def tune_command(cfg: DictConfig, run_dir: Path) -> float:
    """`podium tune`: search the post-processing on the runs' out-of-fold predictions (never
    the test set) — for each TTA set of `tta_candidates`, if given — log the gain over the
    defaults, save `run_dir/tuned.json` and record it with the runs for `podium predict`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    competition = load_competition(cfg)
    given = rundir.resolve_runs(cfg)
    runs = fold_runs(given)
    defaults = PostProcess(float(cfg.threshold), float(cfg.min_area), float(cfg.empty_area))
    results = {
        tta: _tune_one(cfg, competition, runs, defaults, tta)
        for tta in list(cfg.tta_candidates or [None])
    }
    best_tta = max(results, key=lambda t: results[t][0].score)
    result, area_basis, n_images = results[best_tta]
    path = run_dir / rundir.TUNED
    tuned = {
        "competition": competition.name,
        "metric": cfg.competition.metric,
        "runs": [str(p) for p, _ in runs],
        "run_weights": [w for _, w in runs],
        "images": n_images,
        "postprocess": asdict(result.best),
        "tta": best_tta,
        "area_basis": area_basis,
        "default": asdict(defaults),
        "default_score": result.default_score,
        "tuned_score": result.score,
        "gain": result.score - result.default_score,
        "by_tta": {str(t): r[0].score for t, r in results.items()} if best_tta else None,
        "path": str(path),
        "full_data_runs": [str(p) for p, _ in given if p not in dict(runs)],
    }
    io.write_json(path, tuned)
    # Under the ensemble as given: `podium predict` with the same runs, full-data ones too.
    rundir.record_tuning([p for p, _ in given], tuned)
    extra = f", tta={best_tta}" if best_tta else ""
    gain = tuned["gain"]
    log.info("saved %s: %s%s (OOF gain %+.4f)", path, _describe(result.best), extra, gain)
    return result.score


def fold_runs(runs: Sequence[tuple[Path, float]]) -> list[tuple[Path, float]]:
    """The runs that have out-of-fold predictions: full-data runs (fold=all) are left out, with
    a line saying so; runs that are all full-data are an error."""
    full = [path for path, _ in runs if is_full_data(rundir.read_config(path))]
    if full and len(full) == len(runs):
        raise PodiumError(
            f"runs: all {len(runs)} runs are full-data models (fold=all), which have no "
            "out-of-fold predictions to tune on; add the fold runs of the same recipe"
        )
    if full:
        names = ", ".join(path.name for path in full)
        log.info("tuning without %d full-data runs (fold=all, no OOF): %s", len(full), names)
    return [(path, weight) for path, weight in runs if path not in full]


def _tune_one(
    cfg: DictConfig,
    competition: Competition,
    runs: Sequence[tuple[Path, float]],
    defaults: PostProcess,
    tta: str | None,
) -> tuple[TuneResult, list[int] | None, int]:
    """(result, the OOF's resolution, images) of the search on one TTA set's OOF predictions:
    the oof.npz files when `tta` is None, else the validation folds predicted with it."""
    if tta is None:
        items, area_basis = oof_from_files(runs, competition.task)
        source = "oof.npz"
    else:
        items, area_basis = oof_by_prediction(cfg, competition, runs, str(tta))
        source = f"validation folds predicted with tta={tta}"
    median_area = float(np.median([truth.shape[-2] * truth.shape[-1] for _, truth in items]))
    search = cfg.search

    def grid(values, auto: list[float]) -> list[float]:
        return auto if values == "auto" else [float(v) for v in values]

    thresholds = grid(search.thresholds, [round(t, 2) for t in np.arange(0.05, 0.951, 0.05)])
    min_areas = grid(search.min_areas, area_grid(median_area))
    empty_areas = grid(search.empty_areas, area_grid(median_area))
    result = tune_postprocess(
        items, competition.score_image, competition.task, defaults, thresholds, min_areas,
        empty_areas, int(search.rounds),
    )  # fmt: skip
    log.info(
        "OOF %s on %d images (%s): defaults %s -> %.4f; tuned %s -> %.4f (gain %+.4f, "
        "%d settings tried)", cfg.competition.metric, len(items), source,
        _describe(defaults), result.default_score, _describe(result.best), result.score,
        result.score - result.default_score, result.evaluations,
    )  # fmt: skip
    return result, area_basis, len(items)


def _describe(pp: PostProcess) -> str:
    return f"threshold={pp.threshold:g} min_area={pp.min_area:g} empty_area={pp.empty_area:g}"


def oof_from_files(
    runs: Sequence[tuple[Path, float]], task: str
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int] | None]:
    """(probabilities, truth) per out-of-fold image from the runs' oof.npz files: folds are
    concatenated, runs covering the same image (seeds) averaged with their weights. Also the
    resolution the OOF is at when the runs resized images (competition.image_size)."""
    accumulated: dict[str, list] = {}
    sizes = set()
    for path, weight in runs:
        image_size = rundir.read_config(path).competition.get("image_size")
        sizes.add(tuple(image_size) if image_size else None)
        for image_id, probs, mask in rundir.read_oof(path):
            probs = probs.astype(np.float32) / 255.0
            _accumulate(accumulated, image_id, probs, mask, weight, path / rundir.OOF)
    if len(sizes) > 1:
        raise PodiumError(
            "runs: trained at different competition.image_size; tune them separately or with "
            "tta_candidates (which predicts at the native size)"
        )
    basis = next(iter(sizes))
    return _averaged(accumulated, task), list(basis) if basis else None


def oof_by_prediction(
    cfg: DictConfig, competition: Competition, runs: Sequence[tuple[Path, float]], tta: str
) -> tuple[list[tuple[np.ndarray, np.ndarray]], None]:
    """(probabilities, truth) per out-of-fold image, predicted now: each run's model on its own
    validation fold, with TTA set `tta`, at the native resolution (like `predict`)."""
    device = resolve_device()
    precision = resolve_precision(str(cfg.precision), device)
    views = tta_views(tta, cfg.tta_scales)
    samples = competition.train_samples()
    accumulated: dict[str, list] = {}
    for path, weight in runs:
        ensemble = load_ensemble(cfg, [(path, 1.0)], competition.task, views, device, precision)
        run_cfg = rundir.read_config(path)
        folds = load_or_make_folds(
            samples, competition.data_dir / "folds.csv", int(run_cfg.competition.n_folds),
            int(run_cfg.competition.folds_seed),
        )  # fmt: skip
        _, val_samples = split_samples(samples, folds, int(run_cfg.fold))
        dataset = SegmentationDataset(competition, val_samples, transform=None)
        loader = make_loader(dataset, int(cfg.batch_size), resolve_num_workers(cfg.num_workers))
        for batch in tqdm(loader, desc=f"oof {path.name}", disable=not cfg.progress):
            sizes = batch["sizes"].tolist()
            probs = predict_batch(ensemble, batch["image"], sizes, cfg.tile_size,
                                  float(cfg.tile_overlap), int(cfg.batch_size))  # fmt: skip
            for j, (index, (h, w)) in enumerate(zip(batch["index"].tolist(), sizes, strict=True)):
                truth = batch["mask"][j, ..., :h, :w].numpy()
                p = rundir.quantize(probs[j]).cpu().numpy() / np.float32(255.0)  # as in oof.npz
                _accumulate(accumulated, val_samples[index].id, p, truth, weight, path)
    return _averaged(accumulated, competition.task), None


def _accumulate(accumulated: dict, image_id: str, probs, mask, weight: float, source) -> None:
    if image_id not in accumulated:
        accumulated[image_id] = [probs * weight, weight, mask]
        return
    entry = accumulated[image_id]
    if entry[0].shape != probs.shape:
        raise PodiumError(f"{source}: image {image_id} has another size than in the other runs")
    entry[0] += probs * weight
    entry[1] += weight


def _averaged(accumulated: dict, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    items = []
    for summed, weight, mask in accumulated.values():
        truth = mask[0] if task == "binary" else mask  # binary targets are 1xHxW
        items.append((summed / max(weight, 1e-12), truth))
    return items
