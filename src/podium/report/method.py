"""The write-up's Method section, from the runs' resolved configs, their Hydra overrides and the
`podium tune` / `podium predict` folders that used them."""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from podium import rundir
from podium.config import changes_result
from podium.report.results import Experiment, Results, read_json_dict, run_id
from podium.report.tables import MISSING, TODO, plural


def pretraining(weights: Any) -> str:
    """What the encoder started from."""
    if weights is None:
        return "no pretraining (random initialisation)"
    if str(weights) == "imagenet":
        return "ImageNet-pretrained weights"
    return f"pretrained weights `{weights}`"


def describe_augment(augment: dict, image_size: Any) -> str:
    """The training pipeline exactly as podium.data builds it: transforms and probabilities."""
    from podium.data import build_transforms

    try:
        compose = build_transforms(OmegaConf.create(augment), image_size, train=True)
    except (KeyError, ValueError, TypeError):  # a preset this podium no longer has
        return f"preset `{augment.get('preset')}`"

    def name(t) -> str:
        inner = getattr(t, "transforms", None)
        label = type(t).__name__
        if inner:
            label += "(" + ", ".join(type(x).__name__ for x in inner) + ")"
        p = getattr(t, "p", 1.0)
        return label if p == 1.0 else f"{label} p={p:g}"

    steps = ", ".join(name(t) for t in compose.transforms) or "none"
    return f"preset `{augment.get('preset')}`: {steps}"


def describe_loss(loss: dict) -> str:
    """The loss as its weighted terms, with each term's settings."""
    terms = " + ".join(f"{w:g}·{t}" for t, w in (loss.get("weights") or {}).items())
    text = f"`{loss.get('name')}` = {terms}"
    weights = loss.get("weights") or {}
    if "dice" in weights and loss.get("dice"):
        text += (
            f" (soft Dice, reduction {loss['dice'].get('reduction')}, "
            f"smooth {loss['dice'].get('smooth')})"
        )
    if "lovasz" in weights and loss.get("lovasz"):
        text += f" (Lovász hinge, per image {loss['lovasz'].get('per_image')})"
    if "focal" in weights and loss.get("focal"):
        f = loss["focal"]
        text += f" (focal, gamma {f.get('gamma')}, alpha {f.get('alpha')})"
    return text


def _spread(values: Iterable[Any]) -> str:
    """The distinct values over runs: one value, a numeric range, or a list."""
    distinct = sorted({v for v in values if v is not None}, key=str)
    if not distinct:
        return MISSING
    if len(distinct) == 1:
        return str(distinct[0])
    if all(isinstance(v, (int, float)) for v in distinct):
        return f"{min(distinct)}–{max(distinct)}"
    return ", ".join(map(str, distinct))


def method_facts(experiment: Experiment) -> dict[str, str]:
    """Label -> sentence describing how the experiment trained, from its resolved config and
    its runs' summaries."""
    c = experiment.config
    records = [r.record for r in experiment.runs]
    try:
        facts = _facts_from_config(c, records) if c is not None else None
    except (KeyError, TypeError, IndexError):  # a config from another podium version
        facts = None
    if facts is None:
        first = records[0]
        facts = {
            "Architecture": f"{first.get('arch')} with encoder {first.get('encoder')}",
            "Encoder": pretraining(first.get("encoder_weights")),
            "Loss": f"`{first.get('loss')}`",
            "Details": TODO.format("no readable config.yaml in the run folders; add the settings"),
        }
    if len(experiment.config_hashes) > 1:
        facts["Note"] = (
            f"the runs of this experiment use {len(experiment.config_hashes)} different "
            f"configurations (config hashes {', '.join(experiment.config_hashes)})"
        )
    return facts


def _facts_from_config(c: dict, records: list[dict]) -> dict[str, str]:
    """method_facts from a resolved config `c`; what varies across runs from their records."""
    m, t, comp = c["model"], c["trainer"], c["competition"]
    size = comp.get("image_size")
    architecture = f"{m['arch']} (segmentation_models_pytorch)"
    if m.get("kwargs"):
        architecture += f", arguments {m['kwargs']}"
    size_text = f"resized to {size[0]}×{size[1]}" if size else "native image size"
    facts = {
        "Architecture": architecture,
        "Encoder": f"`{m['encoder']}`, {pretraining(m.get('encoder_weights'))}",
        "Input": f"{size_text}, {comp.get('in_channels')} channels, normalised with mean "
        f"{m.get('mean')} and std {m.get('std')}, padded to a multiple of the encoder's output "
        f"stride ({m.get('pad_mode')} padding) and cropped back",
        "Augmentation": describe_augment(c["augment"], size),
        "Loss": describe_loss(c["loss"]),
        "Optimizer": _optimizer_text(c["optimizer"]),
        "Batch": _batch_text(t, records),
        "Schedule": _schedule_text(c["scheduler"]) + ", stepped every optimizer step",
        "Epochs": _epochs_text(t, records),
        "EMA of the weights": _ema_text(t),
        "Precision and hardware": f"{_spread(r.get('precision') for r in records)} on "
        f"{_spread(r.get('device') for r in records)}",
        "Validation": f"`{comp.get('metric')}` per image, averaged over the fold's images; "
        f"threshold {t.get('threshold')}; {comp.get('n_folds')} folds (folds_seed "
        f"{comp.get('folds_seed')}), groups kept within a fold",
    }
    if m.get("aux_head") == "empty":
        facts["Empty-mask head"] = _empty_head_text(m, c["loss"])
    return facts


