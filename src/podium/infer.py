"""Inference: TTA, fold/seed ensembles, tiled prediction, OOF-tuned post-processing and streaming
submissions — `podium predict` and `podium tune`.

The pieces, each usable on its own:

    View, tta_views, tta_predict    dihedral and multi-scale views, each de-augmented exactly
    Ensemble                        models x views -> averaged probabilities at the input's size
    tile_starts, tile_window,       overlapping tiles with a smooth weight window, merged and
      predict_tiled                   cropped exactly to the image
    PostProcess                     threshold, small-component removal, empty-mask rule
    tune_postprocess                coordinate search of PostProcess against the metric on OOF
    predict_rows                    test set -> submission rows, lazily (a generator)

Probabilities, not logits, are averaged (over views, then over models): with logits one
over-confident view outvotes the rest (+12 against three views at -1 still says "yes"), and
models trained with different losses have logits on different scales.

Tuned values live in `tuned.json` in the `podium tune` run directory. `podium predict` reads
`tuned=PATH` (the file or its run directory), or with `tuned=auto` the newest
`<paths.runs_dir>/<competition>/*/tuned.json` tuned on exactly the same runs; `tuned=null` uses
the `threshold`, `min_area` and `empty_area` given on the command line.
"""

from __future__ import annotations

import glob
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from podium import io, ledger, submission
from podium.competition import Competition, Sample, load_competition
from podium.data import (
    SegmentationDataset,
    load_or_make_folds,
    make_loader,
    resolve_num_workers,
    split_samples,
)
from podium.io import PodiumError
from podium.models import (
    binarize,
    load_run_model,
    predict_logits,
    probabilities,
    resolve_device,
    resolve_precision,
)

log = logging.getLogger(__name__)

__all__ = [
    "View",
    "TTA_SETS",
    "tta_views",
    "tta_predict",
    "Ensemble",
    "tile_starts",
    "tile_window",
    "predict_tiled",
    "PostProcess",
    "remove_small_components",
    "tune_postprocess",
    "predict_batch",
    "predict_rows",
    "quantize",
    "resolve_runs",
    "find_tuned",
    "predict",
    "tune",
]

Forward = Callable[[torch.Tensor], torch.Tensor]


# =============================================================================================
# Test-time augmentation
@dataclass(frozen=True)
class View:
    """One TTA view: flip left-right (optional), then rotate `rotations` x 90 degrees
    (counter-clockwise), at `scale` times the input size. Flips and rotations are exact
    permutations of pixels, so `deaugment(augment(x)) == x` bit for bit."""

    rotations: int = 0
    hflip: bool = False
    scale: float = 1.0

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.hflip:
            x = x.flip(-1)
        return torch.rot90(x, self.rotations, dims=(-2, -1)) if self.rotations else x

    def deaugment(self, y: torch.Tensor) -> torch.Tensor:
        if self.rotations:
            y = torch.rot90(y, -self.rotations, dims=(-2, -1))
        return y.flip(-1) if self.hflip else y


# vflip is a left-right flip followed by a half turn; "both flips" is the half turn alone.
TTA_SETS: dict[str, tuple[View, ...]] = {
    "none": (View(),),
    "hflip": (View(), View(hflip=True)),
    "vflip": (View(), View(2, True)),
    "flip": (View(), View(hflip=True), View(2, True), View(2)),
    "d4": tuple(View(k, flip) for flip in (False, True) for k in range(4)),
}


