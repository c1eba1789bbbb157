"""`podium export`: a code competition's bundle — everything Kaggle's offline notebook needs to
predict the hidden test set with an ensemble of runs, as `podium push` uploads it.

    BUNDLE/
      dataset/                     uploaded as a private Kaggle dataset
        dataset-metadata.json
        runs/<NN>_<run>/           config.yaml, summary.json and checkpoints/<best|last>.pt
                                   holding only the weights prediction uses (EMA or raw, fp32
                                   or fp16) and the config: no optimizer, scheduler or RNG state
        tuned.json                 the post-processing `podium tune` chose for these runs
        competitions/<name>/       the adapter folder, competition.yaml as exported (overrides
                                   applied): a workspace's competition inside the kernel
        wheels/                    podium's wheel and those of the packages the image lacks
      kernel/
        kernel-metadata.json       internet off, GPU on, competition and dataset attached
        infer.py                   podium.kernel_script with its SETTINGS filled in
      bundle.json                  competition, runs (the run folders here), kernel, dataset
      export.json                  what the kernel expects from the image (`podium dryrun`)

A bundle is written into a temporary folder beside DIR and renamed into place: a failed export
leaves no DIR, and a re-export replaces the previous bundle whole.
"""

from __future__ import annotations

import logging
import os
import pprint
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from podium import io, kernel_script, packages, rundir
from podium.config import ConfigError
from podium.io import PodiumError

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_FILE",
    "EXPORT_FILE",
    "export_command",
    "export_bundle",
    "slim_checkpoint",
    "kernel_source",
    "folder_sizes",
]

BUNDLE_FILE = "bundle.json"
EXPORT_FILE = "export.json"
# The prediction settings the kernel passes to `podium predict` as the export was given them.
PREDICT_KEYS = (
    "tta", "tta_scales", "batch_size", "forward_batch", "threshold", "min_area", "empty_area",
    "empty_gate", "tile_size", "tile_overlap", "num_workers", "precision",
)  # fmt: skip
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$")  # Kaggle: 3 to 50 characters


def export_command(cfg: DictConfig) -> int:
    """`podium export competition=X runs=[...] out=DIR [user=U] [dryrun=true]`."""
    bundle_dir = export_bundle(cfg)
    if cfg.dryrun:
        from podium.dryrun import dryrun_bundle

        dryrun_bundle(cfg, bundle_dir)
    return 0


def export_bundle(cfg: DictConfig) -> Path:
    """Write the bundle folder `cfg.out` (see the module docstring); returns its path."""
    if not cfg.out:
        raise ConfigError("export needs out=DIR (the bundle folder to write)")
    out = Path(str(cfg.out)).expanduser().resolve()
    if out.exists() and not (out / BUNDLE_FILE).is_file():
        raise PodiumError(f"out={cfg.out}: exists and is not a podium bundle; choose a new folder")
    names = _kaggle_names(cfg)
    packages.check_target(cfg.image)
    from podium.infer import find_tuned  # imports torch, smp, timm: after the quick checks

    runs = rundir.resolve_runs(cfg)
    _, tuned = find_tuned(cfg, [path for path, _ in runs])
    plan = packages.plan_packages([str(p) for p in cfg.image.packages])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        staging.chmod(0o755)
        _write_bundle(cfg, staging, names, runs, tuned, plan)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _print_summary(cfg, out, names, len(runs))
    return out


