"""The `podium` command: `podium <command> [key=value ...] [-m]`.

Every command composes a Hydra config (configs/<config>.yaml) and takes Hydra overrides. Commands
that produce a run (train, predict, tune) go through `hydra.main`, so `hydra.run.dir=DIR`, `-m`
sweeps and Hydra's own flags work; the others compose the config and run in place.

Errors: a misspelt key, an unknown option or a value of the wrong type or range is one line and
exit code 2, before anything runs; any other podium error (bad file, missing data...) is one line
and exit code 1. No tracebacks for user mistakes.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from podium.config import (
    ConfigError,
    check_config,
    check_overrides,
    compose_config,
    config_dir,
    expand_flag_groups,
    prepare_run_config,
    register_competitions,
)
from podium.io import PodiumError
from podium.workspace import workspace_root

log = logging.getLogger("podium")

# Every command (but init, new and demo): its name, the config it composes
# (configs/<config>.yaml), the function that runs it, whether it makes a run directory (then it
# runs under hydra.main: `hydra.run.dir=DIR`, `-m` sweeps, and the function also takes the
# run_dir) or takes the arguments as given (`args`: it composes its configs itself, e.g. one per
# job of a `-m` sweep), and its one-line help. In the order of the loop.
_COMMAND_TABLE = """
download      tools   podium.download:download_command    -   get a competition's data
doctor        tools   podium.doctor:doctor_command        -   check the data first (exits 0)
estimate      train   podium.estimate:estimate_command    args cost of a run, -m sweep, predict
train         train   podium.launch:main                  run train one model (a fold, a seed)
search        search  podium.search:search_command        run search hyper-parameters (Optuna)
tune          tune    podium.tasks:tune_command           run tune post-processing on OOF
predict       predict podium.tasks:predict_command        run ensemble runs on the test set
pseudo        pseudo  podium.pseudo:pseudo_command        -   pseudo-label unlabelled images
validate      tools   podium.tasks:validate_command       -   check a submission file
score         tools   podium.tasks:score_command          -   score a submission locally
submit        tools   podium.kaggle:submit_command        -   check, then submit a file or kernel
submissions   tools   podium.kaggle:submissions_command   -   your Kaggle submissions
leaderboard   tools   podium.kaggle:leaderboard_command   -   the Kaggle leaderboard
export        export  podium.export:export_command        -   bundle runs for a Kaggle kernel
dryrun        export  podium.dryrun:dryrun_command        -   run a bundle's kernel offline
push          tools   podium.kaggle:push_command          -   push a bundle: dataset + kernel
kernel-output tools   podium.kaggle:kernel_output_command -   a kernel's latest log and outputs
runs          tools   podium.report:runs_command          -   the ledger: CV by experiment
writeup       tools   podium.report:writeup_command       -   draft a write-up
"""


@dataclass(frozen=True)
class Command:
    name: str
    config: str
    target: str  # "module:function"
    makes_run: bool
    help: str
    takes_args: bool = False


COMMANDS: dict[str, Command] = {
    name: Command(name, config, target, kind == "run", text, kind == "args")
    for name, config, target, kind, text in (
        line.split(maxsplit=4) for line in _COMMAND_TABLE.strip().splitlines()
    )
}


def usage() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = ["usage: podium <command> [key=value ...] [-m]", "", "commands:"]
    lines += [f"  {name:<{width}}{command.help}" for name, command in COMMANDS.items()]
    lines += [f"  {'demo':<{width}}the whole loop on the generated demo competition"]
    lines += [f"  {'init':<{width}}make this folder a podium workspace (podium init [DIR])"]
    lines += [f"  {'new':<{width}}create competitions/SLUG from the template (podium new SLUG)"]
    lines += ["", "Every command takes Hydra overrides, e.g. podium train model.encoder=resnet34"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, args = argv[0], expand_flag_groups(argv[1:])
    try:
        if command == "init":
            from podium.scaffold import init_command

            return init_command(args)
        workspace_root()  # every other command works in a workspace: say so now if there is none
        if command == "new":
            from podium.scaffold import new_command

            return new_command(args)
        if command == "demo":
            return run_demo(args)
        if command not in COMMANDS:
            raise ConfigError(f"unknown command '{command}' (see podium --help)")
        spec = COMMANDS[command]
        if spec.makes_run:
            return run_with_hydra(command, spec.config, spec.target, args)
        if spec.takes_args:
            _setup_logging()
            return resolve_target(spec.target)(args) or 0
        cfg = compose_config(spec.config, [a for a in args if not a.startswith("-")])
        _setup_logging()
        return resolve_target(spec.target)(cfg) or 0
    except ConfigError as e:
        print(f"podium: error: {e}", file=sys.stderr)
        return 2
    except PodiumError as e:
        print(f"podium: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("podium: interrupted", file=sys.stderr)
        return 130


def run_demo(args: list[str]) -> int:
    """Run the demo's planned commands in order; stop at the first that fails."""
    from podium import demo

    started = time.time()
    plan = demo.plan(args)
    for step in plan.steps:
        print(f"\n$ podium {' '.join(step)}", flush=True)
        code = main(step)
        if code:
            raise PodiumError(f"demo stopped: `podium {step[0]}` exited {code}")
    print("\n" + demo.summary(plan, time.time() - started))
    return 0


def run_with_hydra(command: str, config_name: str, target: str, args: list[str]) -> int:
    """Run `target(cfg, run_dir)` under hydra.main (run dirs, -m sweeps, Hydra flags)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    overrides = [a for a in args if not a.startswith("-")]
    resume = next((a.split("=", 1)[1] for a in overrides if a.startswith("resume=")), None)
    if resume:
        from podium import rundir  # imports torch: only a resumed run waits for it before the check

        resume_dir = Path(resume).resolve()
        if not rundir.is_run(resume_dir):
            raise ConfigError(f"resume={resume}: not a run directory (no {rundir.CONFIG} there)")
        args = [a for a in args if not a.startswith("resume=")]
        args += [f"resume={resume_dir}", f"hydra.run.dir={resume_dir}"]
        overrides = [a for a in args if not a.startswith("-")]
    if "--help" not in args and "-h" not in args and "--hydra-help" not in args:
        # Each value alone when resuming: the overrides go onto the run's saved config.
        check_overrides(config_name, overrides, cross_key=not resume)
    register_competitions()

    def task(cfg: DictConfig) -> float | None:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        try:
            cfg = checked_run_config(cfg, list(hydra_cfg.overrides.task), run_dir)
            # Imported once the config is checked: torch and smp take seconds to import.
            return resolve_target(target)(cfg, run_dir)
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


def checked_run_config(cfg: DictConfig, task_overrides: list[str], run_dir: Path) -> DictConfig:
    """The job's config (a resumed run's: its saved one), checked whole: a sweep's later values
    and a resumed run meet the same one-line errors. A new run that fails leaves no folder."""
    try:
        run_cfg = prepare_run_config(cfg, task_overrides, run_dir)
        check_config(run_cfg)
    except ConfigError:
        made = run_dir.iterdir() if run_dir.is_dir() else ()
        hydra_files_only = all(p.name == ".hydra" or p.suffix == ".log" for p in made)
        if not cfg.get("resume") and hydra_files_only:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_cfg


def resolve_target(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    logging.captureWarnings(True)  # warnings (e.g. a world-readable kaggle.json) as one line


if __name__ == "__main__":
    sys.exit(main())