def tta_views(name: str, scales: Sequence[float] = (1.0,)) -> list[View]:
    """The views of TTA set `name` (none | hflip | vflip | flip | d4), each at every scale."""
    if name not in TTA_SETS:
        raise PodiumError(f"tta={name}: unknown TTA set (known: {', '.join(TTA_SETS)})")
    scales = [float(s) for s in scales]
    if not scales or any(s <= 0 for s in scales):
        raise PodiumError(f"tta_scales={scales}: expected a list of positive scales")
    return [replace(view, scale=s) for s in scales for view in TTA_SETS[name]]


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of NCHW (half-pixel centres, no antialiasing: what cv2.INTER_LINEAR and
    albumentations' Resize do in training). uint8 stays uint8, rounded."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if x.dtype == torch.uint8:
        y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
        return y.round_().clamp_(0, 255).to(torch.uint8)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def tta_predict(
    forward: Forward, images: torch.Tensor, views: Sequence[View], max_batch: int | None = None
) -> torch.Tensor:
    """The mean over `views` of `forward` on each view of `images` (NCHW), de-augmented and at
    the input's size. `forward` maps a batch to per-pixel probabilities at its input size.

    Views whose inputs have the same shape run as extra batch items of one forward pass (at
    most `max_batch` images per pass; None: all of them)."""
    n, _, h, w = images.shape
    groups: dict[tuple[int, int], list[View]] = {}
    for view in views:
        sh, sw = max(1, round(h * view.scale)), max(1, round(w * view.scale))
        groups.setdefault((sw, sh) if view.rotations % 2 else (sh, sw), []).append(view)
    total = None
    for group in groups.values():
        per_pass = len(group) if max_batch is None else max(1, max_batch // n)
        for start in range(0, len(group), per_pass):
            chunk = group[start : start + per_pass]
            batch = torch.cat([v.augment(_scaled(images, v.scale)) for v in chunk])
            if max_batch is None or len(batch) <= max_batch:
                out = forward(batch)
            else:
                out = torch.cat([forward(part) for part in batch.split(max_batch)])
            for i, view in enumerate(chunk):
                probs = resize(view.deaugment(out[i * n : (i + 1) * n]), (h, w))
                total = probs.to(torch.float32, copy=True) if total is None else total.add_(probs)
    return total.div_(len(views))


def _scaled(images: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return images
    h, w = images.shape[-2:]
    return resize(images, (max(1, round(h * scale)), max(1, round(w * scale))))


class Ensemble:
    """Models x TTA views -> the weighted mean of their probabilities, at the input's size.

    Each model sees the batch at its own training resolution (`input_sizes[i]`, its run's
    `competition.image_size`; None keeps the native size) through every view; its
    probabilities are de-augmented, resized back and averaged over views, then over models.
    Call it with a uint8 NCHW batch; it returns float NCHW probabilities on `device`.
    """

    def __init__(
        self,
        models: Sequence[torch.nn.Module],
        task: str,
        views: Sequence[View],
        device: torch.device,
        precision: str = "fp32",
        weights: Sequence[float] | None = None,
        input_sizes: Sequence[Sequence[int] | None] | None = None,
        max_batch: int | None = None,
    ):
        weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(models) or min(weights) < 0 or sum(weights) <= 0:
            raise PodiumError(f"run_weights={weights}: need one non-negative weight per model")
        self.models = list(models)
        self.weights = [w / sum(weights) for w in weights]
        self.input_sizes = list(input_sizes) if input_sizes is not None else [None] * len(models)
        self.task, self.views, self.device = task, list(views), device
        self.precision, self.max_batch = precision, max_batch

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        h, w = images.shape[-2:]
        total = None
        for model, weight, size in zip(self.models, self.weights, self.input_sizes, strict=True):

            def forward(batch: torch.Tensor, model=model) -> torch.Tensor:
                logits = predict_logits(model, batch, self.device, self.precision)
                return probabilities(logits, self.task)

            inputs = images if size is None else resize(images, size)
            probs = resize(tta_predict(forward, inputs, self.views, self.max_batch), (h, w))
            total = probs.mul_(weight) if total is None else total.add_(probs, alpha=weight)
        return total


# =============================================================================================
# Tiled prediction
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of `tile`-long windows covering [0, length): spread evenly, consecutive windows
    overlapping by at least `overlap`, the first at 0 and the last flush with the end."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_window(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A smooth HxW weight: a Gaussian (sigma = 1/8 of the side, as nnU-Net) floored at 1e-3 of
    its peak so every pixel keeps a weight. Tile centres, which saw the most context, count
    most, and tile edges fade out instead of leaving seams."""

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        return torch.exp(-0.5 * (x / max(n / 8, 1e-6)) ** 2)

    window = axis(height)[:, None] * axis(width)[None, :]
    return (window / window.max()).clamp_(min=1e-3)


def predict_tiled(
    forward: Forward, image: torch.Tensor, tile_size: int, overlap: float, batch_size: int
) -> torch.Tensor:
    """Probabilities of one large CxHxW image, tile by tile: tiles of `tile_size` (smaller
    sides stay whole) overlapping by `overlap` of a tile run through `forward` in batches, and
    are merged as a window-weighted mean. The result is exactly HxW."""
    h, w = image.shape[-2:]
    th, tw = min(tile_size, h), min(tile_size, w)
    step_overlap = int(round(tile_size * overlap))
    corners = [
        (y, x) for y in tile_starts(h, th, step_overlap) for x in tile_starts(w, tw, step_overlap)
    ]
    merged = weight_sum = window = None
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        probs = forward(torch.stack([image[:, y : y + th, x : x + tw] for y, x in chunk]))
        if merged is None:
            merged = probs.new_zeros((probs.shape[1], h, w), dtype=torch.float32)
            weight_sum = probs.new_zeros((h, w), dtype=torch.float32)
            window = tile_window(th, tw, probs.device)
        for (y, x), p in zip(chunk, probs, strict=True):
            merged[:, y : y + th, x : x + tw].add_(p * window)
            weight_sum[y : y + th, x : x + tw].add_(window)
    return merged.div_(weight_sum)


# =============================================================================================
# Post-processing
@dataclass(frozen=True)
class PostProcess:
    """Probabilities -> the hard mask a submission encodes.

    threshold: binarisation threshold (binary, multilabel; multiclass takes the argmax).
    min_area: connected components (8-connected) smaller than this many pixels are removed.
    empty_area: a mask (per class) left with fewer pixels than this becomes empty.
    Areas are pixels at the resolution the mask is made at, times `area_scale`.
    """

    threshold: float = 0.5
    min_area: float = 0
    empty_area: float = 0

    def __call__(self, probs: np.ndarray, task: str, area_scale: float = 1.0) -> np.ndarray:
        hard = binarize(probs, task, self.threshold)
        min_area, empty_area = self.min_area * area_scale, self.empty_area * area_scale
        if min_area <= 1 and empty_area <= 0:
            return hard
        if task == "binary":
            return self._clean(hard, min_area, empty_area)
        if task == "multilabel":
            return np.stack([self._clean(channel, min_area, empty_area) for channel in hard])
        out = hard.copy()
        for class_id in np.unique(hard):
            if class_id == 0:
                continue
            region = hard == class_id
            out[region & ~self._clean(region, min_area, empty_area).astype(bool)] = 0
        return out

    @staticmethod
    def _clean(mask: np.ndarray, min_area: float, empty_area: float) -> np.ndarray:
        mask = remove_small_components(mask, min_area) if min_area > 1 else mask.astype(np.uint8)
        if empty_area > 0 and int(mask.sum()) < empty_area:
            return np.zeros_like(mask)
        return mask


def remove_small_components(mask: np.ndarray, min_area: float) -> np.ndarray:
    """`mask` (HxW) without its 8-connected components of fewer than `min_area` pixels."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # the background
    return keep[labels].astype(np.uint8)


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


# =============================================================================================
# Streaming prediction
def predict_batch(
    ensemble: Forward,
    images: torch.Tensor,
    sizes: Sequence[Sequence[int]],
    tile_size: int | None = None,
    tile_overlap: float = 0.25,
    tile_batch: int = 8,
) -> list[torch.Tensor]:
    """Probabilities (CxHxW each) of the images of a padded loader batch, each at its own size.
    Images of one size run together (no padding reaches the model); images with a side larger
    than `tile_size` are predicted tile by tile."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        by_size.setdefault((int(h), int(w)), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(sizes)
    for (h, w), indices in by_size.items():
        if tile_size and max(h, w) > tile_size:
            for i in indices:
                image = images[i, :, :h, :w]
                out[i] = predict_tiled(ensemble, image, tile_size, tile_overlap, tile_batch)
            continue
        probs = ensemble(images[indices, :, :h, :w])
        for j, i in enumerate(indices):
            out[i] = probs[j]
    return out


def quantize(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities as uint8 p x 255, rounded (as `train.write_oof` stores them)."""
    return probs.float().mul(255.0).round_().to(torch.uint8)


def predict_rows(
    competition: Competition,
    samples: Sequence[Sample],
    batches: Iterable[dict],
    ensemble: Forward,
    postprocess: PostProcess,
    area_basis: Sequence[int] | None = None,
    tile_size: int | None = None,
    tile_overlap: float = 0.25,
    tile_batch: int = 8,
) -> Iterator[tuple[str, str]]:
    """(row id, encoded mask) rows of the submission, made batch by batch as they are asked
    for: memory holds at most two batches of predictions whatever the size of the test set.

    Probabilities leave the device as uint8 (p x 255, like the OOF files `tune` reads, so both
    post-process the same values; 4x less to copy), and post-processing and encoding of a batch
    run in a helper thread while the next batch is predicted.

    `area_basis` (H, W): the resolution the post-processing areas were tuned at; areas scale
    with each image's size (None: areas are pixels of the image itself)."""

    def finish(indices: list[int], probs: list[np.ndarray]) -> list[tuple[str, str]]:
        rows = []
        for index, p in zip(indices, probs, strict=True):
            h, w = p.shape[-2:]
            scale = (h * w) / (area_basis[0] * area_basis[1]) if area_basis else 1.0
            hard = postprocess(p.astype(np.float32) / 255.0, competition.task, scale)
            rows += competition.submission_rows(samples[index], hard)
        return rows

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque = deque()
        for batch in batches:
            probs = predict_batch(
                ensemble, batch["image"], batch["sizes"].tolist(), tile_size, tile_overlap,
                tile_batch,
            )  # fmt: skip
            probs = [quantize(p).cpu().numpy() for p in probs]
            pending.append(pool.submit(finish, batch["index"].tolist(), probs))
            while len(pending) > 1:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


# =============================================================================================
# Runs and tuned values
def resolve_runs(cfg: DictConfig) -> list[tuple[Path, float]]:
    """(run directory, ensemble weight) of every run named by `runs` and `runs_of`.

    `runs` entries are directories or globs, relative to the working directory or else to
    `<paths.runs_dir>/<competition>`; `run_weights` gives one weight per entry (a glob's runs
    share it). `runs_of=E` adds every run the competition's ledger records under
    experiment_name E (the latest of each fold and seed), with weight 1."""
    competition = cfg.competition.name
    base = Path(cfg.paths.runs_dir) / competition
    entries = [str(e) for e in (cfg.get("runs") or [])]
    weights = cfg.get("run_weights")
    if weights is not None and len(weights) != len(entries):
        raise PodiumError(f"run_weights: {len(weights)} weights for {len(entries)} entries of runs")
    found: dict[Path, float] = {}
    for i, entry in enumerate(entries):
        matches = _match_runs(entry, base)
        if not matches:
            raise PodiumError(f"runs: '{entry}' names no run directory (none with a config.yaml)")
        for path in matches:
            found.setdefault(path, 1.0 if weights is None else float(weights[i]))
    if cfg.get("runs_of"):
        for path in _experiment_runs(str(cfg.runs_of), Path(cfg.paths.runs_dir), competition):
            found.setdefault(path, 1.0)
    if not found:
        raise PodiumError(
            "no runs given: set runs=[RUN_DIR,...] (globs work) or runs_of=EXPERIMENT"
        )
    for path in found:
        trained_on = OmegaConf.load(path / "config.yaml").competition.name
        if trained_on != competition:
            raise PodiumError(
                f"{path}: trained on competition {trained_on}, not {competition} "
                f"(add competition={trained_on})"
            )
    return list(found.items())


def _match_runs(entry: str, base: Path) -> list[Path]:
    given = Path(entry).expanduser()
    for root in (Path.cwd(), base):
        pattern = str(given if given.is_absolute() else root / given)
        paths = sorted(Path(p).resolve() for p in glob.glob(pattern))
        runs = [p for p in paths if (p / "config.yaml").is_file()]
        if runs:
            return runs
    return []


def _experiment_runs(experiment: str, runs_dir: Path, competition: str) -> list[Path]:
    path = ledger.ledger_path(runs_dir, competition)
    latest: dict[tuple, Path] = {}
    for record in ledger.read(path):
        if record.get("kind") != "run" or record.get("experiment_name") != experiment:
            continue
        run_dir = Path(record.get("run_dir", ""))
        if (run_dir / "config.yaml").is_file():
            latest[(record.get("fold"), record.get("seed"))] = run_dir.resolve()
    if not latest:
        raise PodiumError(f"runs_of={experiment}: no runs of that experiment in {path}")
    return sorted(latest.values())


def find_tuned(cfg: DictConfig, runs: Sequence[Path]) -> tuple[PostProcess, dict | None]:
    """The post-processing for `predict` and the tuned.json it came from (None: defaults)."""
    defaults = PostProcess(float(cfg.threshold), float(cfg.min_area), float(cfg.empty_area))
    choice = cfg.get("tuned", "auto")
    if choice is None:
        return defaults, None
    if choice == "auto":
        wanted = sorted(str(r) for r in runs)
        folder = Path(cfg.paths.runs_dir) / cfg.competition.name
        candidates = sorted(folder.glob("*/tuned.json"), key=lambda p: p.stat().st_mtime)
        for path in reversed(candidates):
            try:
                tuned = io.read_json(path)
            except ValueError:
                log.warning("%s: not valid JSON, skipped", path)
                continue
            if sorted(tuned.get("runs", [])) == wanted:
                return _postprocess_from(tuned, path), tuned | {"path": str(path)}
        log.warning(
            "no tuned.json for these runs (run `podium tune` with the same runs); using "
            "threshold=%s min_area=%s empty_area=%s", defaults.threshold, defaults.min_area,
            defaults.empty_area,
        )  # fmt: skip
        return defaults, None
    path = Path(str(choice)).expanduser()
    path = path / "tuned.json" if path.is_dir() else path
    if not path.is_file():
        raise PodiumError(f"tuned={choice}: no tuned.json there")
    try:
        tuned = io.read_json(path)
    except ValueError as e:
        raise PodiumError(f"{path}: not valid JSON ({e})") from None
    if sorted(tuned.get("runs", [])) != sorted(str(r) for r in runs):
        log.warning("%s was tuned on other runs than these", path)
    return _postprocess_from(tuned, path), tuned | {"path": str(path)}


def _postprocess_from(tuned: dict, path: Path) -> PostProcess:
    try:
        return PostProcess(**tuned["postprocess"])
    except (KeyError, TypeError) as e:
        raise PodiumError(f"{path}: not a podium tuned.json ({e})") from None


# =============================================================================================
# The commands
def predict(cfg: DictConfig, run_dir: Path) -> float | None:
    """`podium predict`: ensemble the runs on the test set into `run_dir/submission.csv`, then
    validate it (and score it when the competition has a local solution)."""
    t_start = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    competition = load_competition(cfg)
    runs = resolve_runs(cfg)
    postprocess, tuned = find_tuned(cfg, [path for path, _ in runs])
    tta = cfg.tta or (tuned or {}).get("tta") or "none"
    if tuned and tuned.get("tta") and tuned["tta"] != tta:
        log.warning("tuned on OOF predicted with tta=%s, predicting with tta=%s", tuned["tta"], tta)
    views = tta_views(tta, cfg.tta_scales)
    device = resolve_device()
    precision = resolve_precision(str(cfg.precision), device)
    ensemble = _load_ensemble(cfg, runs, competition.task, views, device, precision)
    if cfg.tile_size and any(ensemble.input_sizes):
        raise PodiumError(
            "tile_size: the runs were trained on resized images (competition.image_size); "
            "tiling needs runs trained at the native resolution"
        )
    area_basis = (tuned or {}).get("area_basis")

    competition.require_data()
    samples = competition.test_samples()
    dataset = SegmentationDataset(competition, samples, transform=None, with_masks=False)
    workers = resolve_num_workers(cfg.num_workers)
    loader = make_loader(dataset, int(cfg.batch_size), workers)
    log.info(
        "predicting %d test images with %d runs x %d views (tta=%s), %s, %s; post-processing %s",
        len(samples), len(runs), len(views), tta, device, precision, asdict(postprocess),
    )  # fmt: skip
    t_predict = time.time()
    batches = tqdm(loader, desc="predict", disable=not cfg.progress, mininterval=1.0)
    rows = predict_rows(
        competition, samples, batches, ensemble, postprocess, area_basis,
        cfg.tile_size, float(cfg.tile_overlap), int(cfg.batch_size),
    )  # fmt: skip
    path = run_dir / "submission.csv"
    n_rows = submission.write_submission(path, rows, competition.submission)
    seconds = time.time() - t_predict  # model loading and validation excluded
    _validate(competition, path)
    score = _local_score(competition, path)
    summary = {
        "competition": competition.name,
        "submission": str(path),
        "rows": n_rows,
        "images": len(samples),
        "runs": [str(p) for p, _ in runs],
        "run_weights": ensemble.weights,
        "tta": tta,
        "tta_scales": list(cfg.tta_scales),
        "views": len(views),
        "postprocess": asdict(postprocess),
        "tuned": (tuned or {}).get("path"),
        "tile_size": cfg.tile_size,
        "device": device.type,
        "precision": precision,
        "predict_s": round(seconds, 1),
        "images_per_s": round(len(samples) / seconds, 2) if seconds else None,
        "duration_s": round(time.time() - t_start, 1),
        "local_score": score,
    }
    io.write_json(run_dir / "predict.json", summary)
    log.info("wrote %s (%d rows, %s images/s)", path, n_rows, summary["images_per_s"])
    if score is not None:
        log.info("local %s of the submission: %.4f", cfg.competition.metric, score)
    return score


def _load_ensemble(cfg, runs, task, views, device, precision) -> Ensemble:
    models, sizes = [], []
    checkpoint, weights = str(cfg.checkpoint), str(cfg.weights)
    if checkpoint not in ("best", "last"):
        raise PodiumError(f"checkpoint={checkpoint}: expected best | last")
    if weights not in ("ema", "model"):
        raise PodiumError(f"weights={weights}: expected ema | model")
    for path, _ in runs:
        model, run_cfg = load_run_model(path, checkpoint, weights)
        models.append(model.to(device=device, memory_format=torch.channels_last))
        sizes.append(run_cfg.competition.get("image_size"))
    forward_batch = int(cfg.forward_batch) if cfg.forward_batch else None
    return Ensemble(
        models, task, views, device, precision, [w for _, w in runs], sizes, forward_batch
    )


def _validate(competition: Competition, path: Path) -> None:
    problems = submission.validate_submission(competition, path)
    if problems:
        rejected = path.with_name(path.name + ".invalid")
        path.replace(rejected)  # an invalid file must not look like a finished submission
        raise PodiumError(
            f"{rejected}: invalid submission ({len(problems)} problems): {problems[0]}"
        )


def _local_score(competition: Competition, path: Path) -> float | None:
    solution = competition.solution_path()
    if solution is None or not Path(solution).is_file():
        return None
    return float(submission.score_submission(competition, path, solution))


def tune(cfg: DictConfig, run_dir: Path) -> float:
    """`podium tune`: search the post-processing on the runs' out-of-fold predictions (never
    the test set), log the gain over the defaults and save `run_dir/tuned.json`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    competition = load_competition(cfg)
    runs = resolve_runs(cfg)
    defaults = PostProcess(float(cfg.threshold), float(cfg.min_area), float(cfg.empty_area))
    search = cfg.search
    candidates = list(cfg.tta_candidates or [None])
    results = {}
    for tta in candidates:
        if tta is None:
            items, area_basis = oof_from_files(runs, competition.task)
            source = "oof.npz"
        else:
            items, area_basis = oof_by_prediction(cfg, competition, runs, str(tta))
            source = f"validation folds predicted with tta={tta}"
        median_area = float(np.median([truth.shape[-2] * truth.shape[-1] for _, truth in items]))
        thresholds = (
            [round(t, 2) for t in np.arange(0.05, 0.951, 0.05)]
            if search.thresholds == "auto"
            else [float(t) for t in search.thresholds]
        )
        min_areas = area_grid(median_area) if search.min_areas == "auto" else search.min_areas
        empty_areas = area_grid(median_area) if search.empty_areas == "auto" else search.empty_areas
        result = tune_postprocess(
            items, competition.score_image, competition.task, defaults, thresholds,
            [float(a) for a in min_areas], [float(a) for a in empty_areas], int(search.rounds),
        )  # fmt: skip
        log.info(
            "OOF %s on %d images (%s): defaults %s -> %.4f; tuned %s -> %.4f (gain %+.4f, "
            "%d settings tried)", cfg.competition.metric, len(items), source,
            _describe(defaults), result.default_score, _describe(result.best), result.score,
            result.score - result.default_score, result.evaluations,
        )  # fmt: skip
        results[tta] = (result, area_basis, len(items))
    best_tta = max(results, key=lambda t: results[t][0].score)
    result, area_basis, n_images = results[best_tta]
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
    }
    io.write_json(run_dir / "tuned.json", tuned)
    log.info(
        "saved %s: %s%s (OOF gain %+.4f)", run_dir / "tuned.json", _describe(result.best),
        f", tta={best_tta}" if best_tta else "", tuned["gain"],
    )  # fmt: skip
    return result.score


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
        file = path / "oof.npz"
        if not file.is_file():
            raise PodiumError(f"{file}: no out-of-fold predictions (trainer.save_oof=false?)")
        image_size = OmegaConf.load(path / "config.yaml").competition.get("image_size")
        sizes.add(tuple(image_size) if image_size else None)
        with np.load(file) as oof:
            for i, image_id in enumerate(oof["ids"].tolist()):
                probs = oof[f"prob_{i}"].astype(np.float32) / 255.0
                _accumulate(accumulated, image_id, probs, oof[f"mask_{i}"], weight, file)
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
        ensemble = _load_ensemble(cfg, [(path, 1.0)], competition.task, views, device, precision)
        run_cfg = OmegaConf.load(path / "config.yaml")
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
                p = quantize(probs[j]).cpu().numpy() / np.float32(255.0)  # as in oof.npz
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
