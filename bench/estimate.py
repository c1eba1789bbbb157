"""estimate: how close `podium estimate` comes to the run it estimates.

Each round estimates a 2-epoch run of the demo (`experiment=demo`: Unet-MobileNetV2 from scratch,
batch 8, 120 px; `podium.estimate.estimate_run`, what `podium estimate` prints) and then trains
exactly that run (`podium train`, in this process), and compares the estimate with the run's own
duration (summary.json `duration_s`: from the data check to the last checkpoint, what the
estimate covers). The rounds alternate which comes first (EM, ME, ...), as the machine's speed
drifts. Headline: the median estimate / measured ratio. Goal: within 30% (0.7..1.3).
"""

from __future__ import annotations

import json

import _common as bench

from podium.config import compose_config
from podium.estimate import estimate_run

GOAL = 0.30


def main() -> None:
    def extra(parser):
        parser.add_argument("--epochs", type=int, default=2)

    args = bench.parse_args(__doc__.splitlines()[0], extra)
    rounds = bench.size(args, 3, 2, 1)
    demo = bench.size(args, [], [], ["competition.options.n_train=48",
                                     "competition.options.n_test=8",
                                     "competition.options.size=64"])  # fmt: skip
    with bench.temp_dir("estimate") as tmp:
        paths = [f"paths.data_dir={tmp / 'data'}", f"paths.runs_dir={tmp / 'runs'}"]
        bench.podium_command(["download", *demo, *paths])
        overrides = [
            "experiment=demo", *demo, *paths, f"trainer.max_epochs={args.epochs}",
            "trainer.progress=false",
        ]  # fmt: skip
        estimates: list[float] = []
        measured: list[float] = []
        walls: list[float] = []
        parts: list[str] = []

        def estimate() -> float:
            cost = estimate_run(compose_config("train", overrides))
            estimates.append(cost.seconds)
            parts.append(
                f"start-up {cost.startup_s:.1f} s, warm-up {cost.warmup_s:.1f} s, "
                f"{cost.batch_s:.3f} s/batch x {cost.batches_per_epoch} x {cost.epochs}, loader "
                f"start {cost.loader_start_s:.2f} s/epoch, validation {cost.validation_s:.1f} s x "
                f"{cost.validations}, checkpoints {cost.checkpoint_s:.2f} s/epoch"
            )
            print(f"estimate: {cost.seconds:.1f} s ({parts[-1]})", flush=True)
            return cost.seconds

        def train() -> float:
            run_dir = tmp / "runs" / f"run{len(measured)}"
            elapsed = bench.timer()
            bench.podium_command(["train", *overrides, f"hydra.run.dir={run_dir}"])
            walls.append(elapsed())
            seconds = json.loads((run_dir / "summary.json").read_text())["duration_s"]
            measured.append(seconds)
            print(f"measured: {seconds:.1f} s (the command: {walls[-1]:.1f} s)", flush=True)
            return seconds

        bench.rounds([estimate, train], rounds)
    ratios = [e / m for e, m in zip(estimates, measured, strict=True)]
    rows = [
        [i + 1, e, m, w, r, "yes" if abs(r - 1) <= GOAL else "NO"]
        for i, (e, m, w, r) in enumerate(zip(estimates, measured, walls, ratios, strict=True))
    ]
    size = "tiny demo (48 images, 64 px)" if args.tiny else "demo (400 images, 120 px)"
    body = "\n".join([
        f"`podium estimate` of a {args.epochs}-epoch run of the {size}, `experiment=demo`, then "
        f"that run trained; measured: the run's summary.json `duration_s` (data check to last "
        f"checkpoint); the command's wall time adds Python, torch and Hydra start-up. Rounds "
        f"alternate which comes first. Goal: estimate / measured within {GOAL:.0%}.",
        "",
        bench.table(["round", "estimate s", "measured s", "command wall s", "estimate / measured",
                     f"within {GOAL:.0%}"], rows),
        "",
        "What the estimates were made of:",
        "",
        *[f"- round {i + 1}: {part}" for i, part in enumerate(parts)],
        "",
    ])  # fmt: skip
    ratio = bench.median(ratios)
    headline = f"estimate ratio {ratio:.3f} (estimate / measured, {bench.spread(ratios)})"
    bench.record(args, "estimate", headline, body, args.device)


if __name__ == "__main__":
    main()
