"""README's "The loop on a real competition" block, run as written by bash against the fake
Kaggle serving TGS Salt in its real nested shape (tests/kaggle_layouts.py).

The block runs unchanged; a shell function named `podium` stands in front of the real command
and only (1) points data, runs and write-ups into a temp workspace (`paths.root_dir`), (2) makes
training tiny (the last override of a key wins in Hydra, so the README's own values are
overridden, not edited) and narrows the 5 folds x 2 seeds sweep to 2 x 2, and (3) polls the fake
every 0.1 s instead of 5 s while waiting for the score.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kaggle_layouts
import pytest
from conftest import ROOT, TINY_TRAIN, podium_env
from kaggle_fake import FakeCompetition, FakeKaggle

SLUG = "tgs-salt-identification-challenge"
KEY = "podium-readme-secret-key-31c9"

WRAPPER = r"""
set -euo pipefail
podium() {
  local command=$1; shift
  local extra=("paths.root_dir=$PWD")
  case $command in
    train)
      extra+=(TINY_OVERRIDES)
      set -- "${@/#fold=0,1,2,3,4/fold=0,1}"
      ;;
    submit) extra+=(poll_interval=0.1) ;;
  esac
  echo "+ podium $command $*" >&2
  command podium "$command" "$@" "${extra[@]}"
}
"""


def readme_loop() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The loop on a real competition", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_loop_runs_as_written(kaggle_home, monkeypatch, tmp_path: Path) -> None:
    block = readme_loop()
    assert block.startswith(f"C={SLUG}\n") and "podium writeup" in block
    fake = FakeKaggle(key=KEY, max_lifetime_s=900)  # alive as long as the script may run
    train_ids = [f"{n:010x}" for n in range(15)]
    test_ids = [f"{n:010x}" for n in range(100, 104)]
    files = kaggle_layouts.tgs_salt(train_ids, test_ids)
    fake.add_competition(FakeCompetition(SLUG, "TGS Salt", files))
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    tiny = [*TINY_TRAIN, "model.encoder_weights=null", "trainer.limit_train_batches=2"]
    script = WRAPPER.replace("TINY_OVERRIDES", " ".join(f"'{o}'" for o in tiny)) + block
    env = podium_env() | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "tests" / "kaggle_sitecustomize"),
        "KAGGLE_USERNAME": fake.username,
        "KAGGLE_KEY": KEY,
    }
    with fake:
        env["PODIUM_FAKE_KAGGLE_URL"] = fake.url
        proc = subprocess.run(
            ["bash", "-c", script], cwd=workspace, env=env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]

    assert f"{SLUG}: 15 train images (5 empty masks), 4 test images, ready" in proc.stdout
    runs = workspace / "runs" / SLUG
    sweep = sorted(p.name for p in runs.glob("sweep_*/*") if (p / "config.yaml").is_file())
    assert [name.split("_", 1)[1] for name in sweep] == ["f0_s0", "f0_s1", "f1_s0", "f1_s1"]
    submission = runs / "final" / "submission.csv"
    assert submission.read_text().splitlines()[0] == "id,rle_mask"
    assert len(submission.read_text().splitlines()) == 1 + len(test_ids)
    assert "public score 0.75" in proc.stdout  # submitted, waited for, scored
    assert (workspace / "writeup" / f"{SLUG}.md").is_file()
    assert KEY not in output