def _write_bundle(
    cfg: DictConfig,
    folder: Path,
    names: dict[str, str],
    runs: list[tuple[Path, float]],
    tuned: dict | None,
    plan: packages.PackagePlan,
) -> None:
    dataset, kernel = folder / "dataset", folder / "kernel"
    run_names = []
    for index, (run, _) in enumerate(runs):
        name = f"runs/{index:02d}_{run.name}"
        log.info("export: %s -> %s", run, name)
        _export_run(cfg, run, dataset / name)
        run_names.append(name)
    if tuned is not None:
        exported = {k: v for k, v in tuned.items() if k != "path"} | {"runs": run_names}
        io.write_json(dataset / rundir.TUNED, exported | {"tuned_from": tuned.get("path")})
    _copy_competition(cfg, dataset / "competitions" / cfg.competition.name)
    log.info("export: podium's wheel and %d dependency wheels", len(plan.bundle))
    wheel = packages.build_podium_wheel(dataset / "wheels", cfg.podium_wheel)
    packages.download_wheels(plan.bundle, dataset / "wheels")
    podium_version = wheel.name.split("-")[1]
    io.write_json(
        dataset / "dataset-metadata.json",
        {"title": names["dataset_slug"], "id": names["dataset"], "licenses": [{"name": "CC0-1.0"}]},
    )
    settings = {
        "competition": cfg.competition.name,
        "kaggle_slug": names["kaggle_slug"],
        "dataset": names["dataset"],
        "dataset_slug": names["dataset_slug"],
        "podium_version": podium_version,
        "runs": run_names,
        "run_weights": [weight for _, weight in runs],
        "predict_overrides": predict_overrides(cfg),
    }
    io.write_text(kernel / "infer.py", kernel_source(settings))
    io.write_json(kernel / "kernel-metadata.json", _kernel_metadata(names))
    bundle = {
        "competition": cfg.competition.name,
        "runs": [str(run) for run, _ in runs],
        "kernel": names["kernel"],
        "dataset": names["dataset"],
    }
    io.write_json(folder / BUNDLE_FILE, bundle)
    export = {
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "podium_version": podium_version,
        "image": {"packages": list(cfg.image.packages), "provides": plan.image},
        "python": str(cfg.image.python),
        "platform": str(cfg.image.platform),
        "wheels": {"podium": podium_version} | plan.bundle,
        "tuned_from": (tuned or {}).get("path"),
        "fp16": bool(cfg.fp16),
    }
    io.write_json(folder / EXPORT_FILE, export)


def _kaggle_names(cfg: DictConfig) -> dict[str, str]:
    """The Kaggle slug of the competition, the user, and the dataset's and kernel's names."""
    from podium.kaggle.commands import kaggle_slug

    slug = kaggle_slug(cfg)
    user = str(cfg.user) if cfg.user else _credentials_user()
    if not re.fullmatch(r"[A-Za-z0-9_-]+", user):
        raise ConfigError(f"user={user}: expected a Kaggle user name")
    dataset_slug = str(cfg.dataset_slug or _default_slug(slug, "podium"))
    kernel_slug = str(cfg.kernel_slug or _default_slug(slug, "podium-infer"))
    for key, value in (("dataset_slug", dataset_slug), ("kernel_slug", kernel_slug)):
        if not _SLUG.match(value):
            raise ConfigError(f"{key}={value}: 3 to 50 lower-case letters, digits and dashes")
    return {
        "kaggle_slug": slug,
        "user": user,
        "dataset_slug": dataset_slug,
        "dataset": f"{user}/{dataset_slug}",
        "kernel_slug": kernel_slug,
        "kernel": f"{user}/{kernel_slug}",
    }


def _default_slug(competition_slug: str, suffix: str) -> str:
    keep = 50 - len(suffix) - 1
    return f"{competition_slug[:keep].rstrip('-')}-{suffix}"


def _credentials_user() -> str:
    from podium.kaggle import preflight

    try:
        return preflight()
    except PodiumError as e:
        raise ConfigError(f"user= not given, and no Kaggle user from the credentials ({e})") from e


def _export_run(cfg: DictConfig, run: Path, target: Path) -> None:
    which, weights = str(cfg.checkpoint), str(cfg.weights)
    if weights not in ("ema", "model"):
        raise PodiumError(f"weights={weights}: expected ema | model")
    rundir.save_checkpoint(
        slim_checkpoint(run, which, weights, bool(cfg.fp16)), rundir.checkpoint_path(target, which)
    )
    shutil.copy2(run / rundir.CONFIG, target / rundir.CONFIG)
    if (run / rundir.SUMMARY).is_file():
        shutil.copy2(run / rundir.SUMMARY, target / rundir.SUMMARY)


