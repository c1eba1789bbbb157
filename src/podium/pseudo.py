"""`podium pseudo`: label unlabelled images with an ensemble of runs and keep what is confident.

    podium pseudo competition=C runs="[runs/C/sweep_*/*]" out=pseudo/C-r1 [images=FOLDER]

The teachers are the runs' ensemble with TTA, exactly as `podium predict` runs it
(podium.infer: `load_ensemble`, `predict_images`). Each image's probabilities p go through the
rule (`PseudoRule`): a pixel is confident when p < low or p > high; an image is kept when at
least `min_confident` of its pixels are; with `mode=pixel` its uncertain pixels also weigh 0 in
the student's loss. Labels are `hard` (p > threshold) or `soft` (p itself). The set's files:
podium.pseudo_data. It is written into a temporary folder beside `out` and renamed into place
whole: a killed command leaves the previous set, never half a set.

Rounds: a student trained with `pseudo=DIR` records the set's round in its summary.json; a set
made by such students is round max(teacher rounds) + 1 (a plain run is round 0).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

import podium
from podium import io, rundir
from podium.competition import Competition, Sample, load_competition
from podium.data import SegmentationDataset, make_loader, resolve_num_workers
from podium.datacheck import require_clean_data
from podium.infer import load_ensemble, predict_images, tta_views
from podium.io import PodiumError
from podium.models import resolve_device, resolve_precision
from podium.pseudo_data import LABELS, MANIFEST, TABLE, teacher_round

log = logging.getLogger(__name__)

__all__ = ["PseudoRule", "folder_samples", "pseudo_command", "write_pseudo_set"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class PseudoRule:
    """Which teacher predictions become labels (see the module docstring)."""

    mode: str = "image"  # image | pixel
    labels: str = "hard"  # hard | soft
    low: float = 0.1
    high: float = 0.9
    min_confident: float = 0.95
    threshold: float = 0.5  # hard labels: p > threshold

    def apply(self, probs: np.ndarray) -> tuple[float, np.ndarray | None]:
        """(fraction of confident pixels, the 2xHxW uint8 label or None when the image is not
        kept) of one image's HxW probabilities."""
        confident = (probs < self.low) | (probs > self.high)
        fraction = float(confident.mean())
        if fraction < self.min_confident:
            return fraction, None
        if self.labels == "hard":
            target = np.where(probs > self.threshold, 255, 0).astype(np.uint8)
        else:
            target = rundir.quantize(probs)
        weight = confident if self.mode == "pixel" else np.ones_like(confident)
        return fraction, np.stack([target, weight.astype(np.uint8) * 255])


def folder_samples(folder: Path) -> list[Sample]:
    """The images of a folder (not its subfolders) as samples named by file stem."""
    if not folder.is_dir():
        raise PodiumError(f"images={folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PodiumError(f"images={folder}: no images ({', '.join(IMAGE_SUFFIXES)}) there")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise PodiumError(f"images={folder}: {path.name} and {stems[path.stem].name} share id")
        stems[path.stem] = path
    return [Sample(id=stem, image=path.resolve()) for stem, path in stems.items()]


def pseudo_command(cfg: DictConfig) -> int:
    """`podium pseudo`: predict the unlabelled images, apply the rule, write the set."""
    if not cfg.out:
        raise PodiumError("out: give the folder for the pseudo-label set (out=DIR)")
    out = Path(str(cfg.out)).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise PodiumError(f"out={out}: holds files but no {MANIFEST}; podium replaces only a set")
    t_start = time.time()
    competition = load_competition(cfg)
    if competition.task != "binary":
        raise PodiumError(
            f"competition.task={competition.task}: pseudo-labels are for binary tasks only"
        )
    runs = rundir.resolve_runs(cfg)
    if cfg.images:
        samples, source = folder_samples(Path(str(cfg.images)).expanduser()), str(cfg.images)
    else:
        competition.require_data()
        samples, source = competition.test_samples(), "test set"
    require_clean_data(competition, samples, "test", with_masks=False)
    rule = PseudoRule(**cfg.rule, threshold=float(cfg.threshold))
    device = resolve_device(cfg.cpu_threads)
    precision = resolve_precision(str(cfg.precision), device)
    views = tta_views(str(cfg.tta or "none"), cfg.tta_scales)
    ensemble = load_ensemble(cfg, runs, competition.task, views, device, precision)
    teacher_rounds = [teacher_round(rundir.read_summary(path)) for path, _ in runs]
    manifest = {
        "competition": competition.name,
        "round": max(teacher_rounds) + 1,
        "teachers": [str(path) for path, _ in runs],
        "teacher_rounds": teacher_rounds,
        "run_weights": ensemble.weights,
        "tta": str(cfg.tta or "none"),
        "source": source,
        "rule": asdict(rule),
        "podium_version": podium.__version__,
    }
    log.info(
        "pseudo round %d: %d images (%s) with %d runs x %d views, rule %s",
        manifest["round"], len(samples), source, len(runs), len(views), asdict(rule),
    )  # fmt: skip
    labels = predict_labels(cfg, competition, samples, ensemble, rule)
    kept = write_pseudo_set(out, manifest, samples, labels)
    log.info(
        "wrote %s: round %d, kept %d of %d images (%.1f s)",
        out, manifest["round"], kept, len(samples), time.time() - t_start,
    )  # fmt: skip
    return 0


def predict_labels(
    cfg: DictConfig, competition: Competition, samples: list[Sample], ensemble, rule: PseudoRule
):
    """(confident fraction, label or None) of every sample, in order, lazily."""
    dataset = SegmentationDataset(competition, samples, transform=None, with_masks=False)
    loader = make_loader(dataset, int(cfg.batch_size), resolve_num_workers(cfg.num_workers))
    for batch in tqdm(loader, desc="pseudo", disable=not cfg.progress, mininterval=1.0):
        predicted = predict_images(
            ensemble, batch["image"], batch["sizes"].tolist(), cfg.tile_size,
            float(cfg.tile_overlap), int(cfg.batch_size),
        )  # fmt: skip
        for p, _ in predicted:  # the image-level head's value is not used here
            # As predict hands probabilities on (uint8 p x 255): the same values either way.
            yield rule.apply(rundir.quantize(p[0]).cpu().numpy() / np.float32(255.0))


def write_pseudo_set(out: Path, manifest: dict, samples: list[Sample], labels) -> int:
    """Write the set into a temporary folder beside `out`, then put it in `out`'s place (an
    existing set there is replaced only once the new one is complete). Returns the kept count."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (temp / LABELS).mkdir()
        rows, kept = [], 0
        for sample, (fraction, label) in zip(samples, labels, strict=True):
            name = ""
            if label is not None:
                name = f"{kept:06d}.npy"
                np.save(temp / LABELS / name, label, allow_pickle=False)
                kept += 1
            rows.append({
                "id": sample.id, "image": str(Path(sample.image).resolve()),
                "confident": f"{fraction:.4f}", "kept": int(label is not None), "label": name,
            })  # fmt: skip
        io.write_csv(temp / TABLE, rows, ["id", "image", "confident", "kept", "label"])
        io.write_json(temp / MANIFEST, {**manifest, "kept": kept, "total": len(samples)})
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{time.time_ns()}")
            out.rename(old)
        temp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return kept
