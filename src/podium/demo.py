"""`podium demo`: the whole loop on the generated demo competition, with the same commands a
competitor types — download, train two folds, tune on their out-of-fold predictions, predict the
test set with flip TTA and the fold ensemble, validate and score the submission.

This module only plans: `plan` returns the commands; the CLI runs them one by one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from podium import rundir
from podium.config import compose_config

__all__ = ["DemoPlan", "plan", "summary"]

FOLDS = (0, 1)


@dataclass(frozen=True)
class DemoPlan:
    steps: list[list[str]]  # podium command lines, in order
    fold_dirs: list[Path]  # the training runs
    submission: Path
    demo_dir: Path


def plan(args: list[str]) -> DemoPlan:
    """The demo's commands. Extra overrides go to `train` (e.g. trainer.max_epochs=2); `paths.*`
    and `competition.*` overrides go to every step."""
    shared = [a for a in args if a.startswith(("paths.", "competition."))]
    cfg = compose_config("train", ["experiment=demo", *args])
    demo_dir = Path(cfg.paths.runs_dir) / "demo_shapes" / time.strftime("demo_%Y%m%d-%H%M%S")
    fold_dirs = [demo_dir / f"fold{fold}" for fold in FOLDS]
    runs = f"runs=[{','.join(str(d) for d in fold_dirs)}]"
    tune_dir, predict_dir = demo_dir / "tune", demo_dir / "predict"
    submission = predict_dir / "submission.csv"
    on_demo = ["competition=demo_shapes", *shared]
    steps = [["download", *on_demo]]
    steps += [
        ["train", "experiment=demo", f"fold={fold}", *args, f"hydra.run.dir={fold_dir}"]
        for fold, fold_dir in zip(FOLDS, fold_dirs, strict=True)
    ]
    steps += [
        ["tune", *on_demo, runs, f"hydra.run.dir={tune_dir}"],
        [
            "predict",
            *on_demo,
            runs,
            "tta=flip",
            f"tuned={tune_dir}",
            f"hydra.run.dir={predict_dir}",
        ],
        ["validate", *on_demo, f"file={submission}"],
        ["score", *on_demo, f"file={submission}"],
    ]
    return DemoPlan(steps, fold_dirs, submission, demo_dir)


def summary(demo: DemoPlan, seconds: float) -> str:
    """What the demo did: its time, each fold's validation Dice, where the submission is."""
    scores = [rundir.read_summary(d)["best_score"] for d in demo.fold_dirs]
    lines = [f"demo finished in {seconds:.0f} s, runs in {demo.demo_dir}"]
    for fold, score in zip(FOLDS, scores, strict=True):
        lines.append(f"  fold {fold}: validation dice {score:.4f}")
    lines += [f"  mean validation dice {sum(scores) / len(scores):.4f}"]
    lines += [f"  submission: {demo.submission}"]
    return "\n".join(lines)
