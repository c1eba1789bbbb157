"""Ships the built-in configs/ and competitions/ inside the wheel, as podium/_builtin/.

Everything else about the package is in pyproject.toml. In a clone (and an editable install)
podium reads the top-level folders directly; podium.workspace.builtin_root finds either.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUILTIN = ("configs", "competitions")


class BuildPyWithBuiltins(build_py):
    def run(self) -> None:
        super().run()
        for name in BUILTIN:
            target = Path(self.build_lib) / "podium" / "_builtin" / name
            shutil.rmtree(target, ignore_errors=True)
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
            shutil.copytree(Path(__file__).parent / name, target, ignore=ignore)


setup(cmdclass={"build_py": BuildPyWithBuiltins})
