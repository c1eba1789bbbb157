"""Inference: TTA, fold/seed ensembles, tiled prediction, post-processing and streaming
submissions — `podium predict` (`podium tune`, which chooses the post-processing, is podium.tune).

The pieces, each usable on its own:

    View, tta_views, tta_predict    dihedral and multi-scale views, each de-augmented exactly
    Ensemble                        models x views -> averaged probabilities at the input's size
    tile_starts, tile_window,       overlapping tiles with a smooth weight window, merged and
      predict_tiled                   cropped exactly to the image (podium.tiles)
    PostProcess                     threshold, small-component removal, empty-mask rules
    predict_rows                    test set -> submission rows, lazily (a generator)

Probabilities, not logits, are averaged (over views, then over models): with logits one
over-confident view outvotes the rest (+12 against three views at -1 still says "yes"), and
models trained with different losses have logits on different scales.

`podium predict` post-processes with what `podium tune` chose for exactly its runs (recorded
with the runs: podium.rundir), or `tuned=PATH`, or with `tuned=null` the `threshold`, `min_area`
and `empty_area` given on the command line.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from podium import io, rundir, submission
from podium.competition import Competition, Sample, load_competition
from podium.data import (
    SegmentationDataset,
    make_loader,
    resolve_num_workers,
)
from podium.datacheck import require_clean_data
from podium.full_data import is_full_data
from podium.io import PodiumError
from podium.models import (
    load_run_model,
    predict_outputs,
    probabilities,
    resolve_device,
    resolve_precision,
    split_output,
)
from podium.postprocess import PostProcess
from podium.tiles import predict_tiled, tile_starts, tile_window

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
    "predict_images",
    "predict_rows",
    "find_tuned",
    "default_postprocess",
    "load_ensemble",
    "predict_command",
]

# A batch -> per-pixel probabilities at its input size; from models with the image-level head
# (`model.aux_head=empty`), the pair (probabilities, P(mask not empty) per image), as the models
# themselves return (podium.models.split_output reads both forms).
Forward = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


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
    the input's size. `forward` maps a batch to per-pixel probabilities at its input size
    (or to the pair with P(not empty) per image, averaged over the views alike: see Forward).

    Views whose inputs have the same shape run as extra batch items of one forward pass (at
    most `max_batch` images per pass; None: all of them)."""
    n, _, h, w = images.shape
    groups: dict[tuple[int, int], list[View]] = {}
    for view in views:
        sh, sw = max(1, round(h * view.scale)), max(1, round(w * view.scale))
        groups.setdefault((sw, sh) if view.rotations % 2 else (sh, sw), []).append(view)
    total = nonempty = None
    for group in groups.values():
        per_pass = len(group) if max_batch is None else max(1, max_batch // n)
        for start in range(0, len(group), per_pass):
            chunk = group[start : start + per_pass]
            batch = torch.cat([v.augment(_scaled(images, v.scale)) for v in chunk])
            if max_batch is None or len(batch) <= max_batch:
                out, gate = split_output(forward(batch))
            else:
                parts = [split_output(forward(part)) for part in batch.split(max_batch)]
                out = torch.cat([p for p, _ in parts])
                gate = None if parts[0][1] is None else torch.cat([g for _, g in parts])
            for i, view in enumerate(chunk):
                probs = resize(view.deaugment(out[i * n : (i + 1) * n]), (h, w))
                total = probs.to(torch.float32, copy=True) if total is None else total.add_(probs)
            if gate is not None:  # image-level: the views' values need no de-augmenting
                summed = gate.float().view(len(chunk), n).sum(0)
                nonempty = summed if nonempty is None else nonempty.add_(summed)
    total = total.div_(len(views))
    return total if nonempty is None else (total, nonempty.div_(len(views)))


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
    Call it with a uint8 NCHW batch; it returns float NCHW probabilities on `device`, and,
    when some of its models have the image-level head, the pair (probabilities, P(mask not
    empty) per image), that mean taken over the views and over those models (their weights
    renormalised among them).
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

    @property
    def has_nonempty(self) -> bool:
        """Whether some model has the image-level head (then calls return the pair)."""
        return any(getattr(m, "has_empty_head", False) for m in self.models)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        h, w = images.shape[-2:]
        total = nonempty = None
        gate_weight = 0.0
        for model, weight, size in zip(self.models, self.weights, self.input_sizes, strict=True):

            def forward(batch: torch.Tensor, model=model):
                logits, gate = predict_outputs(model, batch, self.device, self.precision)
                probs = probabilities(logits, self.task)
                return probs if gate is None else (probs, gate.sigmoid())

            inputs = images if size is None else resize(images, size)
            out, gate = split_output(tta_predict(forward, inputs, self.views, self.max_batch))
            probs = resize(out, (h, w))
            total = probs.mul_(weight) if total is None else total.add_(probs, alpha=weight)
            if gate is not None:
                gate_weight += weight
                nonempty = gate * weight if nonempty is None else nonempty.add_(gate, alpha=weight)
        if nonempty is None:
            return total
        return total, nonempty.div_(max(gate_weight, 1e-12))


# =============================================================================================
# Streaming prediction
def predict_images(
    ensemble: Forward,
    images: torch.Tensor,
    sizes: Sequence[Sequence[int]],
    tile_size: int | None = None,
    tile_overlap: float = 0.25,
    tile_batch: int = 8,
) -> list[tuple[torch.Tensor, float | None]]:
    """(probabilities CxHxW, P(mask not empty) or None without the image-level head) of each
    image of a padded loader batch, at its own size. Images of one size run together (no
    padding reaches the model); images with a side larger than `tile_size` are predicted tile
    by tile."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        by_size.setdefault((int(h), int(w)), []).append(i)
    out: list = [None] * len(sizes)
    for (h, w), indices in by_size.items():
        if tile_size and max(h, w) > tile_size:
            for i in indices:
                image = images[i, :, :h, :w]
                probs, gate = split_output(
                    predict_tiled(ensemble, image, tile_size, tile_overlap, tile_batch)
                )
                out[i] = (probs, None if gate is None else float(gate))
            continue
        probs, gates = split_output(ensemble(images[indices, :, :h, :w]))
        gates = None if gates is None else gates.float().cpu().tolist()
        for j, i in enumerate(indices):
            out[i] = (probs[j], None if gates is None else gates[j])
    return out


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

    def finish(indices: list[int], predicted: list) -> list[tuple[str, str]]:
        rows = []
        for index, (p, nonempty) in zip(indices, predicted, strict=True):
            h, w = p.shape[-2:]
            scale = (h * w) / (area_basis[0] * area_basis[1]) if area_basis else 1.0
            hard = postprocess(p.astype(np.float32) / 255.0, competition.task, scale, nonempty)
            rows += competition.submission_rows(samples[index], hard)
        return rows

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque = deque()
        for batch in batches:
            predicted = predict_images(
                ensemble, batch["image"], batch["sizes"].tolist(), tile_size, tile_overlap,
                tile_batch,
            )  # fmt: skip
            predicted = [(rundir.quantize(p).cpu().numpy(), g) for p, g in predicted]
            pending.append(pool.submit(finish, batch["index"].tolist(), predicted))
            while len(pending) > 1:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


# =============================================================================================
# Tuned values
def find_tuned(cfg: DictConfig, runs: Sequence[Path]) -> tuple[PostProcess, dict | None]:
    """The post-processing for `predict`, and the tuning it came from (None: the defaults).

    `tuned=auto`: what `podium tune` recorded with exactly these runs (see podium.rundir),
    wherever the tune command's own folder is; `tuned=PATH`: that tuned.json (or its folder);
    `tuned=null`: threshold, min_area, empty_area and empty_gate as given."""
    defaults = default_postprocess(cfg)
    choice = cfg.get("tuned", "auto")
    if choice is None:
        return defaults, None
    if choice == "auto":
        found = rundir.find_tuning(runs)
        if found is None:
            log.warning(
                "no tuning recorded for these runs (run `podium tune` with the same runs); "
                "using threshold=%s min_area=%s empty_area=%s",
                defaults.threshold, defaults.min_area, defaults.empty_area,
            )  # fmt: skip
            return defaults, None
        tuned, path = found
        return _postprocess_from(tuned, path), {"path": str(path)} | tuned
    path = Path(str(choice)).expanduser()
    path = path / rundir.TUNED if path.is_dir() else path
    if not path.is_file():
        raise PodiumError(f"tuned={choice}: no {rundir.TUNED} there")
    try:
        tuned = io.read_json(path)
    except ValueError as e:
        raise PodiumError(f"{path}: not valid JSON ({e})") from None
    if sorted(tuned.get("runs", [])) != sorted(str(r) for r in runs):
        log.warning("%s was tuned on other runs than these", path)
    return _postprocess_from(tuned, path), {"path": str(path)} | tuned


def default_postprocess(cfg: DictConfig) -> PostProcess:
    """The post-processing the config gives (`threshold`, `min_area`, `empty_area`,
    `empty_gate`): predict's without a tuning, and the baseline `podium tune` compares to."""
    gate = cfg.get("empty_gate")
    return PostProcess(
        float(cfg.threshold),
        float(cfg.min_area),
        float(cfg.empty_area),
        None if gate is None else float(gate),
    )


def _postprocess_from(tuned: dict, path: Path) -> PostProcess:
    try:
        return PostProcess(**tuned["postprocess"])
    except (KeyError, TypeError) as e:
        raise PodiumError(f"{path}: not a podium tuned.json ({e})") from None


# =============================================================================================
# The commands
def predict_command(cfg: DictConfig, run_dir: Path) -> float | None:
    """`podium predict`: ensemble the runs on the test set into `run_dir/submission.csv`, then
    validate it (and score it when the competition has a local solution)."""
    t_start = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    competition = load_competition(cfg)
    runs = rundir.resolve_runs(cfg)
    postprocess, tuned = find_tuned(cfg, [path for path, _ in runs])
    tta = cfg.tta or (tuned or {}).get("tta") or "none"
    if tuned and tuned.get("tta") and tuned["tta"] != tta:
        log.warning("tuned on OOF predicted with tta=%s, predicting with tta=%s", tuned["tta"], tta)
    views = tta_views(tta, cfg.tta_scales)
    device = resolve_device(cfg.cpu_threads)
    precision = resolve_precision(str(cfg.precision), device)
    ensemble = load_ensemble(cfg, runs, competition.task, views, device, precision)
    if cfg.tile_size and any(ensemble.input_sizes):
        raise PodiumError(
            "tile_size: the runs were trained on resized images (competition.image_size); "
            "tiling needs runs trained at the native resolution"
        )
    area_basis = (tuned or {}).get("area_basis")
    if postprocess.empty_gate is not None and not ensemble.has_nonempty:
        source = (tuned or {}).get("path") or "empty_gate"
        raise PodiumError(
            f"{source}: empty_gate={postprocess.empty_gate:g} needs runs trained with "
            "model.aux_head=empty, and none of these runs has that head"
        )

    competition.require_data()
    samples = competition.test_samples()
    require_clean_data(competition, samples, "test", with_masks=False)
    # debug: the first images only; the rest of the rows say empty, so the file validates whole
    predicted = samples[: cfg.limit_test_images] if cfg.get("limit_test_images") else samples
    dataset = SegmentationDataset(competition, predicted, transform=None, with_masks=False)
    workers = resolve_num_workers(cfg.num_workers)
    loader = make_loader(dataset, int(cfg.batch_size), workers)
    full = sum(is_full_data(rundir.read_config(path)) for path, _ in runs)
    log.info(
        "predicting %d test images with %d runs (%d fold, %d full-data) x %d views (tta=%s), "
        "%s, %s; post-processing %s", len(predicted), len(runs), len(runs) - full, full,
        len(views), tta, device, precision, asdict(postprocess),
    )  # fmt: skip
    t_predict = time.time()
    batches = tqdm(loader, desc="predict", disable=not cfg.progress, mininterval=1.0)
    rows = predict_rows(
        competition, predicted, batches, ensemble, postprocess, area_basis,
        cfg.tile_size, float(cfg.tile_overlap), int(cfg.batch_size),
    )  # fmt: skip
    if len(predicted) < len(samples):
        rows = itertools.chain(rows, submission.empty_rows(competition, samples[len(predicted) :]))
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
        "predicted_images": len(predicted),
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
        "images_per_s": round(len(predicted) / seconds, 2) if seconds else None,
        "duration_s": round(time.time() - t_start, 1),
        "local_score": score,
    }
    io.write_json(run_dir / rundir.PREDICTED, summary)
    log.info("wrote %s (%d rows, %s images/s)", path, n_rows, summary["images_per_s"])
    if score is not None:
        log.info("local %s of the submission: %.4f", cfg.competition.metric, score)
    return score


def load_ensemble(cfg, runs, task, views, device, precision) -> Ensemble:
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
