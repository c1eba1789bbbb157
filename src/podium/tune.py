"""`podium tune`: choose the post-processing (threshold, small-component removal, empty-mask
rule, the image-level head's gate when the runs have one, optionally the TTA set) on
out-of-fold predictions — never on the test set — and record it with the runs it was tuned
on, where `podium predict` finds it (podium.rundir).

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
from podium.infer import default_postprocess, load_ensemble, predict_images, tta_views
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


# `auto` grid of thresholds and empty gates: 0.05, 0.10, ..., 0.95
PROBABILITY_GRID = [round(float(t), 2) for t in np.arange(0.05, 0.951, 0.05)]


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
    nonempty: Sequence[float] | None = None,
    empty_gates: Sequence[float] = (),
) -> TuneResult:
    """Search PostProcess on (probabilities CxHxW in [0, 1], truth) pairs for the best mean
    `score_image`: threshold, then min_area, then empty_area, then (with `nonempty`, the
    image-level head's P(not empty) per item) the empty gate among off and `empty_gates`,
    repeated until a pass changes nothing (at most `rounds`). A value replaces the current one
    only if it scores strictly higher, so ties keep the defaults; at the end the gate is
    switched off again if that scores as well (off wins ties)."""
    gates = [None] * len(items) if nonempty is None else list(nonempty)
    if len(gates) != len(items):
        raise ValueError(f"{len(gates)} non-empty probabilities for {len(items)} images")

    def evaluate(pp: PostProcess) -> float:
        scores = [
            score_image(pp(probs, task, nonempty=p), truth)
            for (probs, truth), p in zip(items, gates, strict=True)
        ]
        return float(np.mean(scores))

    axes: list[tuple[str, Sequence]] = [("min_area", min_areas), ("empty_area", empty_areas)]
    if task != "multiclass":  # the argmax ignores the threshold
        axes.insert(0, ("threshold", thresholds))
    if nonempty is not None and empty_gates:
        axes.append(("empty_gate", [None, *empty_gates]))
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
    if best.empty_gate is not None and start.empty_gate is None:
        off = replace(best, empty_gate=None)
        if off not in scores:
            scores[off] = evaluate(off)
        if scores[off] >= scores[best]:
            best = off
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
    defaults = default_postprocess(cfg)
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
        items, area_basis, nonempty = oof_from_files(runs, competition.task)
        source = "oof.npz"
    else:
        items, area_basis, nonempty = oof_by_prediction(cfg, competition, runs, str(tta))
        source = f"validation folds predicted with tta={tta}"
    median_area = float(np.median([truth.shape[-2] * truth.shape[-1] for _, truth in items]))
    search = cfg.search

    def grid(values, auto: list[float]) -> list[float]:
        return auto if values == "auto" else [float(v) for v in values]

    thresholds = grid(search.thresholds, PROBABILITY_GRID)
    min_areas = grid(search.min_areas, area_grid(median_area))
    empty_areas = grid(search.empty_areas, area_grid(median_area))
    empty_gates = grid(search.get("empty_gates", "auto"), PROBABILITY_GRID)
    result = tune_postprocess(
        items, competition.score_image, competition.task, defaults, thresholds, min_areas,
        empty_areas, int(search.rounds), nonempty, empty_gates,
    )  # fmt: skip
    log.info(
        "OOF %s on %d images (%s): defaults %s -> %.4f; tuned %s -> %.4f (gain %+.4f, "
        "%d settings tried)", cfg.competition.metric, len(items), source,
        _describe(defaults), result.default_score, _describe(result.best), result.score,
        result.score - result.default_score, result.evaluations,
    )  # fmt: skip
    return result, area_basis, len(items)


def _describe(pp: PostProcess) -> str:
    gate = "off" if pp.empty_gate is None else f"{pp.empty_gate:g}"
    return (
        f"threshold={pp.threshold:g} min_area={pp.min_area:g} empty_area={pp.empty_area:g} "
        f"empty_gate={gate}"
    )


OOFItems = list[tuple[np.ndarray, np.ndarray]]


def oof_from_files(
    runs: Sequence[tuple[Path, float]], task: str
) -> tuple[OOFItems, list[int] | None, list[float] | None]:
    """(probabilities, truth) per out-of-fold image from the runs' oof.npz files: folds are
    concatenated, runs covering the same image (seeds) averaged with their weights. Also the
    resolution the OOF is at when the runs resized images (competition.image_size), and the
    image-level head's P(not empty) per image (averaged over the runs that have the head;
    None unless every image has one)."""
    accumulated: dict[str, list] = {}
    sizes = set()
    for path, weight in runs:
        image_size = rundir.read_config(path).competition.get("image_size")
        sizes.add(tuple(image_size) if image_size else None)
        nonempty = rundir.read_oof_nonempty(path)
        for image_id, probs, mask in rundir.read_oof(path):
            probs = probs.astype(np.float32) / 255.0
            _accumulate(
                accumulated, image_id, probs, mask, weight, path / rundir.OOF,
                nonempty.get(image_id),
            )  # fmt: skip
    if len(sizes) > 1:
        raise PodiumError(
            "runs: trained at different competition.image_size; tune them separately or with "
            "tta_candidates (which predicts at the native size)"
        )
    basis = next(iter(sizes))
    items, nonempty = _averaged(accumulated, task)
    return items, list(basis) if basis else None, nonempty


def oof_by_prediction(
    cfg: DictConfig, competition: Competition, runs: Sequence[tuple[Path, float]], tta: str
) -> tuple[OOFItems, None, list[float] | None]:
    """(probabilities, truth) per out-of-fold image, predicted now: each run's model on its own
    validation fold, with TTA set `tta`, at the native resolution (like `predict`); and the
    image-level head's P(not empty) as in `oof_from_files`."""
    device = resolve_device(cfg.cpu_threads)
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
            predicted = predict_images(ensemble, batch["image"], sizes, cfg.tile_size,
                                       float(cfg.tile_overlap), int(cfg.batch_size))  # fmt: skip
            for j, (index, (h, w)) in enumerate(zip(batch["index"].tolist(), sizes, strict=True)):
                truth = batch["mask"][j, ..., :h, :w].numpy()
                probs, nonempty = predicted[j]
                p = rundir.quantize(probs).cpu().numpy() / np.float32(255.0)  # as in oof.npz
                _accumulate(accumulated, val_samples[index].id, p, truth, weight, path, nonempty)
    items, nonempty = _averaged(accumulated, competition.task)
    return items, None, nonempty