def _empty_head_text(m: dict, loss: dict) -> str:
    return (
        f"an image-level head on the encoder's deepest features (smp `aux_params`: pooling, "
        f"dropout {m.get('aux_dropout')}, one linear output) predicting whether the mask is "
        f"empty, trained jointly with BCE at weight {loss.get('aux_weight')} added to the "
        f"segmentation loss; its out-of-fold probability lets `podium tune` decide whether, "
        f"and below which probability, a predicted mask is emptied"
    )


def _optimizer_text(o: dict) -> str:
    text = f"{o['name']}, lr {o['lr']}, weight decay {o['weight_decay']} (not on biases "
    text += "and norm weights)"
    if o.get("betas"):
        text += f", betas {o['betas']}"
    if "momentum" in o:
        text += f", momentum {o['momentum']}, nesterov {o.get('nesterov')}"
    return text


def _schedule_text(s: dict) -> str:
    text = f"{s['name']}, {s.get('warmup_epochs')} warm-up epochs, minimum lr ratio "
    text += f"{s.get('min_lr_ratio')}"
    if s.get("name") == "poly":
        text += f", power {s.get('power')}"
    return text


def _batch_text(t: dict, records: list[dict]) -> str:
    return (
        f"{_spread(r.get('global_batch') for r in records)} images per optimizer step "
        f"({t['batch_size']} per device × {_spread(r.get('world_size') for r in records)} "
        f"device(s) × {t['accumulate']} accumulation), gradient clipping {t.get('grad_clip')}"
    )


def _epochs_text(t: dict, records: list[dict]) -> str:
    stopping = t.get("early_stopping")
    return (
        f"at most {t['max_epochs']}, early stopping "
        + (f"after {stopping} epochs without improvement" if stopping else "off")
        + f"; epochs run {_spread(r.get('epochs_run') for r in records)}, best epoch "
        f"{_spread(r.get('best_epoch') for r in records)}"
    )


def _ema_text(t: dict) -> str:
    if not t.get("ema"):
        return "none"
    ramp = " (warm-up ramp)" if t.get("ema_warmup") else ""
    return f"decay {t['ema']}{ramp}; validation and checkpoints use the averaged weights"


def reproduce_command(experiment: Experiment) -> str | None:
    """`podium train` with the command-line overrides the runs were started with (from Hydra's
    .hydra/overrides.yaml); values that differ across runs become a `-m` sweep, noted when that
    sweep makes more runs than were recorded. None when a run folder lacks the file."""
    values: dict[str, list[str]] = {}
    for run in experiment.runs:
        path = run.run_dir / ".hydra" / "overrides.yaml" if run.run_dir else None
        if path is None or not path.is_file():
            return None
        for override in OmegaConf.to_container(OmegaConf.load(path)) or []:
            key, _, value = str(override).partition("=")
            if not changes_result(key.lstrip("+~")):
                continue  # machine-specific paths, names, worker counts
            if value not in values.setdefault(key, []):
                values[key].append(value)
    combinations = math.prod(len(v) for v in values.values())
    parts = ["podium", "train", *(["-m"] if combinations > 1 else [])]
    parts += [shlex.quote(f"{k}={','.join(v)}") for k, v in values.items()]
    command = f"`{' '.join(parts)}`"
    if combinations != len(experiment.runs):
        command += f" ({combinations} combinations; {plural(len(experiment.runs), 'run')} recorded)"
    return command


def _ensemble_text(results: Results, listed: Iterable[Any]) -> str:
    """'4 runs (2 × A, 2 × B)' for run directories as predict.json / tuned.json list them."""
    counts: dict[str, int] = {}
    unknown = 0
    for item in listed:
        run = results.find_run(str(item))
        if run is None:
            unknown += 1
        else:
            counts[run.experiment] = counts.get(run.experiment, 0) + 1
    parts = [f"{n} × {e}" for e, n in counts.items()]
    parts += [f"{unknown} not in the ledger"] if unknown else []
    return f"{plural(sum(counts.values()) + unknown, 'run')} ({', '.join(parts) or MISSING})"


