"""Where podium's files are: the built-in configs and competitions, and the user's workspace.

podium works from a clone and from an installed wheel. Its built-in `configs/` and `competitions/`
are the clone's top-level folders, or `podium/_builtin/` inside the wheel (setup.py copies them
there). The *workspace* holds the user's own files: `competitions/` (their adapters),
`configs/` (extra or replacement config files), `data/`, `runs/`, `writeup/`. It is found like
git finds a repository: `$PODIUM_ROOT`, else the first folder from the current directory upward
holding a `.podium` file (`podium init` makes one), else — in a clone only — the clone itself.
A workspace's competition or config file shadows the built-in one of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path

from podium.io import PodiumError

__all__ = [
    "MARKER",
    "NotAWorkspace",
    "builtin_competitions",
    "builtin_configs",
    "builtin_root",
    "find_workspace",
    "init_workspace",
    "workspace_root",
]

MARKER = ".podium"

_GITIGNORE = """\
# podium: data, runs and outputs stay out of git
data/
runs/
debug_runs/
writeup/
/doctor/
outputs/
multirun/
weights/
*.pt
*.pth
*.safetensors
*.npz
"""

_CONFIGS_README = """\
# Your configs

Files here are added to podium's built-in configs, and replace a built-in file of the same path:
`configs/model/my_unet.yaml` gives `podium train model=my_unet`, and `configs/experiment/x.yaml`
gives `podium train experiment=x`. The built-in configs are in {builtin}.
"""


class NotAWorkspace(PodiumError):
    """No workspace here or above, and podium does not run from a clone."""


def builtin_root() -> Path:
    """The folder holding the built-in `configs/` and `competitions/`."""
    package = Path(__file__).resolve().parent
    packaged = package / "_builtin"
    return packaged if (packaged / "configs").is_dir() else package.parents[1]


def builtin_configs() -> Path:
    return builtin_root() / "configs"


def builtin_competitions() -> Path:
    return builtin_root() / "competitions"


def find_workspace(start: Path | None = None) -> Path | None:
    """$PODIUM_ROOT, else the nearest folder from `start` (the current directory) upward that
    holds a `.podium` file; None when there is none."""
    env = os.environ.get("PODIUM_ROOT")
    if env:
        root = Path(env).expanduser().resolve()
        if not root.is_dir():
            raise NotAWorkspace(f"PODIUM_ROOT={env}: no such folder")
        return root
    here = (start or Path.cwd()).resolve()
    return next((f for f in (here, *here.parents) if (f / MARKER).is_file()), None)


def workspace_root() -> Path:
    """The workspace podium works in (see the module docstring)."""
    found = find_workspace()
    if found is not None:
        return found
    clone = builtin_root()
    if (clone / MARKER).is_file():  # a source checkout is a workspace of its own
        return clone
    raise NotAWorkspace(
        f"no podium workspace in {Path.cwd()} or above: run `podium init` here (or cd into "
        "one, or set PODIUM_ROOT)"
    )


def init_workspace(folder: Path) -> list[Path]:
    """Make `folder` a workspace: the marker, `competitions/`, `configs/` (with a README) and a
    .gitignore for data and runs. Returns what it created; refuses an existing workspace."""
    folder = folder.resolve()
    if (folder / MARKER).is_file():
        raise PodiumError(f"{folder} is already a podium workspace ({MARKER} is there)")
    created = []
    for path, text in (
        (folder / MARKER, "podium workspace (found from here like git finds .git)\n"),
        (folder / "configs" / "README.md", _CONFIGS_README.format(builtin=builtin_configs())),
        (folder / ".gitignore", _GITIGNORE),
    ):
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        created.append(path)
    (folder / "competitions").mkdir(exist_ok=True)
    return created
