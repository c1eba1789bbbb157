"""Configuration: competition config registration, composing configs, override checking (every
value's type and range: podium.schema), and which config keys change what a run computes
(`result_config`, `config_hash`).

Hydra composes `configs/<command>.yaml` from groups: podium's built-in configs, with the
workspace's `configs/` laid over them (see `hydra_plugins/podium_workspace`). The `competition`
group is special: its options are the competition folders (built-in and the workspace's, each
with a `competition.yaml`), registered in Hydra's ConfigStore at start-up, so a competition lives
in one folder with its adapter. Where these folders are: `podium.workspace`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from podium import schema
from podium.io import PodiumError
from podium.workspace import (
    NotAWorkspace,
    builtin_competitions,
    builtin_configs,
    workspace_root,
)

__all__ = [
    "config_dir",
    "register_competitions",
    "compose_config",
    "check_overrides",
    "sweep_grid",
    "check_config",
    "expand_flag_groups",
    "ConfigError",
    "prepare_run_config",
    "NON_RESULT_GROUPS",
    "NON_RESULT_KEYS",
    "REPLICATE_KEYS",
    "changes_result",
    "result_config",
    "config_hash",
]


class ConfigError(PodiumError):
    """A bad command-line override or config file (exit code 2)."""


# The defaults every competition.yaml is merged onto; a key not listed here is a typo.
COMPETITION_DEFAULTS = {
    "name": "???",
    "dir": "???",
    "kaggle": None,  # the Kaggle slug; null for local competitions
    # Kaggle scores a notebook, not a file: submit with `podium push` + `podium submit kernel=`
    "code_competition": False,
    # A code competition's notebook limit, and the size of the hidden test set it predicts
    # (null: as many images as the local test set); `podium dryrun` extrapolates to them.
    "kernel_time_limit_h": 9,
    "hidden_test_images": None,
    # segmentation: binary | multiclass | multilabel masks; image labels: classification
    "task": "binary",
    "classes": ["foreground"],
    "metric": "dice",  # a name in podium.metrics.METRICS, or "adapter" (Adapter.score_image)
    "image_size": None,  # [H, W]: resize for training/validation; null keeps the native size
    "in_channels": 3,
    # What a mask file's values mean (podium.masks): binary (0/1 or 0/255 per file),
    # binary_01, binary_255, nonzero (any non-black pixel), class_ids, colour_map
    "mask_encoding": "binary",
    "mask_colours": None,  # colour_map: [[R, G, B] of class 0 (background), of class 1, ...]
    # Bits per value of images stored in 16-bit files (8..16: 12 scales 0..4095 to 0..255);
    # auto scales 0..65535, and the data check refuses data filling less than 14 bits
    "image_bit_depth": "auto",
    # What model.encoder_weights defaults to on this competition (the command line still wins).
    "encoder_weights": "imagenet",
    "n_folds": 5,
    "folds_seed": 42,
    "data_dir": "${paths.data_dir}/${.name}",
    "sample_submission": "sample_submission.csv",
    # task: classification only (podium.classify.labels): one or any number of classes per
    # image, fbeta's beta, and the submission: tags (id,<mask_column> with space-separated
    # class names) or probabilities (one column per class)
    "classification": {"multi_label": True, "beta": 1.0, "format": "tags"},
    "submission": {
        "id_column": "id",
        "mask_column": "rle_mask",
        "order": "F",
        "base": 1,
        "empty": "",
        "row_id": "{id}",
    },
    # How `podium download` unpacks the archives inside the competition archive.
    "download": {
        # archive path in the data folder (a glob) -> folder to unpack into, false to leave it
        # packed, true for the default (NAME.zip -> NAME/, X.csv.zip -> X.csv)
        "unpack": {},
        "keep_archives": False,  # keep member archives after their verified extraction
    },
    "options": {},  # adapter-specific settings
}


def config_dir() -> Path:
    """The built-in configs (a workspace's configs/ lies over them: hydra_plugins/)."""
    return builtin_configs()


if not OmegaConf.has_resolver("podium_root"):
    OmegaConf.register_new_resolver("podium_root", lambda: str(workspace_root()))


def competition_folders() -> dict[str, Path]:
    """Every competition folder by name: the built-in ones, then the workspace's, which shadow
    built-ins of the same name. Folders starting with '_' (the template) or '.' are skipped."""
    roots = [builtin_competitions()]
    # Outside a workspace: built-ins only (a command that needs one says so on its paths).
    with contextlib.suppress(NotAWorkspace):
        roots.append(workspace_root() / "competitions")
    found: dict[str, Path] = {}
    for root in roots:
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            if not folder.name.startswith(("_", ".")) and (folder / "competition.yaml").is_file():
                found[folder.name] = folder
    return found


def register_competitions() -> list[str]:
    """Register every competition folder as an option of the `competition` config group."""
    store = ConfigStore.instance()
    folders = competition_folders()
    for name, folder in folders.items():
        config = load_competition_yaml(folder / "competition.yaml")
        store.store(group="competition", name=name, node=config)
    return list(folders)


def load_competition_yaml(config_file: Path) -> DictConfig:
    """A competition.yaml merged onto COMPETITION_DEFAULTS; unknown keys are a ConfigError."""
    try:
        own = OmegaConf.load(config_file)
    except Exception as e:
        raise ConfigError(f"{config_file}: not valid YAML ({e})") from None
    base = OmegaConf.create(COMPETITION_DEFAULTS)
    for key in own:
        if key not in base:
            raise ConfigError(f"{config_file}: unknown key '{key}' (known: {', '.join(base)})")
    for section in ("submission", "download", "classification"):
        for key in own.get(section, {}) or {}:
            if key not in base[section]:
                raise ConfigError(f"{config_file}: unknown key '{section}.{key}'")
    merged = OmegaConf.merge(base, own)
    # Open mappings: their keys are file names and patterns, not settings to misspell.
    OmegaConf.set_struct(merged.download.unpack, False)
    merged.name = config_file.parent.name
    merged.dir = str(config_file.parent.resolve())
    problem = schema.first_problem(merged, section="competition.")
    if problem:
        raise ConfigError(f"{config_file}: {problem}")
    return merged


# Config groups switched on with a boolean, as `podium train debug=true` reads: Hydra takes a
# group's choice only as a string (a bool, or null, is an error), so `true` becomes the group's
# option and `false` is dropped (off is the default). `debug=default` works as well
# (lightning-hydra-template's spelling).
FLAG_GROUPS = {"debug": "default"}


def expand_flag_groups(args: list[str]) -> list[str]:
    """`args` with `GROUP=true` of a FLAG_GROUPS group written as its option, `GROUP=false`
    left out."""
    expanded = []
    for arg in args:
        key, equals, value = arg.partition("=")
        if equals and key in FLAG_GROUPS and value.lower() in ("true", "false"):
            if value.lower() == "false":
                continue
            arg = f"{key}={FLAG_GROUPS[key]}"
        expanded.append(arg)
    return expanded


def compose_config(config_name: str, overrides: list[str] = ()) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with overrides and check every value's type and
    range (no run directory is created)."""
    with _hydra_on_configs():
        return _compose_checked(config_name, list(overrides))


def check_config(cfg: DictConfig, cross_key: bool = True) -> None:
    """A ConfigError naming the first setting of `cfg` whose value its type or range does not
    allow (podium.schema); `cross_key=False` checks each value alone."""
    problem = schema.first_problem(cfg, cross_key=cross_key)
    if problem:
        raise ConfigError(problem)


def check_overrides(config_name: str, overrides: list[str], cross_key: bool = True) -> None:
    """Compose before anything runs, so that misspelt keys, unknown options and wrong values
    fail at once. A sweep (`-m fold=0,1,2`) is checked value by value, each with the first
    value of the other swept keys; sweeps that cannot be listed here (interval, glob) are left
    to each job's own check. `cross_key=False` when the overrides go onto another config (a
    resumed run's saved one, checked whole when its job starts)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(explain_hydra_error(e)) from None
    lines = [_override_lines(override) for override in parsed]
    first = [choices[0] if choices else None for choices in lines]
    with _hydra_on_configs():
        base = _compose_checked(config_name, [f for f in first if f], cross_key)
        for i, choices in enumerate(lines):
            for line in choices[1:]:
                changed = _with_value(base, line)
                if changed is not None:
                    check_config(changed, cross_key)
                    continue
                trial = [line if j == i else f for j, f in enumerate(first)]
                _compose_checked(config_name, [f for f in trial if f], cross_key)


def sweep_grid(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The jobs of `podium train -m <overrides>` as Hydra's basic sweeper makes them: one list
    of single overrides per combination of the swept values, in Hydra's order. Without
    `multirun` a sweep is an error, as it is for `podium train`; a sweep that cannot be listed
    (interval, glob) is one too."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(explain_hydra_error(e)) from None
    choices = []
    for override in parsed:
        if override.is_sweep_override() and not multirun:
            raise ConfigError(f"{override.input_line}: a sweep; add -m to run (or estimate) it")
        lines = _override_lines(override)
        if not lines:
            raise ConfigError(f"{override.input_line}: a sweep whose values cannot be listed")
        choices.append(lines)
    return [list(job) for job in itertools.product(*choices)]


@contextlib.contextmanager
def _hydra_on_configs() -> Iterator[None]:
    """Hydra initialised on podium's configs (competitions registered), for compose() calls."""
    register_competitions()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()


def _compose_checked(config_name: str, overrides: list[str], cross_key: bool = True) -> DictConfig:
    try:
        cfg = compose(config_name, overrides=overrides)
    except Exception as e:
        raise ConfigError(explain_hydra_error(e)) from None
    check_config(cfg, cross_key)
    return cfg


def _override_lines(override: Override) -> list[str]:
    """The single overrides `override` stands for: itself, or one per value of a sweep (none
    for a sweep that only a sweeper can list: interval, glob)."""
    if not override.is_sweep_override():
        return [override.input_line]
    try:
        values = list(override.sweep_string_iterator())
    except HydraException:
        return []
    return [f"{override.get_key_element()}={value}" for value in values]


def _with_value(base: DictConfig, line: str) -> DictConfig | None:
    """A copy of `base` with the override `line` applied when it only changes one plain value
    (fold=3: no need to compose again), else None (a config group, a mapping or list, +/~)."""
    override = OverridesParser.create().parse_override(line)
    value, key = override.value(), override.key_or_group
    if override.is_add() or override.is_force_add() or override.is_delete() or override.package:
        return None
    try:
        current = OmegaConf.select(base, key, default=base)
    except OmegaConfBaseException:
        return None
    if current is base or isinstance(current, DictConfig | ListConfig | Mapping | list):
        return None
    if isinstance(value, Mapping | list):
        return None
    changed = copy.deepcopy(base)
    OmegaConf.update(changed, key, value, merge=True)
    return changed


# OmegaConf's messages for a value its node's type refuses, in the words of podium.schema.
OMEGACONF_REASONS = {
    r"is not a valid bool": "expected true or false",
    r"could not be converted to Integer": "expected an integer",
    r"could not be converted to Float": "expected a number",
    r"Cannot merge DictConfig with ListConfig": "expected a list, not a mapping",
    r"Cannot merge ListConfig with DictConfig": "expected a mapping, not a list",
    r"list index out of range": "no such list index",
}


def explain_hydra_error(error: Exception) -> str:
    """Hydra's multi-line composition errors, reduced to one line naming the key or option."""
    text = str(error)
    key = re.search(r"Could not override '([^']+)'", text)
    if key:
        # The cause names the exact key, e.g. model.kwargs.encoder_depth for model.kwargs={...}.
        cause = str(error.__cause__ or "")
        inner = re.search(r"full_key: (\S+)", cause)
        name = inner.group(1) if inner and inner.group(1).startswith(key.group(1)) else key.group(1)
        return f"unknown config key '{name}' (to add a new key, use +{name}=...)"
    key = re.search(r"Key '([^']+)' (?:is not in struct|not in)", text)
    full = re.search(r"full_key: (\S+)", text)
    if key:
        return f"unknown config key '{full.group(1) if full else key.group(1)}'"
    merging = re.match(r"Error merging override (.+)", text)
    if merging:  # OmegaConf's own type errors (Hydra's typed settings, a list given a mapping)
        cause = (str(error.__cause__ or "").splitlines() or ["cannot be merged"])[0]
        reason = next((r for p, r in OMEGACONF_REASONS.items() if re.search(p, cause)), cause)
        return f"{merging.group(1)}: {reason}"
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        known = f" (available: {', '.join(options)})" if options else ""
        return f"unknown option '{option}' for '{group}'{known}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), repr(error))
    return first


# =============================================================================================
# What a run computes. The keys that say where, under which name, or how fast and visibly a run
# was made: two runs that differ only in them train the same model. The one list of them: the
# config hash in summary.json is built on it, config comparisons (podium runs, write-ups) are to
# use it, and configs/hydra/default.yaml's exclude_keys (experiment names) repeats its keys
# (tests/test_config.py checks that the two agree).
NON_RESULT_GROUPS = ("paths", "hydra")  # every key under them: folders of this machine, Hydra's
NON_RESULT_KEYS = frozenset(
    {
        # where: this clone's competition folder and the data folder (paths.data_dir/<name>;
        # image-folder's dataset too, which another folder may hold a copy of)
        "competition.dir",
        "competition.data_dir",
        # under which name
        "experiment_name",
        "resume",
        # how fast or how visibly: data loading is seeded per sample, logging reads no RNG;
        # the thread count changes at most the order of float sums
        "trainer.num_workers",
        "trainer.cpu_threads",
        "trainer.progress",
        "trainer.log_every",
        # how DDP finds gradients. The process count itself (trainer.devices, gpus_per_job)
        # does count: it multiplies the global batch. torchrun's count never appears in the
        # config; summary.json's world_size and global_batch record it for every run.
        "trainer.find_unused_parameters",
    }
)
# Keys that vary across the runs of one experiment by design. They do change the result, so
# `result_config` keeps them; Hydra's exclude_keys leaves them out of experiment names.
REPLICATE_KEYS = frozenset({"fold", "seed"})


def changes_result(key: str) -> bool:
    """Whether a dotted config key (`optimizer.lr`; `paths` for the group itself) can change
    what a run computes. Unknown keys can: only the keys listed above cannot."""
    return key not in NON_RESULT_KEYS and key.split(".")[0] not in NON_RESULT_GROUPS


def result_config(config: Mapping, replicates: bool = True) -> dict:
    """A copy of a config (resolved first if a DictConfig) without the keys that do not change
    the result; `replicates=False` also drops fold and seed, leaving what every run of one
    experiment shares."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)

    def keep(node: Mapping, prefix: str) -> dict:
        kept = {}
        for key, value in node.items():
            name = f"{prefix}{key}"
            if not changes_result(name) or (not replicates and name in REPLICATE_KEYS):
                continue
            is_node = isinstance(value, Mapping)
            kept[key] = keep(value, f"{name}.") if is_node else copy.deepcopy(value)
        return kept

    return keep(config, "")


def config_hash(config: Mapping, replicates: bool = True) -> str:
    """A short hash of `result_config(config, replicates)`: the same for the same experiment
    from another clone, data folder, worker count or launcher."""
    kept = result_config(config, replicates)
    return hashlib.sha1(repr(sorted(kept.items())).encode()).hexdigest()[:10]


def prepare_run_config(cfg: DictConfig, task_overrides: list[str], run_dir: Path) -> DictConfig:
    """Fill `experiment_name` from the overrides and, when resuming, start from the run's saved
    config with only this command line's overrides applied on top."""
    from hydra.core.hydra_config import HydraConfig

    from podium import rundir  # imports torch: not on the way of every config check

    if cfg.get("resume"):
        saved = rundir.read_config(run_dir)
        OmegaConf.set_struct(saved, False)
        for override in OverridesParser.create().parse_overrides(task_overrides):
            key = override.key_or_group
            if key == "resume" or key.startswith("hydra."):
                continue
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False)
        saved.resume = cfg.resume
        cfg = saved
    elif cfg.get("experiment_name", "missing") is None:
        name = HydraConfig.get().job.override_dirname
        OmegaConf.set_struct(cfg, False)
        cfg.experiment_name = name or "baseline"
    return cfg