def _postprocess_text(pp: dict) -> str:
    """{"threshold": 0.45, "min_area": 12.0} -> 'threshold 0.45, min_area 12'."""
    shown = (
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {'off' if v is None else v}"
        for k, v in pp.items()
    )
    return ", ".join(shown)


def inference_lines(results: Results, chosen: set[str]) -> list[str]:
    """Bullets for every `podium tune` (tuned.json) and `podium predict` (predict.json) folder
    under the competition's runs folder that used runs of the `chosen` experiments, in the terms
    those files record."""

    def relevant(data: dict) -> bool:
        runs = [results.find_run(str(item)) for item in data.get("runs") or []]
        return any(r is not None and r.experiment in chosen for r in runs)

    lines = []
    for name, describe in ((rundir.TUNED, _tuned_line), (rundir.PREDICTED, _predict_line)):
        for path in sorted(results.folder.glob(f"**/{name}")):
            data = read_json_dict(path)
            if relevant(data):
                folder = run_id(str(path.parent), results.folder)
                lines.append(describe(results, folder, data) + ".")
    return lines


def _tuned_line(results: Results, folder: str, t: dict) -> str:
    """A `podium tune` folder: what it tuned, on which runs, and what that gained."""
    line = (
        f"- Post-processing tuned on out-of-fold predictions (`{folder}`, "
        f"{t.get('images')} images of {_ensemble_text(results, t.get('runs') or [])}): "
        f"{_postprocess_text(t.get('postprocess') or {})}"
    )
    if t.get("tta"):
        line += f", TTA `{t['tta']}`"
    if t.get("default_score") is not None and t.get("tuned_score") is not None:
        line += (
            f"; OOF {t.get('metric', results.metric)} {t['default_score']:.4f} with the "
            f"defaults ({_postprocess_text(t.get('default') or {})}) -> "
            f"{t['tuned_score']:.4f} tuned"
        )
    return line


def _predict_line(results: Results, folder: str, p: dict) -> str:
    """A `podium predict` folder: the ensemble, TTA and post-processing of its test predictions."""
    weights = p.get("run_weights") or []
    equal = len(set(weights)) <= 1
    line = (
        f"- Test predictions (`{folder}`): probabilities averaged over "
        f"{_ensemble_text(results, p.get('runs') or [])}"
        + ("" if equal else f" with weights {weights}")
        + f"; TTA `{p.get('tta')}` ({plural(int(p.get('views') or 1), 'view')}"
        + (f", scales {p['tta_scales']}" if (p.get("tta_scales") or [1.0]) != [1.0] else "")
        + f"); post-processing {_postprocess_text(p.get('postprocess') or {})} "
        + (
            f"(tuned in `{run_id(str(Path(p['tuned']).parent), results.folder)}`)"
            if p.get("tuned")
            else "(not tuned)"
        )
    )
    if p.get("tile_size"):
        line += f"; tiles of {p['tile_size']} pixels"
    if p.get("local_score") is not None:
        line += f"; local score {p['local_score']:.4f}"
    return line


def method_lines(results: Results, experiments: list[Experiment]) -> list[str]:
    """The Method section: settings shared by all experiments, those that differ, the commands
    that reproduce them, and the inference behind the submitted files."""
    facts = {e.name: method_facts(e) for e in experiments}
    labels = list(dict.fromkeys(label for f in facts.values() for label in f))
    shared = [lb for lb in labels if len({f.get(lb) for f in facts.values()}) == 1]
    lines = []
    if len(experiments) > 1:
        lines += ["Shared by all experiments:", ""]
    lines += [f"- **{lb}**: {facts[experiments[0].name][lb]}" for lb in shared]
    differing = [lb for lb in labels if lb not in shared]
    if differing:
        lines += ["", "Where the experiments differ:", ""]
        for label in differing:
            lines.append(f"- **{label}**:")
            lines += [f"  - `{e}`: {f.get(label, MISSING)}" for e, f in facts.items()]
    commands = [(e.name, reproduce_command(e)) for e in experiments]
    if any(c for _, c in commands):
        lines += ["", "Commands (the recorded overrides; data and run paths left out):", ""]
        lines += [f"- `{e}`: {c}" for e, c in commands if c]
    lines += ["", "### Inference, ensembling and post-processing", ""]
    inference = inference_lines(results, {e.name for e in experiments})
    if inference:
        lines += inference
    else:
        lines.append(
            TODO.format(
                "TTA, ensembling and post-processing of the submitted files: no `podium predict` "
                f"or `podium tune` folders were found under {results.folder}"
            )
        )
    return lines
