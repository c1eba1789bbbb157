"""Typed settings: every podium config key's type and range, checked when a config is composed.

One table per config group and top-level file (below), each entry reading as what it allows
(the rules are podium.rules): `Int(min=1)`, `Float(gt=0)`, `OneOf("F", "C")`,
`Int(min=0) | "auto"`, `Float(gt=0) | None`, `ListOf(Int(min=1), length=2)`. `Open()` marks a
mapping whose keys are free (model.kwargs, an adapter's options). Rules across keys (all loss
weights zero, a warm-up longer than the run...) are the functions in CROSS_KEY_RULES; they run
once every key has the right type.

`first_problem(cfg)` returns the first wrong value as one line, `key=value: expected <what is
allowed>`, or None. A key absent from the tables is not checked (a workspace may add its own);
tests/test_schema.py checks that every key of the built-in configs is in them.

Why tables and not Hydra structured configs: OmegaConf's types have no ranges and no unions
(`auto` or an integer), each option of a group (adamw, sgd) would need its own dataclass, and the
check would miss values set through interpolation. A table checks the composed, resolved values,
whatever file or override set them, and reads as the reference of the settings.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from podium.classify.scoring import METRICS as CLASSIFICATION_METRICS
from podium.masks import MASK_ENCODINGS
from podium.metrics import METRICS
from podium.rules import (
    Bool,
    Float,
    Int,
    ListOf,
    MapOf,
    OneOf,
    Open,
    Path,
    Rule,
    Str,
    Text,
    Unresolvable,
    show,
)

__all__ = ["SCHEMA", "CROSS_KEY_RULES", "Settings", "first_problem", "unchecked_keys"]


# -- the settings -----------------------------------------------------------------------------
# Names the code knows (tests/test_schema.py checks each against the code that uses it).
TTA_SETS = ("none", "hflip", "vflip", "flip", "d4")  # podium.infer.TTA_SETS
AUGMENT_PRESETS = ("none", "light", "medium", "heavy")  # podium.data.build_transforms
LOSS_TERMS = ("bce", "dice", "lovasz", "focal", "ce")  # podium.losses, podium.classify.model
SEGMENTATION_ONLY_TERMS = ("dice", "lovasz")
CLASSIFICATION_ONLY_TERMS = ("ce",)
CLASSIFIER_ARCH = "timm_classifier"  # podium.classify.model.ARCH
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # podium.models.resolve_precision
AUX_HEADS = ("none", "empty")  # podium.models.AUX_HEADS
SEEDS = Int(min=0, max=2**32 - 1)  # numpy's and scikit-learn's seed range
PROBABILITY = Float(ge=0, le=1)
HEIGHT_WIDTH = ListOf(Int(min=1), length=2, what="[H, W], two integers >= 1")
WORKERS = Int(min=0) | "auto"
THREADS = Int(min=1) | "auto"

TRAIN = {  # configs/train.yaml
    "fold": Int(min=0) | "all",
    "seed": SEEDS,
    "experiment_name": Text() | None,
    "pseudo": Path() | None,
    "pseudo_weight": Float(ge=0),
    "pseudo_ratio": Float(gt=0, lt=1),
    "resume": Path() | None,
}
RUNS = {  # configs/predict.yaml and tune.yaml: which runs, and tune's search
    "runs": ListOf(Path(), what="a list of run directories or globs"),
    "run_weights": ListOf(Float(ge=0)) | None,
    "runs_of": Text() | None,
    "tuned": "auto" | Path() | None,
    "tta_candidates": ListOf(OneOf(*TTA_SETS), min_len=1) | None,
    "search.thresholds": "auto" | ListOf(PROBABILITY, min_len=1),
    "search.min_areas": "auto" | ListOf(Float(ge=0), min_len=1),
    "search.empty_areas": "auto" | ListOf(Float(ge=0), min_len=1),
    "search.empty_gates": "auto" | ListOf(PROBABILITY, min_len=1),
    "search.rounds": Int(min=1),
    "limit_test_images": Int(min=1) | None,  # configs/predict.yaml
}
DEBUG = {  # configs/debug/default.yaml (debug=true)
    "debug.train_steps": Int(min=1),
    "debug.val_batches": Int(min=1),
    "debug.test_images": Int(min=1),
    "debug.tta": OneOf(*TTA_SETS) | None,
}
INFER = {  # configs/infer/default.yaml (top-level keys)
    "tta": OneOf(*TTA_SETS) | None,
    "tta_scales": ListOf(Float(gt=0), min_len=1),
    "batch_size": Int(min=1),
    "forward_batch": Int(min=1) | None,
    "weights": OneOf("ema", "model"),
    "checkpoint": OneOf("best", "last"),
    "threshold": PROBABILITY,
    "min_area": Float(ge=0),
    "empty_area": Float(ge=0),
    "empty_gate": PROBABILITY | None,
    "tile_size": Int(min=1) | None,
    "tile_overlap": Float(ge=0, lt=1),
    "num_workers": WORKERS,
    "cpu_threads": THREADS,
    "precision": OneOf(*PRECISIONS),
    "progress": Bool(),
}
TOOLS = {  # configs/tools.yaml
    "file": Path() | None,
    "solution": Path() | None,
    "message": Text(),
    "wait": Bool(),
    "poll_interval": Float(gt=0),
    "wait_timeout": Float(gt=0),
    "bundle": Path() | None,
    "kernel": Str("USER/SLUG") | None,
    "version": Int(min=1, what="a whole number >= 1 (the kernel version podium push printed)")
    | None,
    "run": Bool(),
    "out": Path() | None,
    "files": ListOf(Path(), min_len=1) | None,
    "force": Bool(),
    "top": Int(min=1),
    "experiments": Text() | ListOf(Text()) | None,
    "writeup_dir": Path() | None,
    "diff": ListOf(Text(), length=2, what="[A, B], two runs or experiments") | None,
}
PSEUDO = {  # configs/pseudo.yaml (with RUNS and INFER)
    "images": Path() | None,
    "rule.mode": OneOf("image", "pixel"),
    "rule.labels": OneOf("hard", "soft"),
    "rule.low": PROBABILITY,
    "rule.high": PROBABILITY,
    "rule.min_confident": PROBABILITY,
}
DOCTOR = {  # configs/tools.yaml's doctor section
    # Beyond 20 bits (of 64) unrelated images match and the bucketed search slows down.
    "doctor.hash_distance": Int(min=0, max=20),
    "doctor.min_correlation": Float(gt=0, le=1),
    "doctor.min_std": Float(ge=0),
    "doctor.include_test": Bool(),
    "doctor.group_duplicates": Bool(),
    "doctor.out_dir": Path() | None,
    "doctor.workers": WORKERS,
    "doctor.max_listed": Int(min=0),
}


class SearchSpace(Rule):
    """search.params: train settings or config groups (`optimizer.lr`, `loss`) mapped to how
    to sample them. A wrong entry is named with what it must be."""

    what = "a non-empty mapping of train settings to {type: float|int|categorical, ...}"
    plural = "search spaces"
    NUMBER_KEYS = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "step"}}
    SHAPES = {
        "float": "{type: float, low: L, high: H, log: true|false} with L < H (L > 0 for log)",
        "int": "{type: int, low: L, high: H, step: S} with integers L < H, S >= 1",
        "categorical": "{type: categorical, choices: [...]}, a non-empty list of plain values",
    }

    def accepts(self, value: Any) -> bool:
        return self.problem("search.params", value) is None

    def problem(self, key: str, value: Any) -> str | None:
        if not isinstance(value, dict) or not value:
            return f"{key}={show(value)}: expected {self.what}"
        for name, spec in value.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            if kind not in self.SHAPES:
                shapes = "; or ".join(self.SHAPES.values())
                return f"{key}.{name}={show(spec)}: expected {shapes}"
            if not self._fits(kind, spec):
                return f"{key}.{name}={show(spec)}: expected {self.SHAPES[kind]}"
        return None

    def _fits(self, kind: str, spec: dict) -> bool:
        if kind == "categorical":
            choices = spec.get("choices")
            plain = Text() | Bool() | None
            return (
                set(spec) == {"type", "choices"}
                and isinstance(choices, list)
                and len(choices) > 0
                and all(plain.accepts(c) for c in choices)
            )
        number = Int() if kind == "int" else Float()
        low, high = spec.get("low"), spec.get("high")
        if not set(spec) <= self.NUMBER_KEYS[kind] or not number.accepts(low):
            return False
        if not number.accepts(high) or not low < high:
            return False
        if kind == "int":
            return Int(min=1).accepts(spec.get("step", 1))
        log = spec.get("log", False)
        return Bool().accepts(log) and (not log or low > 0)


SEARCH = {  # configs/search/ (podium search)
    "search.params": SearchSpace(),
    "search.name": Str("a study name"),
    "search.n_trials": Int(min=1),
    "search.workers": Int(min=1),
    "search.sampler": OneOf("tpe", "random", "grid"),
    "search.seed": SEEDS | None,
    "search.pruner.name": OneOf("median", "threshold", "none"),
    "search.pruner.n_startup_trials": Int(min=0),
    "search.pruner.n_warmup_steps": Int(min=0),
    "search.pruner.threshold": Float() | None,
}
EXPORT = {  # configs/export.yaml (with RUNS and INFER)
    "user": Str("a Kaggle user name") | None,
    "dataset_slug": Str("a Kaggle dataset slug") | None,
    "kernel_slug": Str("a Kaggle kernel slug") | None,
    "fp16": Bool(),
    "podium_wheel": Path() | None,
    "dryrun": Bool(),
    "dryrun_dir": Path() | None,
    "image.python": Str("a Python version such as 3.11"),
    "image.platform": Str("a platform such as linux-x86_64"),
    "image.packages": ListOf(Text()),
}
COMPETITION = {  # podium.config.COMPETITION_DEFAULTS: every competition.yaml
    "competition.name": Str(),
    "competition.dir": Path(),
    "competition.kaggle": Str("a Kaggle competition slug") | None,
    "competition.code_competition": Bool(),
    "competition.task": OneOf("binary", "multiclass", "multilabel", "classification"),
    "competition.classes": ListOf(Text(), min_len=1, what="a non-empty list of class names"),
    "competition.metric": OneOf(*METRICS, *CLASSIFICATION_METRICS, "adapter"),
    "competition.classification.multi_label": Bool(),
    "competition.classification.beta": Float(gt=0),
    "competition.classification.format": OneOf("tags", "probabilities"),
    "competition.image_size": HEIGHT_WIDTH | None,
    "competition.in_channels": Int(min=1),
    "competition.mask_encoding": OneOf(*MASK_ENCODINGS),
    "competition.mask_colours": ListOf(ListOf(Int(min=0, max=255), length=3), min_len=2) | None,
    "competition.image_bit_depth": OneOf("auto") | Int(min=8, max=16),
    "competition.encoder_weights": Str("imagenet, another weights name or a path") | None,
    "competition.n_folds": Int(min=2),
    "competition.folds_seed": SEEDS,
    "competition.data_dir": Path(),
    "competition.sample_submission": Path(),
    "competition.submission.id_column": Str("a column name"),
    "competition.submission.mask_column": Str("a column name"),
    "competition.submission.order": OneOf("F", "C"),
    "competition.submission.base": OneOf(0, 1),
    "competition.submission.empty": Text(),
    "competition.submission.row_id": Str("a row id template such as {id}"),
    "competition.download.unpack": Open(),
    "competition.download.keep_archives": Bool(),
    "competition.kernel_time_limit_h": Float(gt=0),
    "competition.hidden_test_images": Int(min=1) | None,
    "competition.options": Open(),
}
MODEL = {  # configs/model/
    "model.arch": Str("an smp architecture name, or timm_classifier"),
    "model.name": Str("a timm model name"),
    "model.drop_rate": Float(ge=0, lt=1),
    "model.encoder": Str("an smp encoder name"),
    "model.encoder_weights": Str("imagenet, another weights name or a path") | None,
    "model.pad_mode": OneOf("reflect", "constant", "replicate"),
    "model.pad_value": Float(),
    "model.mean": ListOf(Float(), min_len=1),
    "model.std": ListOf(Float(gt=0), min_len=1),
    "model.aux_head": OneOf(*AUX_HEADS),
    "model.aux_dropout": Float(ge=0, lt=1),
    "model.kwargs": Open() | None,
}
LOSS = {  # configs/loss/
    "loss.name": Str(),
    "loss.weights": MapOf(Float(ge=0), keys=LOSS_TERMS),
    "loss.aux_weight": Float(ge=0),
    "loss.dice.reduction": OneOf("batch", "image"),
    "loss.dice.smooth": Float(ge=0),
    "loss.lovasz.per_image": Bool(),
    "loss.focal.gamma": Float(ge=0),
    "loss.focal.alpha": PROBABILITY | None,
}
OPTIMIZER = {  # configs/optimizer/
    "optimizer.name": OneOf("adamw", "sgd"),
    "optimizer.lr": Float(gt=0),
    "optimizer.weight_decay": Float(ge=0),
    "optimizer.betas": ListOf(Float(ge=0, lt=1), length=2),
    "optimizer.momentum": Float(ge=0, lt=1),
    "optimizer.nesterov": Bool(),
}
SCHEDULER = {  # configs/scheduler/
    "scheduler.name": OneOf("cosine", "poly", "constant"),
    "scheduler.warmup_epochs": Float(ge=0),
    "scheduler.min_lr_ratio": PROBABILITY,
    "scheduler.power": Float(gt=0),
}
AUGMENT = {  # configs/augment/
    "augment.preset": OneOf(*AUGMENT_PRESETS),
    "augment.crop": HEIGHT_WIDTH | None,
}
TRAINER = {  # configs/trainer/default.yaml
    "trainer.max_epochs": Int(min=1),
    "trainer.batch_size": Int(min=1),
    "trainer.accumulate": Int(min=1),
    "trainer.grad_clip": Float(gt=0) | None,
    "trainer.precision": OneOf(*PRECISIONS),
    "trainer.channels_last": Bool(),
    "trainer.ema": Float(gt=0, lt=1) | None,
    "trainer.ema_warmup": Bool(),
    "trainer.devices": Int(min=1) | "auto",
    "trainer.gpus_per_job": Int(min=1) | None,
    "trainer.sync_batchnorm": Bool(),
    "trainer.find_unused_parameters": Bool(),
    "trainer.num_workers": WORKERS,
    "trainer.cpu_threads": THREADS,
    "trainer.val_every": Int(min=1),
    "trainer.early_stopping": Int(min=1) | None,
    "trainer.compile": Bool(),
    "trainer.deterministic": Bool(),
    "trainer.threshold": PROBABILITY,
    "trainer.log_every": Int(min=1),
    "trainer.limit_train_batches": Int(min=1) | None,
    "trainer.limit_val_images": Int(min=1) | None,
    "trainer.save_oof": Bool(),
    "trainer.progress": Bool(),
}
PATHS = {f"paths.{key}": Path() for key in ("root_dir", "data_dir", "runs_dir", "competitions_dir")}
OPEN = {"hydra": Open()}  # Hydra's own settings: Hydra checks them

SCHEMA: dict[str, Rule] = {
    **TRAIN, **RUNS, **INFER, **TOOLS, **PSEUDO, **DOCTOR, **SEARCH, **EXPORT, **COMPETITION,
    **MODEL, **LOSS, **OPTIMIZER, **SCHEDULER, **AUGMENT, **TRAINER, **PATHS, **DEBUG, **OPEN,
}  # fmt: skip
# The mappings that hold settings (trainer, competition.submission...): never a plain value.
SECTIONS = {key.rsplit(".", i)[0] for key in SCHEMA for i in range(1, key.count(".") + 1)}


# -- checking a config ------------------------------------------------------------------------


def _settings(node: DictConfig, prefix: str) -> Iterator[tuple[str, Rule | None, Any]]:
    """(schema name, its rule or None, resolved plain value) of every setting under `node`. A
    key with a rule is one setting, a mapping or a list too; a section holding a plain value
    is one setting that must be a mapping."""
    for key in node:
        name = f"{prefix}{key}"
        try:
            value = node[key]
            if isinstance(value, DictConfig | ListConfig):
                if isinstance(value, DictConfig) and name not in SCHEMA:
                    yield from _settings(value, f"{name}.")
                    continue
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as error:
            yield name, Unresolvable(error), OmegaConf.to_container(node)[key]
            continue
        yield name, SCHEMA.get(name) or (Open() if name in SECTIONS else None), value


_ABSENT = object()


class Settings:
    """Resolved plain values by schema name, for the cross-key rules; a key the checked config
    does not have (another command's, or outside a section checked alone) is absent."""

    def __init__(self, cfg: DictConfig, section: str = ""):
        self.cfg, self.section = cfg, section

    def get(self, name: str) -> Any:
        if not name.startswith(self.section):
            return _ABSENT
        try:
            value = OmegaConf.select(self.cfg, name.removeprefix(self.section), default=_ABSENT)
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException:
            return _ABSENT
        return value

    def has(self, *names: str) -> bool:
        return all(self.get(name) is not _ABSENT for name in names)

    def name(self, name: str) -> str:
        """`name` as the checked config spells it (`classes` in a competition.yaml)."""
        return name.removeprefix(self.section)


def _some_loss_weight(s: Settings) -> str | None:
    weights = s.get("loss.weights")
    if isinstance(weights, dict) and not any(w > 0 for w in weights.values()):
        return "loss.weights: all weights are 0; at least one must be > 0"
    return None


def key_bound(key: str, relation: str, other: str, why: str) -> Callable[[Settings], str | None]:
    """The rule `key <relation> other` (<, <= or >=), for two numeric settings both given."""
    holds = {"<": operator.lt, "<=": operator.le, ">=": operator.ge}[relation]
    words = {"<": "less than", "<=": "at most", ">=": "at least"}[relation]

    def rule(s: Settings) -> str | None:
        value, bound = s.get(key), s.get(other)
        # A word where a number may stand (fold=all) has no bound.
        if any(v is None or v is _ABSENT or isinstance(v, str) for v in (value, bound)):
            return None
        if holds(value, bound):
            return None
        return f"{s.name(key)}={show(value)}: expected {words} {s.name(other)}={bound} ({why})"

    rule.__name__ = f"{key} {relation} {other}"
    return rule


def _one_statistic_per_channel(s: Settings) -> str | None:
    channels = s.get("competition.in_channels")
    for key in ("model.mean", "model.std"):
        values = s.get(key)
        if s.has(key, "competition.in_channels") and len(values) != channels:
            return (
                f"{key}={show(values)}: expected {channels} values, one per input channel "
                f"(competition.in_channels={channels})"
            )
    return None


def _classes_of_the_task(s: Settings) -> str | None:
    task, classes = s.get("competition.task"), s.get("competition.classes")
    if not s.has("competition.task", "competition.classes"):
        return None
    key = f"{s.name('competition.classes')}={show(classes)}"
    if task == "binary" and len(classes) != 1:
        return f"{key}: expected 1 class for a binary task"
    one_class = s.get("competition.classification.multi_label") is False
    if task == "classification" and one_class and len(classes) < 2:
        return f"{key}: expected 2 or more classes for a multi-class classification"
    if task == "multiclass" and len(classes) < 2:
        return f"{key}: expected 2 or more classes for a multiclass task (the first: background)"
    return None


def _metric_of_the_task(s: Settings) -> str | None:
    task, metric = s.get("competition.task"), s.get("competition.metric")
    if not s.has("competition.task", "competition.metric") or metric == "adapter":
        return None
    classification = task == "classification"
    if classification != (metric in CLASSIFICATION_METRICS):
        fits = ", ".join(CLASSIFICATION_METRICS if classification else METRICS)
        return f"{s.name('competition.metric')}={metric}: not a metric of task {task} ({fits})"
    return None


def _model_and_loss_of_the_task(s: Settings) -> str | None:
    """A segmentation loss or model on a classification task, or the reverse."""
    task = s.get("competition.task")
    if task is _ABSENT:
        return None
    classification = task == "classification"
    arch, weights = s.get("model.arch"), s.get("loss.weights")
    if arch is not _ABSENT and classification != (arch == CLASSIFIER_ARCH):
        fix = "model=timm_classifier" if classification else "a segmentation model (model=unet)"
        return f"model.arch={arch}: not a model for competition.task={task}; use {fix}"
    if isinstance(weights, dict):
        wrong = SEGMENTATION_ONLY_TERMS if classification else CLASSIFICATION_ONLY_TERMS
        used = [term for term in wrong if weights.get(term)]
        fix = "loss=bce, ce or focal" if classification else "a segmentation loss (loss=bce_dice)"
        if used:
            return f"loss.weights.{used[0]}: not a loss for competition.task={task}; use {fix}"
        if classification and weights.get("ce") and s.get("competition.classification.multi_label"):
            return (
                "loss.weights.ce: cross-entropy needs one class per image, but "
                "competition.classification.multi_label=true; use loss=bce or focal"
            )
    return None


def _one_weight_per_run_entry(s: Settings) -> str | None:
    weights, runs = s.get("run_weights"), s.get("runs")
    if s.has("runs") and isinstance(weights, list) and len(weights) != len(runs):
        return (
            f"run_weights={show(weights)}: expected {len(runs)} weights, one per entry of "
            f"runs={show(runs)}"
        )
    return None


def _search_grid_and_pruner(s: Settings) -> str | None:
    params = s.get("search.params")
    if s.get("search.sampler") == "grid" and isinstance(params, dict):
        for name, spec in params.items():
            if isinstance(spec, dict) and spec.get("type") != "categorical":
                return (
                    f"search.params.{name}: expected {{type: categorical, ...}} with "
                    "search.sampler=grid (a grid lists every value)"
                )
    if s.get("search.pruner.name") == "threshold" and s.get("search.pruner.threshold") is None:
        return "search.pruner.threshold=null: expected a number with search.pruner.name=threshold"
    return None


def _nesterov_with_momentum(s: Settings) -> str | None:
    sgd = s.get("optimizer.name") == "sgd" and s.get("optimizer.nesterov") is True
    if sgd and s.get("optimizer.momentum") == 0:
        return "optimizer.nesterov=true: expected false with optimizer.momentum=0 (torch's rule)"
    return None


CROSS_KEY_RULES: list[Callable[[Settings], str | None]] = [
    _some_loss_weight,
    # Equal is allowed: a 1-epoch test run with the default 1-epoch warm-up is a fine smoke test.
    key_bound("scheduler.warmup_epochs", "<=", "trainer.max_epochs", "warm-up past the run's end"),
    key_bound("fold", "<", "competition.n_folds", "folds count from 0"),
    key_bound("trainer.limit_train_batches", ">=", "trainer.accumulate", "else no optimizer step"),
    _one_statistic_per_channel,
    _classes_of_the_task,
    _metric_of_the_task,
    _model_and_loss_of_the_task,
    _one_weight_per_run_entry,
    _nesterov_with_momentum,
    _search_grid_and_pruner,
    key_bound("rule.low", "<", "rule.high", "a pixel is confident below low or above high"),
]


def first_problem(cfg: DictConfig, section: str = "", cross_key: bool = True) -> str | None:
    """The first wrong setting of `cfg` as one line (`key=value: expected ...`), or None.

    `section`: the schema name of `cfg` when it is one section alone (`competition.` for a
    competition.yaml): messages name its keys as the file does, and interpolations reaching
    outside it are left to the check of the composed config. `cross_key=False` checks each
    value alone (overrides meant for another config: a resumed run's saved one)."""
    for name, rule, value in _settings(cfg, section):
        if rule is None or (section and isinstance(rule, Unresolvable)):
            continue
        problem = rule.problem(name.removeprefix(section), value)
        if problem:
            return problem
    settings = Settings(cfg, section)
    problems = (rule(settings) for rule in CROSS_KEY_RULES) if cross_key else ()
    return next((p for p in problems if p), None)


def unchecked_keys(cfg: DictConfig) -> list[str]:
    """The settings of `cfg` that no table names (tests: none in podium's own configs)."""
    return [name for name, rule, _ in _settings(cfg, "") if rule is None]
