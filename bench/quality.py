"""quality: what a pretrained encoder is worth on real data at a fixed amount of training,
measured through `podium train` (the CLI's entry point, called in this process as `podium demo`
calls its steps).

Datasets (skipped with a message when absent):
  tgs_salt    TGS Salt (../shared/data/tgs_salt, 3200 labelled 101x101 images, padded to 128
              inside the model), `competition=tgs-salt-identification-challenge`, its metric
              (mean precision over IoU thresholds), fold 0 of 5.
  kvasir_seg  Kvasir-SEG polyps (../shared/data/kvasir_seg, 664 images), `competition=image-folder`
              resized to 128x128, mean IoU, fold 0 of 5.
Each is trained twice with the same config, seed and number of images seen: the encoder
randomly initialised, and with the ImageNet weights of ../shared/weights loaded through podium's
local-weights option (`model.encoder_weights=PATH`). Early stopping is off so both runs do
exactly the same work. The folders are linked into a temp dir (the adapters write folds.csv
next to the data); nothing is written to ../shared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import _common as bench

from podium.competition import load_competition
from podium.config import compose_config
from podium.data import load_or_make_folds, split_samples

ENCODERS = {  # name -> (overrides, weights file)
    "mobilenet_v2": (
        ["model=unet_mobilenet"],
        bench.SHARED_WEIGHTS / "mobilenet_v2" / "mobilenet_v2.torchvision_features.safetensors",
    ),
    "efficientnet_lite0": (
        ["model=unet", "model.encoder=tu-tf_efficientnet_lite0", "model.mean=[0.5,0.5,0.5]",
         "model.std=[0.5,0.5,0.5]"],  # its timm normalisation (see its README)
        bench.SHARED_WEIGHTS / "efficientnet_lite0" / "tf_efficientnet_lite0.timm.safetensors",
    ),
}  # fmt: skip


def link_tgs(source: Path, target: Path) -> None:
    """The Kaggle layout the TGS adapter reads, as links to the shared copy."""
    (target / "train").mkdir(parents=True)
    for name in ("train.csv", "depths.csv", "sample_submission.csv"):
        os.symlink(source / "original" / name, target / name)
    os.symlink(source / "images", target / "train" / "images")


def link_folder(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for name in ("images", "masks"):
        os.symlink(source / name, target / name)


DATASETS = {  # name -> (folder under the data root, podium overrides, link function)
    "tgs_salt": ("tgs_salt", ["competition=tgs-salt-identification-challenge"], link_tgs),
    "kvasir_seg": (
        "kvasir_seg",
        ["competition=image-folder", "competition.image_size=[128,128]"],
        link_folder,
    ),
}


def train_images(overrides: list[str]) -> int:
    """Training images of fold 0 (podium's own folds, written now into the temp data dir so
    the runs reuse them)."""
    cfg = compose_config("train", overrides)
    competition = load_competition(cfg)
    samples = competition.train_samples()
    folds = load_or_make_folds(
        samples, competition.data_dir / "folds.csv", int(cfg.competition.n_folds),
        int(cfg.competition.folds_seed),
    )  # fmt: skip
    return len(split_samples(samples, folds, 0)[0])


def podium_train(overrides: list[str], run_dir: Path) -> dict:
    """`podium train` through the CLI's entry point, in this process; its summary.json."""
    bench.podium_command(["train", *overrides, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    def options(parser):
        parser.add_argument("--encoder", choices=sorted(ENCODERS), default="mobilenet_v2")
        parser.add_argument("--datasets", default="tgs_salt,kvasir_seg")
        parser.add_argument("--images", type=int, help="images seen per run (overrides mode)")
        parser.add_argument("--data-root", type=Path, default=bench.SHARED_DATA)
        parser.add_argument("--weights", type=Path, help="encoder weights file (default: shared)")

    args = bench.parse_args(__doc__.splitlines()[0], options)
    encoder_overrides, default_weights = ENCODERS[args.encoder]
    weights = args.weights or default_weights
    # ~10 minutes of training per run on this 2-core machine (about 15 img/s) in the full mode.
    target = args.images or bench.size(args, 9000, 640, 4)
    batch = bench.size(args, 16, 16, 2)
    wanted = [d.strip() for d in args.datasets.split(",") if d.strip()]
    present = [d for d in wanted if (args.data_root / DATASETS[d][0]).is_dir()]
    for name in sorted(set(wanted) - set(present)):
        print(f"quality: {name} skipped ({args.data_root / DATASETS[name][0]} not found)")
    if not present:
        print("quality skipped: no real data (../shared/data) on this machine")
        return
    inits = {"random init": ["model.encoder_weights=null"]}
    if weights.is_file():
        inits["ImageNet"] = [f"model.encoder_weights={weights}"]
    else:
        print(f"quality: pretrained runs skipped ({weights} not found)")
    rows, ratios = [], {}
    with bench.temp_dir("quality") as tmp:
        for name in present:
            folder, dataset_overrides, link = DATASETS[name]
            data_dir = tmp / "data" / name
            link(args.data_root / folder, data_dir)
            common = [
                *dataset_overrides, f"competition.data_dir={data_dir}", *encoder_overrides,
                f"paths.data_dir={tmp / 'data'}", f"paths.runs_dir={tmp / 'runs'}", "fold=0",
                "seed=0", f"trainer.batch_size={batch}", "trainer.early_stopping=null",
                "trainer.progress=false",
            ]  # fmt: skip
            if args.tiny:
                common += ["model.kwargs={decoder_channels:[32,16,16,8,8]}",
                           "competition.n_folds=2", "trainer.num_workers=0"]  # fmt: skip
            steps_per_epoch = train_images(common) // batch
            # The target in whole epochs; below one epoch, one shortened epoch.
            steps = max(1, target // batch)
            epochs = max(1, round(steps / steps_per_epoch))
            limit = min(steps_per_epoch, steps)
            common += [f"trainer.max_epochs={epochs}", f"trainer.limit_train_batches={limit}",
                       f"experiment_name=bench_quality_{args.encoder}"]  # fmt: skip
            scores = {}
            for init, init_overrides in inits.items():
                run_dir = tmp / "runs" / f"{name}_{init.split()[0].lower()}"
                summary = podium_train([*common, *init_overrides], run_dir)
                scores[init] = summary["best_score"]
                rows.append([
                    name, summary["metric"], init, summary["best_score"],
                    f"{summary['best_epoch']}/{summary['epochs_run']}", summary["images_seen"],
                    summary["train_images_per_s"], f"{summary['duration_s']:.0f}",
                ])  # fmt: skip
                print(f"{name} {init}: {summary['metric']} {summary['best_score']:.4f}")
            if "ImageNet" in scores:
                ratios[name] = scores["ImageNet"] / max(scores["random init"], 1e-9)
    columns = ["dataset", "metric", "encoder init", "best val score", "best epoch / epochs",
               "images seen", "train img/s", "run s"]  # fmt: skip
    body = [
        f"Unet-{args.encoder}, batch {batch}, default config otherwise (AdamW 1e-3, cosine, EMA, "
        f"BCE+Dice, medium augmentation), fold 0, seed 0, early stopping off. Work is fixed, not "
        f"time: every run of a dataset sees the same images (target {target} per run, rounded "
        "to whole epochs, or one shortened epoch).",
        "",
        bench.table(columns, rows),
        "",
        "Pretrained / random-init score: "
        + (", ".join(f"{n} {r:.3f}" for n, r in ratios.items()) or "not measured (no weights)")
        + ".",
    ]
    headline = f"quality ratio {min(ratios.values()):.3f}" if ratios else "quality ratio nan"
    bench.record(args, "quality", headline, "\n".join(body), args.device)


if __name__ == "__main__":
    main()
