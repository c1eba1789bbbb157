"""`podium demo`: the whole loop on the generated demo competition, with the same commands a
competitor types — download, train two folds, tune on their out-of-fold predictions, predict the
test set with flip TTA and the fold ensemble, validate and score the submission."""

from __future__ import annotations

import json
import time
from pathlib import Path

from podium import cli
from podium.config import compose_config
from podium.io import PodiumError

FOLDS = (0, 1)


def run(args: list[str]) -> int:
    """Extra overrides go to `train` (e.g. trainer.max_epochs=2); `paths.*` and `competition.*`
    overrides go to every step."""
    shared = [a for a in args if a.startswith(("paths.", "competition."))]
    cfg = compose_config("train", ["experiment=demo", *args])
    demo_dir = Path(cfg.paths.runs_dir) / "demo_shapes" / time.strftime("demo_%Y%m%d-%H%M%S")
    t_start = time.time()

    def step(*command: str) -> None:
        print(f"\n$ podium {' '.join(command)}", flush=True)
        code = cli.main(list(command))
        if code:
            raise PodiumError(f"demo stopped: `podium {command[0]}` exited {code}")

    step("download", "competition=demo_shapes", *shared)
    fold_dirs = [demo_dir / f"fold{fold}" for fold in FOLDS]
    for fold, fold_dir in zip(FOLDS, fold_dirs, strict=True):
        step("train", "experiment=demo", f"fold={fold}", *args, f"hydra.run.dir={fold_dir}")
    runs = f"runs=[{','.join(str(d) for d in fold_dirs)}]"
    step("tune", "competition=demo_shapes", runs, *shared, f"hydra.run.dir={demo_dir / 'tune'}")
    step(
        "predict", "competition=demo_shapes", runs, "tta=flip", f"tuned={demo_dir / 'tune'}",
        *shared, f"hydra.run.dir={demo_dir / 'predict'}",
    )  # fmt: skip
    submission = demo_dir / "predict" / "submission.csv"
    step("validate", "competition=demo_shapes", f"file={submission}", *shared)
    step("score", "competition=demo_shapes", f"file={submission}", *shared)

    scores = [json.loads((d / "summary.json").read_text())["best_score"] for d in fold_dirs]
    print(f"\ndemo finished in {time.time() - t_start:.0f} s, runs in {demo_dir}")
    for fold, score in zip(FOLDS, scores, strict=True):
        print(f"  fold {fold}: validation dice {score:.4f}")
    print(f"  mean validation dice {sum(scores) / len(scores):.4f}")
    print(f"  submission: {submission}")
    return 0
