"""The Kaggle kernel of a podium bundle: `podium export` writes this file, with SETTINGS filled in,
as the bundle's kernel/infer.py.

On Kaggle, offline, it
1. installs podium from the bundle dataset's wheels (`pip install --no-index --find-links`),
2. makes /kaggle/working/ws a podium workspace holding the bundled competition adapter,
3. runs `podium predict` on /kaggle/input/<competition slug> with the bundled runs and tuning,
4. copies the result to /kaggle/working/submission.csv.

Only the standard library here: podium is not installed until this script installs it. The one
thing `podium dryrun` changes is the environment variable PODIUM_KAGGLE_ROOT (default /kaggle),
which moves input/ and working/ into a local folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SETTINGS: dict = {}  # podium export writes the bundle's settings here

ROOT_VARIABLE = "PODIUM_KAGGLE_ROOT"


class KernelFailed(RuntimeError):
    """A step of the kernel failed: an exception, so that Kaggle marks the run as failed."""


def find_input(root: Path, name: str, what: str) -> Path:
    """<root>/input/<name>, or a folder of that name up to three levels deeper (Kaggle has
    moved where attached sources are mounted before)."""
    direct = root / "input" / name
    if direct.is_dir():
        return direct
    for pattern in (f"*/{name}", f"*/*/{name}", f"*/*/*/{name}"):
        found = sorted(p for p in (root / "input").glob(pattern) if p.is_dir())
        if found:
            return found[0]
    raise KernelFailed(f"{direct}: not found; attach {what} to the notebook")


def install_podium(wheels: Path) -> None:
    """podium and the packages the image lacks, from the bundle's wheels only."""
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels)]
    command += ["--no-cache-dir", "--disable-pip-version-check", "--no-warn-script-location"]
    command += ["-q", f"podium=={SETTINGS['podium_version']}"]
    run(command, "installing podium from the bundle's wheels")


def make_workspace(workspace: Path, bundle: Path) -> Path | None:
    """A podium workspace under working/ holding the bundled competition (it shadows podium's
    built-in one of that name); the tuning, with the runs where this kernel sees them.
    Returns the tuned.json to predict with (None: the bundle has none)."""
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / ".podium").write_text("podium workspace of a Kaggle kernel\n")
    shutil.copytree(bundle / "competitions", workspace / "competitions", dirs_exist_ok=True)
    if not (bundle / "tuned.json").is_file():
        return None
    tuned = json.loads((bundle / "tuned.json").read_text())
    tuned["runs"] = [str((bundle / run).resolve()) for run in SETTINGS["runs"]]
    path = workspace / "tuned.json"
    path.write_text(json.dumps(tuned, indent=2) + "\n")
    return path


def quoted(value: str) -> str:
    """A string as a Hydra override value (quoted: paths may hold any character)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def predict_command(bundle: Path, data: Path, tuned: Path | None, out: Path) -> list[str]:
    runs = ",".join(quoted(str((bundle / run).resolve())) for run in SETTINGS["runs"])
    weights = ",".join(repr(float(w)) for w in SETTINGS["run_weights"])
    return [
        sys.executable, "-m", "podium.cli", "predict",
        f"competition={SETTINGS['competition']}",
        f"competition.data_dir={quoted(str(data))}",
        f"runs=[{runs}]",
        f"run_weights=[{weights}]",
        f"tuned={quoted(str(tuned)) if tuned else 'null'}",
        f"hydra.run.dir={quoted(str(out))}",
        *SETTINGS["predict_overrides"],
    ]  # fmt: skip


def run(command: list[str], what: str, env: dict | None = None) -> None:
    print(f"podium kernel: {what}", flush=True)
    code = subprocess.call(command, env=env)
    if code != 0:
        raise KernelFailed(f"{what}: exit code {code} (its output is above)")


def main() -> None:
    # Before anything imports them: albumentations 2.0.8 asks the package index for a newer
    # version on import, and the hub must never be tried for weights (the runs carry theirs).
    os.environ.update(NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    root = Path(os.environ.get(ROOT_VARIABLE, "/kaggle"))
    started = time.time()
    bundle = find_input(root, SETTINGS["dataset_slug"], f"the dataset {SETTINGS['dataset']}")
    data = find_input(root, SETTINGS["kaggle_slug"], f"the competition {SETTINGS['kaggle_slug']}")
    working = root / "working"
    install_podium(bundle / "wheels")
    installed = time.time()
    workspace = working / "ws"
    tuned = make_workspace(workspace, bundle)
    # Everything podium writes (runs, caches) goes under working/: input/ is read-only.
    caches = workspace / ".cache"
    env = dict(os.environ, PODIUM_ROOT=str(workspace), XDG_CACHE_HOME=str(caches))
    env.update(MPLCONFIGDIR=str(caches / "matplotlib"), HF_HOME=str(caches / "huggingface"))
    out = working / "podium-predict"
    run(predict_command(bundle, data, tuned, out), "podium predict", env)
    partial = working / ".submission.csv.partial"
    shutil.copyfile(out / "submission.csv", partial)
    os.replace(partial, working / "submission.csv")
    finished = time.time()
    print(
        f"podium kernel: wrote {working / 'submission.csv'} (install {installed - started:.1f} s,"
        f" predict {finished - installed:.1f} s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
