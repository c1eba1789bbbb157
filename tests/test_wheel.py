"""podium as an installed package: the wheel, in a fresh virtual environment holding only it and
its dependencies (the versions of requirements.lock, from uv's cache), run in an empty folder —
never in this clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DEMO, TINY_TRAIN, podium_env

from podium.packages import build_podium_wheel

UV = Path(sys.executable).parent / "uv"


def run(*args: str | Path, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv with only the podium wheel (and its dependencies)."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = build_podium_wheel(base / "dist")  # this clone's, as `podium export` builds it
    run(UV, "venv", "-q", base / "venv", "--python", sys.executable, cwd=base)
    python = base / "venv" / "bin" / "python"
    run(UV, "pip", "install", "-q", "-p", python, wheel, "-c", ROOT / "requirements.lock", cwd=base)
    return base / "venv" / "bin"


@pytest.mark.slow
def test_the_wheel_works_in_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    env = podium_env() | {"PATH": f"{installed}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PODIUM_ROOT", None)
    folder = tmp_path / "my-kaggle"
    folder.mkdir()

    def podium(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        if check:
            return run("podium", *args, cwd=folder, env=env)
        return subprocess.run(
            ["podium", *args], cwd=folder, env=env, capture_output=True, text=True
        )

    code = "import podium; print(podium.__file__)"
    where = run(installed / "python", "-c", code, cwd=folder, env=env)
    assert str(ROOT) not in where.stdout  # the installed copy, not this clone

    outside = podium("download", "competition=demo_shapes", check=False)
    assert outside.returncode == 1 and "podium init" in outside.stderr
    assert "Traceback" not in outside.stderr

    podium("init")
    assert (folder / ".podium").is_file() and (folder / "competitions").is_dir()
    podium("download", *TINY_DEMO[1:])
    assert (folder / "data" / "demo_shapes" / "train.csv").is_file()
    run_dir = folder / "runs" / "f0"
    podium("train", *TINY_DEMO, *TINY_TRAIN, f"hydra.run.dir={run_dir}")
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    podium("tune", *TINY_DEMO[1:], f"runs=[{run_dir}]", "hydra.run.dir=runs/tune")
    podium("predict", *TINY_DEMO[1:], f"runs=[{run_dir}]", "hydra.run.dir=runs/predict")
    submission = folder / "runs" / "predict" / "submission.csv"
    assert submission.read_text().startswith("id,rle_mask")
    podium("validate", *TINY_DEMO[1:], f"file={submission}")

    podium("new", "my-comp")
    assert (folder / "competitions" / "my-comp" / "adapter.py").is_file()
    site = installed.parent / "lib"
    assert not list(site.glob("python*/site-packages/podium/_builtin/competitions/my-comp"))