def _accumulate(
    accumulated: dict, image_id: str, probs, mask, weight: float, source, nonempty=None
) -> None:
    """Add a run's prediction of an image: [sum of weighted probabilities, sum of weights,
    truth, sum of weighted P(not empty), sum of the weights of runs that gave one]."""
    gate = (0.0, 0.0) if nonempty is None else (float(nonempty) * weight, weight)
    if image_id not in accumulated:
        accumulated[image_id] = [probs * weight, weight, mask, *gate]
        return
    entry = accumulated[image_id]
    if entry[0].shape != probs.shape:
        raise PodiumError(f"{source}: image {image_id} has another size than in the other runs")
    entry[0] += probs * weight
    entry[1] += weight
    entry[3] += gate[0]
    entry[4] += gate[1]


def _averaged(accumulated: dict, task: str) -> tuple[OOFItems, list[float] | None]:
    """The weighted means: (probabilities, truth) per image, and P(not empty) per image (None
    unless every image has one)."""
    items, nonempty = [], []
    for summed, weight, mask, gate_sum, gate_weight in accumulated.values():
        truth = mask[0] if task == "binary" else mask  # binary targets are 1xHxW
        items.append((summed / max(weight, 1e-12), truth))
        nonempty.append(gate_sum / gate_weight if gate_weight > 0 else None)
    if any(p is None for p in nonempty):
        if any(p is not None for p in nonempty):
            log.warning("only some runs have the empty head: its gate is not tuned")
        return items, None
    return items, nonempty
