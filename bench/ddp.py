"""ddp: does `trainer.devices=2` train like one process with the same global batch and seed?

Each seed trains the demo (`experiment=demo` on generated demo_shapes data) twice through
`podium train`: one process with `trainer.batch_size=B`, and two DDP processes (gloo on CPU,
NCCL on CUDA) with `B/2` each, and two DDP processes with `trainer.sync_batchnorm=true`. Data
order, augmentation and the batch Dice are the same in all (each epoch's permutation is dealt to
the ranks; the Dice sums are all-reduced); what differs is BatchNorm, which normalises over the
per-process batch unless synced, and the order of float sums. A difference that DDP causes would
show as a gap larger than the spread between seeds; so the table gives both, and the headline is
the mean gap over seeds of the default (unsynced) 2-process run. A control run per seed repeats
the 1-process run with torch on 2 threads instead of 1: the same training but for the order of
float sums inside the kernels, which shows how far float noise alone moves a score.

The two 1-thread processes of the DDP run against one 1-thread process also give the speed-up of
two workers on this machine (images/s ratio); on a GPU machine run it with `--device cuda`.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path

import _common as bench
import torch


def podium_train(overrides: list[str], run_dir: Path, threads: int | None = None) -> dict:
    """`podium train` in this process (its workers, if any, are processes of their own); with
    `threads`, torch uses that many threads here for the run."""
    before = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        if threads:
            torch.set_num_threads(threads)
            stack.callback(torch.set_num_threads, before)
        bench.podium_command(["train", *overrides, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    def options(parser):
        parser.add_argument("--seeds", type=int, help="seeds to train (default by size)")
        parser.add_argument("--epochs", type=int, help="trainer.max_epochs (default 2)")

    args = bench.parse_args(__doc__.splitlines()[0], options)
    seeds = args.seeds or bench.size(args, 3, 2, 1)
    epochs = args.epochs or bench.size(args, 2, 2, 1)
    batch = bench.size(args, 8, 8, 4)  # the demo's batch: meaningful scores after 2 epochs
    with bench.temp_dir("ddp") as tmp:
        common = [
            "experiment=demo", f"paths.data_dir={tmp / 'data'}", f"paths.runs_dir={tmp / 'runs'}",
            "trainer.progress=false", f"trainer.max_epochs={epochs}", "experiment_name=bench_ddp",
        ]  # fmt: skip
        if args.tiny:
            common += [
                "competition.options.n_train=48", "competition.options.n_test=8",
                "competition.options.size=64", "competition.n_folds=4", "trainer.num_workers=0",
                "trainer.limit_train_batches=2", "model.kwargs={decoder_channels:[32,16,16,8,8]}",
            ]  # fmt: skip
        data_overrides = [o for o in common if o.startswith(("competition.", "paths."))]
        bench.podium_command(["download", "competition=demo_shapes", *data_overrides])
        one_process = ["trainer.devices=1", f"trainer.batch_size={batch}"]
        configs = {  # name -> (overrides, torch threads in this process)
            "1 process": (one_process, None),
            "2 processes": (["trainer.devices=2", f"trainer.batch_size={batch // 2}"], None),
            "2 processes, synced BN": (
                [
                    "trainer.devices=2",
                    f"trainer.batch_size={batch // 2}",
                    "trainer.sync_batchnorm=true",
                ],
                None,
            ),  # fmt: skip
            "1 process, 2 threads": (one_process, 2),
        }
        summaries: dict[str, list[dict]] = {name: [] for name in configs}
        for seed in range(seeds):
            # Rotate which goes first, so a drift in machine speed hits all alike.
            names = list(configs)
            for name in names[seed % len(names) :] + names[: seed % len(names)]:
                overrides, threads = configs[name]
                run_dir = tmp / "runs" / f"s{seed}_{names.index(name)}"
                summary = podium_train([*common, *overrides, f"seed={seed}"], run_dir, threads)
                if summary["global_batch"] != batch:
                    raise SystemExit(f"{name}: global batch {summary['global_batch']} != {batch}")
                summaries[name].append(summary)
    one, two = summaries["1 process"], summaries["2 processes"]
    synced, control = summaries["2 processes, synced BN"], summaries["1 process, 2 threads"]
    gaps = [b["best_score"] - a["best_score"] for a, b in zip(one, two, strict=True)]
    synced_gaps = [b["best_score"] - a["best_score"] for a, b in zip(one, synced, strict=True)]
    float_gaps = [b["best_score"] - a["best_score"] for a, b in zip(one, control, strict=True)]
    speed = [
        b["train_images_per_s"] / a["train_images_per_s"] for a, b in zip(one, two, strict=True)
    ]
    rows = [
        [seed, one[seed]["best_score"], two[seed]["best_score"], f"{gaps[seed]:+.4f}",
         synced[seed]["best_score"], f"{synced_gaps[seed]:+.4f}",
         control[seed]["best_score"], f"{float_gaps[seed]:+.4f}",
         one[seed]["train_images_per_s"], two[seed]["train_images_per_s"]]
        for seed in range(seeds)
    ]  # fmt: skip
    columns = ["seed", "1 process Dice", "2 processes Dice", "gap (2 - 1)",
               "2 processes, synced BN Dice", "synced gap", "1 process, 2 threads Dice",
               "float-order gap", "1 process img/s", "2 processes img/s"]  # fmt: skip
    mean_gap = statistics.fmean(gaps)
    lines = [
        f"`podium train experiment=demo trainer.max_epochs={epochs}` (demo_shapes, fold 0), "
        f"global batch {batch}: 1 process x {batch} against 2 processes x {batch // 2} "
        f"(BatchNorm per process, and synced), seeds 0..{seeds - 1}.",
        "",
        bench.table(columns, rows),
        "",
        f"Mean gap over seeds {mean_gap:+.4f}; largest single-seed gap {max(map(abs, gaps)):.4f}. "
        f"Synced BatchNorm: mean |gap| {statistics.fmean(map(abs, synced_gaps)):.4f}, largest "
        f"{max(map(abs, synced_gaps)):.4f}. "
        f"Float order alone (same run, 2 threads): mean |gap| "
        f"{statistics.fmean(map(abs, float_gaps)):.4f}, largest {max(map(abs, float_gaps)):.4f}.",
    ]
    if seeds > 1:
        spreads = {n: statistics.stdev(s["best_score"] for s in v) for n, v in summaries.items()}
        lines.append(
            "Spread between seeds (standard deviation): "
            + ", ".join(f"{n} {sd:.4f}" for n, sd in spreads.items())
            + "."
        )
    lines.append(f"2 processes / 1 process images/s: {bench.median(speed):.2f} (median of seeds).")
    bench.record(args, "ddp", f"ddp score gap {abs(mean_gap):.4f}", "\n".join(lines), args.device)


if __name__ == "__main__":
    main()
