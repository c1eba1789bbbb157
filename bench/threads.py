"""threads: which CPU thread policy trains fastest — torch threads x DataLoader workers, on an
idle machine and on one whose cores other jobs are using.

Each measurement is a fresh process (thread pools are set when torch starts, as a user's
`OMP_NUM_THREADS=...  podium train` would) that runs podium's own training step
(`run_state.load_data`, `build_train_state`, `train.train_loader`, `forward_backward`,
`optimizer_step`: the default config's EMA, clipping, channels_last) on the real TGS Salt data
when ../shared/data has it (the data where the issue saw 23 s against 3.4 s per batch), else on
the generated demo competition. It times `measured` steps after `warmup` ones.

Policies, each `torch threads` x `loader workers`: threads 1 or all cores; workers 0, 1 or all
cores (podium's `auto`); and podium's default since this benchmark, `trainer.cpu_threads=auto`
(the cores other work leaves free, measured at the start: `distributed.choose_cpu_threads`)
with workers auto. "busy" starts one spinning process per core for the whole condition (as
other jobs on a shared machine would). Policies run in rotating order each round; the headline
is each policy's median seconds per step, as a ratio to podium's old default (torch's own
thread count = all cores, workers auto) in the same condition.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import _common as bench

CHILD_FLAG = "--child"


def cores() -> int:
    from podium.distributed import cpu_count

    return cpu_count()


AUTO = "auto"


def policies() -> list[tuple[int | str, int]]:
    """(torch threads, loader workers); the first is the old default (all cores, auto), the
    last podium's `cpu_threads=auto`."""
    n = cores()
    return [(n, n), (n, 0), (n, 1), (1, n), (1, 0), (1, 1), (AUTO, n)]


def child(overrides: list[str], warmup: int, measured: int) -> None:
    """In a fresh process: time podium's training step; print seconds per step as JSON."""
    import torch

    from podium import train
    from podium.config import compose_config
    from podium.models import resolve_device
    from podium.run_state import Compute, build_train_state, load_data, seed_everything

    cfg = compose_config("train", overrides)
    device = resolve_device(cfg.trainer.cpu_threads)  # OMP_NUM_THREADS, when set, stands
    seed_everything(0)
    data = load_data(cfg)
    run = build_train_state(cfg, data, Compute.for_trainer(cfg.trainer, device))
    loader = train.train_loader(data.train_set, data.batch_size, data.workers, 0, 0)
    batches = iter(loader)
    run.train_model.train()
    times = []
    for step in range(warmup + measured):
        start = time.perf_counter()
        train.forward_backward(run, next(batches), 1, sync_gradients=True)
        train.optimizer_step(run, cfg.trainer.grad_clip)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    del batches, loader
    print(json.dumps({"threads": torch.get_num_threads(), "workers": data.workers,
                      "step_s": sum(times) / len(times)}))  # fmt: skip


def run_child(overrides, threads: int | str, workers: int, warmup: int, measured: int) -> dict:
    """{"threads": torch threads used, "workers": ..., "step_s": seconds per step}."""
    env = bench.podium_env()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
        if threads != AUTO:
            env[name] = str(threads)
    command = [sys.executable, __file__, CHILD_FLAG, str(warmup), str(measured),
               *overrides, f"trainer.num_workers={workers}"]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child {threads} threads {workers} workers failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert threads in (AUTO, result["threads"]) and result["workers"] == workers, result
    return result


def spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def load(busy: bool):
    """One spinning process per core while the block runs (busy), else nothing."""
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(cores() * busy)]
    for process in spinners:
        process.start()
    try:
        yield
    finally:
        for process in spinners:
            process.terminate()
            process.join()


def data_overrides(tmp: Path) -> tuple[str, list[str]]:
    """The TGS Salt data (linked into `tmp`) when the shared copy exists, else the demo."""
    from quality import link_tgs

    common = ["model=unet_mobilenet", "model.encoder_weights=null", "trainer.batch_size=16",
              "trainer.progress=false"]  # fmt: skip
    tgs = bench.SHARED_DATA / "tgs_salt"
    if tgs.is_dir():
        link_tgs(tgs, tmp / "data")
        name, competition = "TGS Salt (Kaggle layout)", "tgs-salt-identification-challenge"
    else:
        name, competition = "generated demo_shapes", "demo_shapes"
        bench.podium_command(["download", f"competition={competition}",
                              f"competition.data_dir={tmp / 'data'}"])  # fmt: skip
    return name, [f"competition={competition}", f"competition.data_dir={tmp / 'data'}", *common]


def main() -> None:
    args = bench.parse_args(__doc__.splitlines()[0])
    warmup, measured = bench.size(args, (3, 12), (2, 6), (1, 2))
    n_rounds = bench.size(args, 3, 2, 1)
    conditions = ["idle", "busy"] if not args.tiny else ["idle"]
    table_rows, headline = [], {}
    with bench.temp_dir("threads") as tmp:
        data_name, overrides = data_overrides(tmp)
        # the first child run writes folds.csv and the data check's cache: not timed
        run_child(overrides, 1, 0, 1, 1)
        for condition in conditions:
            with load(condition == "busy"):
                runs = [
                    (lambda t=t, w=w: run_child(overrides, t, w, warmup, measured))
                    for t, w in policies()
                ]
                results = bench.rounds(runs, n_rounds)
            steps = [[r["step_s"] for r in result] for result in results]
            for index, (threads, workers) in enumerate(policies()):
                seconds = [s[index] for s in steps]
                ratios = [s[0] / s[index] for s in steps]  # > 1: faster than the old default
                if threads == AUTO:
                    chosen = sorted({result[index]["threads"] for result in results})
                    threads = f"auto (chose {', '.join(map(str, chosen))})"
                table_rows.append([condition, threads, workers, bench.median(seconds),
                                   bench.median(ratios), bench.spread(ratios)])  # fmt: skip
            fixed = range(len(policies()) - 1)
            best = min(fixed, key=lambda i: bench.median([s[i] for s in steps]))
            auto = len(policies()) - 1
            headline[condition] = (
                *policies()[best],
                bench.median([s[best] / s[auto] for s in steps]),
            )
    summary = "; ".join(
        f"{c}: best {t} threads x {w} workers, auto at {r:.2f}x its speed"
        for c, (t, w, r) in headline.items()
    )
    body = "\n\n".join(
        [
            f"Data: {data_name}; Unet-MobileNetV2 (random init), batch 16, default augment and "
            f"loop; {warmup} warm-up + {measured} timed steps per process, {n_rounds} rounds in "
            f"rotating order; busy = {cores()} spinning processes. Ratio = old default's s/step / "
            "this policy's, per round (> 1 is faster).",
            bench.table(
                [
                    "condition",
                    "torch threads",
                    "loader workers",
                    "s/step (median)",
                    "speed vs old default",
                    "spread",
                ],
                table_rows,
            ),  # fmt: skip
        ]
    )
    bench.record(args, "threads", summary, body, "cpu")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        child(sys.argv[4:], int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
