"""The Python packages of a code-competition bundle: which wheels a Kaggle kernel needs, offline.

A Kaggle notebook runs in Kaggle's Python image, which already holds torch and most of the
scientific stack. The bundle ships podium's own wheel and the wheels of every package podium
needs that the image lacks: podium's dependency closure (its requirements, theirs, and so on,
extras followed, environment markers evaluated for this interpreter), less every package the
image's packages pull in. Versions are requirements.lock's pins (a clone; an installed podium has
no lock, and uses the versions installed here), so the kernel runs the versions podium was
tested with. The wheels come from the package index through `pip wheel --no-deps` (which also
builds the few packages published only as source, such as antlr4-python3-runtime, into wheels
that install offline); podium's own wheel from `uv build --wheel`.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig

from podium.io import PodiumError
from podium.workspace import builtin_root

__all__ = [
    "PackagePlan",
    "canonical",
    "dependency_closure",
    "locked_versions",
    "plan_packages",
    "check_target",
    "uv_executable",
    "build_podium_wheel",
    "download_wheels",
]

LOCK_FILE = "requirements.lock"


def canonical(name: str) -> str:
    """A distribution name as package indexes compare them (PEP 503): lower case, runs of
    '-', '_' and '.' as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class PackagePlan:
    """What the kernel takes from where: `bundle` is shipped as wheels, `image` is expected in
    Kaggle's image (the part of podium's closure it covers; the dry run installs exactly it).
    Both map canonical names to versions."""

    bundle: dict[str, str]
    image: dict[str, str]


def locked_versions() -> dict[str, str]:
    """Canonical name -> version: requirements.lock's pins in a clone, else what is installed."""
    lock = builtin_root() / LOCK_FILE
    if lock.is_file():
        pins = {}
        for line in lock.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line.strip())
            if match:
                pins[canonical(match.group(1))] = match.group(2)
        return pins
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def _requirements(name: str, extras: Iterable[str]) -> list:
    """The requirements of installed distribution `name` (with `extras`) that apply here."""
    from packaging.requirements import Requirement

    wanted = [{"extra": extra} for extra in ("", *extras)]
    found = []
    for text in metadata.requires(name) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate(env) for env in wanted):
            found.append(requirement)
    return found


def dependency_closure(roots: Iterable[str]) -> set[str]:
    """Canonical names of the installed distributions `roots` need, the roots included.
    A root that is not installed here is skipped (its own needs are then unknown)."""
    seen: dict[str, set[str]] = {}
    pending = [(root, frozenset()) for root in roots]
    while pending:
        name, extras = pending.pop()
        key = canonical(name)
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        for requirement in _requirements(name, extras):
            pending.append((requirement.name, frozenset(requirement.extras)))
    return set(seen)


def plan_packages(image_packages: Sequence[str]) -> PackagePlan:
    """Split podium's dependency closure into what the bundle ships and what the image has."""
    needed = dependency_closure(["podium"]) - {"podium"}
    if not needed:
        raise PodiumError("podium's dependencies are unknown here: install podium (make install)")
    provided = dependency_closure(image_packages)
    versions = locked_versions()
    missing = sorted(name for name in needed if name not in versions)
    if missing:
        raise PodiumError(
            f"{builtin_root() / LOCK_FILE}: no pin for {', '.join(missing)} (run make lock)"
        )
    return PackagePlan(
        bundle={name: versions[name] for name in sorted(needed - provided)},
        image={name: versions[name] for name in sorted(needed & provided)},
    )


def check_target(image: DictConfig) -> None:
    """Wheels are built for this interpreter and platform: they must be the image's."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if str(image.python) != here:
        raise PodiumError(
            f"image.python={image.python}, but this is Python {here}: the bundle's compiled "
            "wheels would not install in the kernel; export from a Python "
            f"{image.python} environment (or set image.python if the image has changed)"
        )
    platform = sysconfig.get_platform()
    if str(image.platform) != platform:
        raise PodiumError(
            f"image.platform={image.platform}, but this machine is {platform}: export on a "
            f"{image.platform} machine"
        )


def uv_executable() -> Path:
    """uv next to this Python (make install puts it there), else on PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = beside if beside.is_file() else shutil.which("uv")
    if not found:
        raise PodiumError("uv not found (next to this Python or on PATH): pip install uv")
    return Path(found)


def build_podium_wheel(out: Path, given: str | None = None) -> Path:
    """podium's wheel in `out`: `given` (a .whl file), else built from this source tree."""
    out.mkdir(parents=True, exist_ok=True)
    if given:
        wheel = Path(given).expanduser()
        if not (wheel.is_file() and wheel.name.startswith("podium-") and wheel.suffix == ".whl"):
            raise PodiumError(f"podium_wheel={given}: not a podium-*.whl file")
        return Path(shutil.copy2(wheel, out / wheel.name))
    source = builtin_root()
    if not (source / "pyproject.toml").is_file():
        raise PodiumError(
            "podium runs from an installed wheel here, with no source to build one from: pass "
            "podium_wheel=PATH (make wheel in a clone builds it)"
        )
    # setuptools builds in the tree's build/ folder and removes its parts when done: one build
    # at a time, or two exports (or test workers) at once delete each other's files.
    (source / "build").mkdir(exist_ok=True)
    with (
        open(source / "build" / ".podium-wheel.lock", "w") as lock,
        tempfile.TemporaryDirectory(prefix="podium-wheel-") as built,
    ):
        fcntl.flock(lock, fcntl.LOCK_EX)
        _run([uv_executable(), "build", "--wheel", "-q", "-o", built, source], "uv build")
        wheels = list(Path(built).glob("podium-*.whl"))
        if len(wheels) != 1:
            raise PodiumError(f"uv build made {len(wheels)} podium wheels, expected one")
        return Path(shutil.move(str(wheels[0]), out / wheels[0].name))


def download_wheels(pins: dict[str, str], out: Path) -> list[Path]:
    """One wheel per pinned package in `out`, from the package index (sources built)."""
    if not pins:
        return []
    before = set(out.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
    command += ["--disable-pip-version-check", "-w", out]
    _run(command + [f"{name}=={version}" for name, version in pins.items()], "pip wheel")
    wheels = sorted(set(out.glob("*.whl")) - before)
    got = {canonical(w.name.split("-")[0]) for w in wheels}
    missing = sorted(set(pins) - got)
    if missing:
        raise PodiumError(f"pip wheel made no wheel for {', '.join(missing)}")
    return wheels


def _run(command: list, what: str) -> None:
    try:
        proc = subprocess.run(
            [str(c) for c in command], capture_output=True, text=True, timeout=1800
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PodiumError(f"{what} failed: {e}") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise PodiumError(f"{what} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