def slim_checkpoint(run: Path, which: str, weights: str, fp16: bool = False) -> dict[str, Any]:
    """A checkpoint holding the config and the one set of weights prediction uses (as "model";
    "ema" None), loaded through `load_run_model` itself so that it loads the same way again."""
    from podium.models import load_run_model

    model, config = load_run_model(run, which, weights)
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().clone()
        state[key] = tensor.half() if fp16 and tensor.is_floating_point() else tensor
    return {
        "config": OmegaConf.to_container(config),
        "model": state,
        "ema": None,
        "exported": {"run": str(run), "checkpoint": which, "weights": weights, "fp16": fp16},
    }


def predict_overrides(cfg: DictConfig) -> list[str]:
    """The export's prediction settings as `podium predict` overrides, for the kernel."""
    overrides = [f"{key}={_override_value(cfg.get(key))}" for key in PREDICT_KEYS]
    # The bundle's checkpoints hold the chosen weights as "model"; logs stay plain text.
    return overrides + [f"checkpoint={cfg.checkpoint}", "weights=model", "progress=false"]


def _override_value(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return kernel_script.quoted(str(value))


def kernel_source(settings: dict[str, Any]) -> str:
    """kernel/infer.py: podium.kernel_script's source with `settings` as its SETTINGS."""
    source = Path(kernel_script.__file__).read_text()
    marker = "SETTINGS: dict = {}  # podium export writes the bundle's settings here\n"
    if source.count(marker) != 1:
        raise PodiumError(f"{kernel_script.__file__}: the SETTINGS line is missing")
    filled = "SETTINGS: dict = " + pprint.pformat(settings, width=96, sort_dicts=False) + "\n"
    return source.replace(marker, filled)


def _kernel_metadata(names: dict[str, str]) -> dict[str, Any]:
    return {
        "id": names["kernel"],
        "title": names["kernel_slug"],  # Kaggle derives the slug from the title: keep them one
        "code_file": "infer.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "enable_internet": False,
        "dataset_sources": [names["dataset"]],
        "competition_sources": [names["kaggle_slug"]],
        "model_sources": [],
        "kernel_sources": [],
    }


def _copy_competition(cfg: DictConfig, target: Path) -> None:
    """The adapter folder, with competition.yaml rewritten to the settings exported with (the
    command line's overrides applied; where the data is, the kernel says)."""
    source = Path(cfg.competition.dir)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    shutil.copytree(source, target, ignore=ignore)
    settings = OmegaConf.to_container(cfg.competition, resolve=True)
    for key in ("name", "dir", "data_dir"):
        settings.pop(key, None)
    header = (
        f"# Written by podium export: competition {cfg.competition.name} as exported, overrides\n"
        f"# applied (the kernel sets competition.data_dir), from {source / 'competition.yaml'}\n"
    )
    io.write_text(target / "competition.yaml", header + OmegaConf.to_yaml(settings))


def _replace_folder(new: Path, out: Path) -> None:
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def folder_sizes(folder: Path) -> list[tuple[str, int]]:
    """(path relative to `folder`, bytes) of every file below it, biggest first."""
    sizes = [
        (str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file()
    ]
    return sorted(sizes, key=lambda item: -item[1])


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _print_summary(cfg: DictConfig, out: Path, names: dict[str, str], n_runs: int) -> None:
    sizes = folder_sizes(out / "dataset")
    total = sum(size for _, size in sizes)
    parts = {part: sum(s for p, s in sizes if p.startswith(part)) for part in ("wheels", "runs")}
    wheels = sum(1 for p, _ in sizes if p.startswith("wheels/"))
    print(
        f"exported {n_runs} run(s) of {cfg.competition.name} to {out}: dataset {names['dataset']}"
        f" {_mib(total)} ({wheels} wheels {_mib(parts['wheels'])}, runs {_mib(parts['runs'])}),"
        f" kernel {names['kernel']}"
    )
    print("  biggest: " + ", ".join(f"{p} {_mib(s)}" for p, s in sizes[:5]))
    common = f"competition={cfg.competition.name} bundle={out}"
    print(f"next: podium dryrun {common}; then podium push {common}")
