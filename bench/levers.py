"""levers: what the levers pulled after the baseline are worth on real TGS Salt, each arm seeing
the same number of training images, several seeds each, scored on a held-back fold's labels.

Data: ../shared/data/tgs_salt (3200 labelled 101x101 images; skipped with a message when
absent), linked into a temp dir in the Kaggle layout (nothing is written to ../shared). podium's
own folds of the 3200 (5 folds, folds_seed 42) hold fold 4 back: its 640 images become this
benchmark's "test set" (listed in sample_submission.csv; their labels sit in a solution file
that only the scoring reads), and the other 2560 are the dev part, whose fold 0 validates.

Arms (`ARMS`: a list of (name, overrides); `{pseudo}` stands for the pseudo-label set made from
the same seed's baseline run):
  baseline            podium train on the dev part
  + empty head        `model.aux_head=empty`: an image-level "anything here?" head trained
                      jointly; its gate on predicted masks chosen on the run's fold-0 OOF
  + pseudo round 1    the baseline run (the teacher) labels the held-back images with flip TTA,
                      labels unused (`podium pseudo`, rule `PSEUDO_RULE`); the student trains
                      as the baseline with `pseudo={pseudo}`: the same steps and batch size, so
                      the same images seen, a quarter of each batch pseudo-labelled
Every arm's run is tuned (`FIXED_POSTPROCESSING`: only an empty head's gate is free), then
predicts the held-back images (`podium predict`, flip TTA, threshold 0.5), and the submission is
scored against their labels with the competition's metric (podium.submission). Reported: mean ±
std over seeds per arm, and each arm's mean minus the baseline's. Unet-MobileNetV2 with the
ImageNet weights of ../shared/weights (the local-weights option), batch 16, early stopping off,
one validation at the end (the checkpoint is the last).
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

import _common as bench

from podium.competition import load_competition
from podium.config import compose_config
from podium.data import load_or_make_folds
from podium.submission import score_submission

COMPETITION = "tgs-salt-identification-challenge"
HELD_BACK_FOLD = 4
WEIGHTS = bench.SHARED_WEIGHTS / "mobilenet_v2" / "mobilenet_v2.torchvision_features.safetensors"
# (name, training overrides)
ARMS: list[tuple[str, list[str]]] = [
    ("baseline", []),
    ("+ empty head", ["model.aux_head=empty"]),
    ("+ pseudo round 1", ["pseudo={pseudo}", "pseudo_ratio=0.25", "pseudo_weight=1.0"]),
]
# Every run is tuned on its own fold-0 OOF with the mask post-processing held fixed (threshold
# 0.5, no min area): only the empty head's gate is free, so for the other arms this is exactly
# "nothing tuned", and the empty-head arm gets what `podium tune` would choose for it.
FIXED_POSTPROCESSING = ["search.thresholds=[0.5]", "search.min_areas=[0]",
                        "search.empty_areas=[0]"]  # fmt: skip
PSEUDO_RULE = ["rule.mode=pixel", "rule.labels=hard", "rule.low=0.1", "rule.high=0.9",
               "rule.min_confident=0.8", "tta=flip"]  # fmt: skip


def link_split(source: Path, target: Path) -> tuple[list[str], Path]:
    """The Kaggle layout with the held-back fold as the test set: (held-back ids, the solution
    file holding their labels). train.csv lists the dev part only."""
    with open(source / "original" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    every = target / "every"  # podium's folds of all the labelled images
    (every / "train").mkdir(parents=True)
    os.symlink(source / "images", every / "train" / "images")
    for name in ("train.csv", "depths.csv", "sample_submission.csv"):
        os.symlink(source / "original" / name, every / name)
    cfg = compose_config("train", [f"competition={COMPETITION}", f"paths.data_dir={target}",
                                   f"competition.data_dir={every}"])  # fmt: skip
    competition = load_competition(cfg)
    samples = competition.train_samples()
    folds = load_or_make_folds(samples, every / "folds.csv", 5, int(cfg.competition.folds_seed))
    held = [r for r in rows if folds[r["id"]] == HELD_BACK_FOLD]
    dev = [r for r in rows if folds[r["id"]] != HELD_BACK_FOLD]
    data = target / "split"
    for folder in ("train", "test"):
        (data / folder).mkdir(parents=True)
        os.symlink(source / "images", data / folder / "images")
    os.symlink(source / "original" / "depths.csv", data / "depths.csv")
    write_rows(data / "train.csv", dev)
    write_rows(data / "sample_submission.csv", [{"id": r["id"], "rle_mask": ""} for r in held])
    solution = target / "held_back_solution.csv"
    write_rows(solution, held)
    return [r["id"] for r in held], solution


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "rle_mask"])
        writer.writeheader()
        writer.writerows({"id": r["id"], "rle_mask": r["rle_mask"]} for r in rows)


def held_back_score(common: list[str], run_dir: Path, solution: Path) -> float:
    """Tune the run's empty gate (the rest fixed), predict the held-back images with the run
    (flip TTA) and score them."""
    tuned = run_dir.with_name(run_dir.name + "_tune")
    bench.podium_command(["tune", *common, f"runs=[{run_dir}]", *FIXED_POSTPROCESSING,
                          "progress=false", f"hydra.run.dir={tuned}"])  # fmt: skip
    out = run_dir.with_name(run_dir.name + "_predict")
    bench.podium_command(["predict", *common, f"runs=[{run_dir}]", "tta=flip", f"tuned={tuned}",
                          "progress=false", f"hydra.run.dir={out}"])  # fmt: skip
    competition = load_competition(compose_config("predict", common))
    return float(score_submission(competition, out / "submission.csv", solution))


def main() -> None:
    def options(parser):
        parser.add_argument("--seeds", type=int, help="seeds per arm (default 3; tiny 1)")
        parser.add_argument("--images", type=int, help="images seen per run")
        parser.add_argument("--data-root", type=Path, default=bench.SHARED_DATA)
        parser.add_argument("--weights", type=Path, default=WEIGHTS)

    args = bench.parse_args(__doc__.splitlines()[0], options)
    source = args.data_root / "tgs_salt"
    if not source.is_dir():
        print(f"levers skipped: no real TGS data ({source}) on this machine")
        return
    seeds = args.seeds or bench.size(args, 3, 2, 1)
    target = args.images or bench.size(args, 3072, 512, 16)
    batch = bench.size(args, 16, 16, 4)
    epochs = bench.size(args, 4, 2, 1)
    limit = max(1, target // (batch * epochs))
    with bench.temp_dir("levers") as tmp:
        held, solution = link_split(source, tmp / "data")
        common = [f"competition={COMPETITION}", f"paths.data_dir={tmp / 'data'}",
                  f"competition.data_dir={tmp / 'data' / 'split'}",
                  f"paths.runs_dir={tmp / 'runs'}"]  # fmt: skip
        train = [
            *common, "model=unet_mobilenet", "fold=0", f"trainer.batch_size={batch}",
            f"trainer.max_epochs={epochs}", f"trainer.limit_train_batches={limit}",
            f"trainer.val_every={epochs}", "trainer.early_stopping=null", "trainer.progress=false",
            "experiment_name=bench_levers",
        ]  # fmt: skip
        if args.weights.is_file():
            train.append(f"model.encoder_weights={args.weights}")
        else:
            print(f"levers: {args.weights} not found, encoders start from random weights")
            train.append("model.encoder_weights=null")
        if args.tiny:
            train += ["model.kwargs={decoder_channels:[32,16,16,8,8]}", "trainer.num_workers=0"]
        scores: dict[str, list[float]] = {name: [] for name, _ in ARMS}
        rows = []
        for seed in range(seeds):
            teacher, pseudo_dir = None, tmp / f"pseudo_s{seed}"
            for name, overrides in ARMS:
                if any("{pseudo}" in o for o in overrides) and not pseudo_dir.is_dir():
                    bench.podium_command(
                        [
                            "pseudo",
                            *common,
                            f"runs=[{teacher}]",
                            f"out={pseudo_dir}",
                            "progress=false",
                            *PSEUDO_RULE,
                            # --tiny's teacher is barely trained: keep every image.
                            *(["rule.min_confident=0"] if args.tiny else []),
                        ]
                    )
                arm = [o.replace("{pseudo}", str(pseudo_dir)) for o in overrides]
                run_dir = tmp / "runs" / f"{name.strip('+ ').replace(' ', '_')}_s{seed}"
                bench.podium_command(["train", *train, *arm, f"seed={seed}",
                                      f"hydra.run.dir={run_dir}"])  # fmt: skip
                teacher = teacher or run_dir  # the first arm (baseline) teaches
                summary = json.loads((run_dir / "summary.json").read_text())
                score = held_back_score(common, run_dir, solution)
                scores[name].append(score)
                kept = ""
                if summary.get("pseudo"):
                    kept = f"{summary['pseudo']['kept']}/{summary['pseudo']['total']}"
                rows.append(
                    [
                        name,
                        seed,
                        score,
                        summary["best_score"],
                        summary["images_seen"],
                        kept,
                        summary["train_images_per_s"],
                        f"{summary['duration_s']:.0f}",
                    ]
                )
                print(f"levers seed {seed} {name}: held-back {summary['metric']} {score:.4f}")
    base = statistics.fmean(scores[ARMS[0][0]])

    def spread(values: list[float]) -> str:
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{statistics.fmean(values):.4f} ± {std:.4f}"

    summary_rows = [[name, len(v), spread(v), f"{statistics.fmean(v) - base:+.4f}"]
                    for name, v in scores.items()]  # fmt: skip
    columns = ["arm", "seed", "held-back score", "fold-0 val score", "images seen",
               "pseudo kept", "train img/s", "run s"]  # fmt: skip
    body = "\n".join(
        [
            f"TGS Salt: {len(held)} held-back images (fold {HELD_BACK_FOLD} of podium's 5 folds of "
            f"the labelled data) as the test set, the dev part's fold 0 validating. "
            f"Unet-MobileNetV2 (ImageNet weights), batch {batch}, {epochs} epochs of {limit} "
            f"steps ({epochs * limit * batch} images seen per run), seeds 0..{seeds - 1}. Pseudo "
            f"rule: {' '.join(PSEUDO_RULE)}; the teacher is the same seed's baseline run. Score: "
            "the competition metric (mean precision over IoU thresholds) of `podium predict` "
            "(flip TTA, threshold 0.5, no min area; the empty head's gate tuned on the run's "
            "fold-0 OOF) on the held-back images' labels.",
            "",
            bench.table(
                ["arm", "seeds", "held-back score mean ± std", "Δ mean vs baseline"], summary_rows
            ),  # fmt: skip
            "",
            bench.table(columns, rows),
        ]
    )
    gains = ", ".join(f"{name} {statistics.fmean(scores[name]) - base:+.4f}"
                      for name, _ in ARMS[1:])  # fmt: skip
    headline = f"levers: {gains} held-back score vs baseline ({seeds} seeds)"
    bench.record(args, "levers", headline, body, args.device)


if __name__ == "__main__":
    main()
