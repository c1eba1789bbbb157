"""Configuration: the project root, competition config registration, and override checking.

Hydra composes `configs/<command>.yaml` from groups. The `competition` group is special: its
options are the folders of `competitions/` (each with a `competition.yaml`), registered in Hydra's
ConfigStore at start-up, so a competition lives in one folder with its adapter.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from podium.io import PodiumError

__all__ = [
    "project_root",
    "config_dir",
    "register_competitions",
    "compose_config",
    "check_overrides",
    "ConfigError",
    "prepare_run_config",
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
    "task": "binary",  # binary | multiclass | multilabel
    "classes": ["foreground"],
    "metric": "dice",  # a name in podium.metrics.METRICS, or "adapter" (Adapter.score_image)
    "image_size": None,  # [H, W]: resize for training/validation; null keeps the native size
    "in_channels": 3,
    # What model.encoder_weights defaults to on this competition (the command line still wins).
    "encoder_weights": "imagenet",
    "n_folds": 5,
    "folds_seed": 42,
    "data_dir": "${paths.data_dir}/${.name}",
    "sample_submission": "sample_submission.csv",
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


def project_root() -> Path:
    """The folder holding `configs/` and `competitions/`: $PODIUM_ROOT, else this checkout."""
    env = os.environ.get("PODIUM_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def config_dir() -> Path:
    return project_root() / "configs"


if not OmegaConf.has_resolver("podium_root"):
    OmegaConf.register_new_resolver("podium_root", lambda: str(project_root()))


def register_competitions(competitions_dir: Path | None = None) -> list[str]:
    """Register every `competitions/<name>/competition.yaml` as option <name> of the
    `competition` config group. Folders starting with '_' (the template) are skipped."""
    competitions_dir = competitions_dir or project_root() / "competitions"
    store = ConfigStore.instance()
    names = []
    for folder in sorted(competitions_dir.iterdir()) if competitions_dir.is_dir() else []:
        config_file = folder / "competition.yaml"
        if folder.name.startswith(("_", ".")) or not config_file.is_file():
            continue
        store.store(group="competition", name=folder.name, node=load_competition_yaml(config_file))
        names.append(folder.name)
    return names


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
    for section in ("submission", "download"):
        for key in own.get(section, {}) or {}:
            if key not in base[section]:
                raise ConfigError(f"{config_file}: unknown key '{section}.{key}'")
    merged = OmegaConf.merge(base, own)
    # Open mappings: their keys are file names and patterns, not settings to misspell.
    OmegaConf.set_struct(merged.download.unpack, False)
    merged.name = config_file.parent.name
    merged.dir = str(config_file.parent.resolve())
    if merged.task not in ("binary", "multiclass", "multilabel"):
        raise ConfigError(f"{config_file}: task must be binary, multiclass or multilabel")
    return merged


def compose_config(config_name: str, overrides: list[str] = ()) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with overrides (no run directory is created)."""
    register_competitions()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose(config_name, overrides=list(overrides))
    except Exception as e:
        raise ConfigError(explain_hydra_error(e)) from None
    finally:
        GlobalHydra.instance().clear()


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose once to catch misspelt keys and unknown options before anything runs; a sweep
    (`-m fold=0,1,2`) is checked with the first value of each swept key."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(explain_hydra_error(e)) from None
    single = []
    for override in parsed:
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            single.append(f"{override.get_key_element()}={first}")
        else:
            single.append(override.input_line)
    compose_config(config_name, single)


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
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        known = f" (available: {', '.join(options)})" if options else ""
        return f"unknown option '{option}' for '{group}'{known}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), repr(error))
    return first


def prepare_run_config(cfg: DictConfig, task_overrides: list[str], run_dir: Path) -> DictConfig:
    """Fill `experiment_name` from the overrides and, when resuming, start from the run's saved
    config with only this command line's overrides applied on top."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if cfg.get("resume"):
        saved = OmegaConf.load(run_dir / "config.yaml")
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
