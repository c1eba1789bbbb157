"""The `podium` command: `podium <command> [key=value ...] [-m]`.

Every command composes a Hydra config (configs/<config>.yaml) and takes Hydra overrides. Commands
that produce a run (train, predict, tune) go through `hydra.main`, so `hydra.run.dir=DIR`, `-m`
sweeps and Hydra's own flags work; the others compose the config and run in place.

Errors: a misspelt key or unknown option is one line and exit code 2; any other podium error
(bad file, missing data...) is one line and exit code 1. No tracebacks for user mistakes.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from podium.config import (
    ConfigError,
    check_overrides,
    compose_config,
    config_dir,
    register_competitions,
)
from podium.io import PodiumError

log = logging.getLogger("podium")

# command -> (config name, "module:function", produces a run directory, one-line help)
COMMANDS: dict[str, tuple[str, str, bool, str]] = {
    "download": ("tools", "podium.cli:download", False, "get a competition's data"),
    "train": ("train", "podium.launch:main", True, "train one model (a fold, a seed)"),
    "tune": ("tune", "podium.infer:tune", True, "tune post-processing on out-of-fold predictions"),
    "predict": ("predict", "podium.infer:predict", True, "ensemble runs on the test set"),
    "validate": ("tools", "podium.submit:validate_command", False, "check a submission file"),
    "score": ("tools", "podium.submit:score_command", False, "score a submission locally"),
    "submit": ("tools", "podium.cli:submit", False, "validate, then submit to Kaggle"),
    "submissions": ("tools", "podium.cli:submissions", False, "your Kaggle submissions"),
    "leaderboard": ("tools", "podium.cli:leaderboard", False, "the Kaggle leaderboard"),
    "runs": ("tools", "podium.report:runs_command", False, "the ledger: CV by experiment"),
    "writeup": ("tools", "podium.report:writeup_command", False, "draft a write-up"),
}


def usage() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = ["usage: podium <command> [key=value ...] [-m]", "", "commands:"]
    lines += [f"  {name:<{width}}{spec[3]}" for name, spec in COMMANDS.items()]
    lines += [f"  {'demo':<{width}}the whole loop on the generated demo competition"]
    lines += [f"  {'new':<{width}}create competitions/SLUG from the template (podium new SLUG)"]
    lines += ["", "Every command takes Hydra overrides, e.g. podium train model.encoder=resnet34"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, args = argv[0], argv[1:]
    try:
        if command == "new":
            from podium.scaffold import new_command

            return new_command(args) or 0
        if command == "demo":
            from podium.demo import run

            return run(args)
        if command not in COMMANDS:
            raise ConfigError(f"unknown command '{command}' (see podium --help)")
        config_name, target, makes_run, _ = COMMANDS[command]
        if makes_run:
            return run_with_hydra(command, config_name, target, args)
        overrides = [a for a in args if not a.startswith("-")]
        cfg = compose_config(config_name, overrides)
        _setup_logging()
        return resolve_target(target)(cfg) or 0
    except ConfigError as e:
        print(f"podium: error: {e}", file=sys.stderr)
        return 2
    except PodiumError as e:
        print(f"podium: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("podium: interrupted", file=sys.stderr)
        return 130


def run_with_hydra(command: str, config_name: str, target: str, args: list[str]) -> int:
    """Run `target(cfg, run_dir)` under hydra.main (run dirs, -m sweeps, Hydra flags)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    overrides = [a for a in args if not a.startswith("-")]
    resume = next((a.split("=", 1)[1] for a in overrides if a.startswith("resume=")), None)
    if resume:
        resume_dir = Path(resume).resolve()
        if not (resume_dir / "config.yaml").is_file():
            raise ConfigError(f"resume={resume}: not a run directory (no config.yaml there)")
        args = [a for a in args if not a.startswith("resume=")]
        args += [f"resume={resume_dir}", f"hydra.run.dir={resume_dir}"]
        overrides = [a for a in args if not a.startswith("-")]
    if "--help" not in args and "-h" not in args and "--hydra-help" not in args:
        check_overrides(config_name, overrides)
    register_competitions()
    function = resolve_target(target)

    def task(cfg: DictConfig) -> float | None:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        try:
            cfg = prepare_run_config(cfg, list(hydra_cfg.overrides.task), run_dir)
            return function(cfg, run_dir)
        except ConfigError as e:
            print(f"podium: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except PodiumError as e:
            print(f"podium: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    task.__module__ = "podium"  # hydra names the job (and its log file) after the function
    task.__name__ = command
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # a previous in-process command may have left it set
    saved_argv = sys.argv
    sys.argv = [f"podium {command}", *args]
    try:
        hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(
            task
        )()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = saved_argv
    return 0


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


# -- commands that join several stages ------------------------------------------------------
def download(cfg: DictConfig) -> int:
    """Kaggle competitions download through the Kaggle module; local ones run their adapter's
    prepare() (the demo generates its data). Both skip work that is already complete."""
    from podium import io
    from podium.competition import load_competition

    competition = load_competition(cfg)
    if cfg.competition.kaggle:
        from podium import kaggle

        kaggle.preflight()
        files = list(cfg.files) if cfg.files else None
        paths = kaggle.download(cfg.competition.kaggle, competition.data_dir, files, cfg.force)
        log.info("%s: %d files in %s", cfg.competition.kaggle, len(paths), competition.data_dir)
        return 0
    # The marker records the options the data was made with: other options make it again.
    marker = competition.data_dir / ".podium-prepared"
    options = OmegaConf.to_container(cfg.competition.options, resolve=True)
    made_with = {"competition": competition.name, "options": options}
    if marker.is_file() and io.read_json(marker) == made_with and not cfg.force:
        where = competition.data_dir
        log.info("%s: already prepared in %s (force=true to redo)", competition.name, where)
        return 0
    (competition.data_dir / "folds.csv").unlink(missing_ok=True)  # folds of the old data
    competition.prepare()
    io.write_json(marker, made_with)
    log.info("%s: prepared in %s", competition.name, competition.data_dir)
    return 0


def submit(cfg: DictConfig) -> int:
    """Validate the file locally (a malformed file never costs a submission), submit it through
    the Kaggle client, and record it in the ledger (with the runs behind it and the score)."""
    from podium import kaggle, ledger
    from podium.competition import load_competition
    from podium.submit import validate_submission

    slug = _kaggle_slug(cfg)
    if not cfg.file:
        raise ConfigError("submit needs file=PATH (the submission CSV)")
    path = Path(cfg.file).resolve()
    if not path.is_file():
        raise PodiumError(f"file={cfg.file}: no such file")
    problems = validate_submission(load_competition(cfg), path)
    if problems:
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        raise PodiumError(f"{path}: not submitted, {len(problems)} problem(s) found (listed above)")
    kaggle.preflight()
    result = kaggle.submit(
        slug, path, cfg.message, wait=bool(cfg.wait), poll_interval=float(cfg.poll_interval)
    )
    ledger.record_submission(
        ledger.ledger_path(cfg.paths.runs_dir, cfg.competition.name),
        ref=result["ref"],
        file=str(path),
        sha256=result["sha256"],
        message=cfg.message,
        runs=[str(r) for r in cfg.runs],
        status=result["status"],
        public_score=result["public_score"],
    )
    score = result["public_score"]
    print(
        f"submitted {path.name} to {slug}: ref {result['ref']}, status {result['status']}"
        + (f", public score {score}" if score is not None else "")
    )
    return 0


def submissions(cfg: DictConfig) -> int:
    from podium import kaggle, ledger

    rows = kaggle.submissions(_kaggle_slug(cfg))
    # Scores arrive after submitting: bring the ledger's submissions up to date.
    path = ledger.ledger_path(cfg.paths.runs_dir, cfg.competition.name)
    known = {str(s["ref"]): s for s in ledger.submissions(ledger.read(path))}
    for row in rows:
        old = known.get(str(row["ref"]))
        news = {k: row[k] for k in ("status", "public_score", "private_score")}
        if old is not None and any(old.get(k) != v for k, v in news.items() if v is not None):
            ledger.record_submission(path, ref=row["ref"], **news)
    columns = ["ref", "date", "status", "public_score", "private_score", "description"]
    print(kaggle.format_table(rows, columns) if rows else "no submissions yet")
    return 0


def leaderboard(cfg: DictConfig) -> int:
    from podium import kaggle

    rows, own = kaggle.leaderboard(_kaggle_slug(cfg), int(cfg.top))
    columns = ["rank", "team_name", "score", "submission_date"]
    print(kaggle.format_table(rows, columns))
    if own is not None and own not in rows:
        print("...\n" + kaggle.format_table([own], columns).splitlines()[-1])
    if own is not None:
        print(f"your position: {own['rank']}")
    return 0


def _kaggle_slug(cfg: DictConfig) -> str:
    slug = cfg.competition.kaggle
    if not slug:
        raise ConfigError(
            f"competition {cfg.competition.name} has no Kaggle slug "
            "(competition.kaggle in its competition.yaml)"
        )
    return slug


def resolve_target(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    logging.captureWarnings(True)  # warnings (e.g. a world-readable kaggle.json) as one line


if __name__ == "__main__":
    sys.exit(main())
