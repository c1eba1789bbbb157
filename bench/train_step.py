"""train_step: podium's training loop against a bare PyTorch loop on the same model and batches.

A: `podium.train.train` itself — the default config's loop with EMA, gradient clipping, the
   GradScaler, the LR schedule, autocast (bf16 on CUDA), channels_last, the progress bar and
   TensorBoard logging every `log_every` steps. Only its inputs are replaced: the competition
   is a list of in-memory samples, `train_loader` hands out in-memory batches, and validation
   and checkpoint writing (both outside the timed steps) are stubbed to save minutes.
B: forward, BCE + soft Dice, backward, AdamW step on the same smp model, same memory format
   and autocast.

Both draw the same uint8 batches from `TimedBatches`, which times `measured` whole steps after
`warmup` ones and counts the process's page faults over them. A and B alternate (AB, BA, ...);
a run's speed comes from its median step; the headline is the worst model's median of the
per-pair ratios A/B of images/s (goal >= 0.97). A second table prices podium's extra work per
step piece by piece, and --profile adds torch.profiler's operator totals of both loops.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import _common as bench
import torch

import podium.models
import podium.run_state
import podium.train
from podium.competition import Competition, Sample
from podium.config import compose_config
from podium.losses import build_loss
from podium.models import build_model

MODELS = {"resnet34": "unet", "mobilenet_v2": "unet_mobilenet"}  # encoder -> model config


class InMemoryCompetition(Competition):
    """Samples that are never read: training batches come from `TimedBatches`."""

    def __init__(self, cfg, count: int):
        super().__init__(cfg)
        self.count = count

    def train_samples(self) -> list[Sample]:
        return [Sample(f"s{i}", Path(f"memory/{i}.png"), stratify=i % 2) for i in range(self.count)]

    def test_samples(self) -> list[Sample]:
        return []

    def require_data(self) -> None:  # no data folder to check: nothing is read
        pass


@contextlib.contextmanager
def patched(module, **replacements):
    """Set attributes of `module` for the block; a missing one means the loop was refactored
    and this benchmark must follow."""
    missing = [name for name in replacements if not hasattr(module, name)]
    if missing:
        raise AttributeError(f"{module.__name__} has no {missing}: update bench/train_step.py")
    saved = {name: getattr(module, name) for name in replacements}
    for name, value in replacements.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def no_validation(*_args, **_kwargs) -> dict:
    return {"score": 0.0, "loss": 0.0, "scores": [], "probs": [], "masks": []}


def podium_run(cfg, batches, warmup, measured, device, run_dir: Path) -> tuple[float, ...]:
    """images/s of `measured` steps of podium's own training loop (from the median step, from
    the mean step) and the minor page faults per step."""
    loader = bench.TimedBatches(batches, warmup, measured, device)
    samples = 200 * len(batches[0]["image"])  # two folds: 100 steps' worth train (fixed, as
    # folds.csv is made once per data dir)
    with (
        patched(
            podium.run_state,
            load_competition=lambda c: InMemoryCompetition(c.competition, samples),
            require_clean_data=lambda *_a, **_k: None,  # no files: nothing for the data check
        ),
        patched(
            podium.train,
            train_loader=lambda *_a, **_k: loader,
            validate=no_validation,
            save_checkpoint=lambda *_a, **_k: None,
            resolve_device=lambda *_a: device,  # and the threads the benchmark set
        ),
    ):
        podium.train.train(cfg, run_dir)
    return loader.images_per_s(), loader.images_per_s(robust=False), loader.page_faults()


def bare_run(cfg, batches, warmup, measured, device, compile_model=False) -> tuple[float, ...]:
    loader = bench.TimedBatches(batches, warmup, measured, device)
    precision = podium.models.resolve_precision(cfg.trainer.precision, device)
    run = bench.bare_training(
        cfg.model, device, precision, cfg.trainer.channels_last, compile_model
    )
    run(iter(loader), loader.steps)
    return loader.images_per_s(), loader.images_per_s(robust=False), loader.page_faults()


def extras_cost(cfg, batch: dict, device, repeats: int) -> list[tuple[str, float]]:
    """Milliseconds per step of each piece podium's loop adds to the bare one (medians)."""
    tc = cfg.trainer
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    model = build_model(cfg.model, 1).to(device=device, memory_format=memory_format)
    counter = [0]
    ema = podium.run_state.make_ema(model, tc.ema, tc.ema_warmup, counter)
    optimizer = podium.run_state.build_optimizer(cfg.optimizer, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, podium.run_state.lr_schedule(cfg.scheduler, 1000, 100)
    )
    loss_fn = build_loss(cfg.loss, "binary")
    images = podium.models.to_input(batch["image"], model, device, memory_format)
    masks = batch["mask"].to(device)
    loss_fn(model(images), masks).backward()  # gradients for clipping to read
    optimizer.step()  # (the scheduler warns when it steps first)
    mean = torch.tensor(cfg.model.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.model.std, device=device).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        logits = model(images)

    def bare_loss():
        probs = logits.sigmoid()
        y = masks.float()
        dice = (2 * (probs * y).sum() + 1) / (probs.sum() + y.sum() + 1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 1 - dice

    from torch.utils.tensorboard import SummaryWriter

    with bench.temp_dir("tb") as tb:
        writer = SummaryWriter(str(tb))
        pieces = {
            "EMA update (every step)": lambda: ema.update_parameters(model),
            "gradient clipping (every step)": lambda: torch.nn.utils.clip_grad_norm_(
                model.parameters(), float(tc.grad_clip)
            ),
            "LR scheduler step": scheduler.step,
            "to_input (uint8 -> normalised)": lambda: podium.models.to_input(
                batch["image"], model, device, memory_format
            ),
            "  bare normalisation": lambda: (
                (batch["image"].to(device).float() - mean) / std
            ).contiguous(memory_format=memory_format),
            "podium loss (forward)": lambda: loss_fn(logits, masks),
            "  bare BCE + Dice (forward)": bare_loss,
            f"TensorBoard, 2 scalars / {tc.log_every} steps": lambda: [
                writer.add_scalar("a", loss_fn(logits, masks).item(), 0),
                writer.add_scalar("b", 0.1, 0),
            ],
        }
        costs = []
        for name, piece in pieces.items():
            times = []
            for _ in range(repeats):
                bench.synchronize(device)
                start = time.perf_counter()
                piece()
                bench.synchronize(device)
                times.append(time.perf_counter() - start)
            per_step = bench.median(times) * 1000
            if name.startswith("TensorBoard"):
                per_step /= int(tc.log_every)
            costs.append((name, per_step))
        writer.close()
    return costs


def profile_difference(cfg, batches, steps, device, run_dir: Path, rows: int = 10) -> str:
    """torch.profiler over one podium run and one bare run of the same steps: the operators
    podium spends the most extra self-CPU time in (model set-up included in both)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    totals = []
    for run in (lambda: podium_run(cfg, batches, *steps, device, run_dir),
                lambda: bare_run(cfg, batches, *steps, device)):  # fmt: skip
        with profile(activities=activities) as prof:
            run()
        totals.append({e.key: (e.self_cpu_time_total / 1000, e.count) for e in prof.key_averages()})
    podium, bare = totals
    extra = sorted(podium, key=lambda k: bare.get(k, (0, 0))[0] - podium[k][0])[:rows]
    table = [
        [f"`{key[:48]}`", f"{podium[key][0]:.1f} ({podium[key][1]})",
         f"{bare.get(key, (0, 0))[0]:.1f} ({bare.get(key, (0, 0))[1]})",
         podium[key][0] - bare.get(key, (0, 0))[0]]
        for key in extra
    ]  # fmt: skip
    sums = [sum(v[0] for v in t.values()) for t in totals]
    return (
        f"torch.profiler, {sum(steps) + 1} steps each: self-CPU total podium {sums[0]:.0f} ms, "
        f"bare {sums[1]:.0f} ms. Operators podium spends the most extra time in:\n\n"
        + bench.table(["operator", "podium ms (calls)", "bare ms (calls)", "extra ms"], table)
    )


def measure(args, encoder: str, device, tmp: Path) -> dict:
    """Alternated podium/bare runs on Unet-`encoder`, then the price list of the extras."""
    image_size = bench.size(args, 256, 128, 64)
    batch_size = bench.size(args, 8, 8, 2)
    warmup, measured = bench.size(args, (2, 8), (2, 4), (1, 2))
    overrides = [
        f"model={MODELS.get(encoder, 'unet')}", f"model.encoder={encoder}",
        "model.encoder_weights=null", f"trainer.batch_size={batch_size}",
        "trainer.max_epochs=1", f"trainer.limit_train_batches={warmup + measured + 1}",
        "trainer.num_workers=0", "trainer.save_oof=false", "competition.n_folds=2",
        f"paths.data_dir={tmp / 'data'}", f"paths.runs_dir={tmp / 'runs'}",
    ]  # fmt: skip
    if args.tiny:
        overrides.append("model.kwargs={decoder_channels:[32,16,16,8,8]}")
    cfg = compose_config("train", overrides)
    batches = bench.synthetic_batches(3, batch_size, image_size)
    run_dirs = (tmp / encoder / f"run{i}" for i in range(10**6))
    bare_run(cfg, batches, 1, 1, device)  # the process's first steps are slow: not in a pair
    results = bench.interleaved(
        lambda: podium_run(cfg, batches, warmup, measured, device, next(run_dirs)),
        lambda: bare_run(cfg, batches, warmup, measured, device),
        bench.size(args, 7, 5, 1),
    )
    ratios = [a[0] / b[0] for a, b in results]  # from the median steps (CPU)
    mean_ratios = [a[1] / b[1] for a, b in results]  # from the total times
    bare_ips = bench.median([b[0] for _, b in results])
    out = {
        "ratio": bench.median(ratios),
        "row": [
            f"Unet {encoder}", f"{image_size}px x {batch_size}",
            bench.median([a[0] for a, _ in results]), bare_ips, bench.median(ratios),
            bench.spread(ratios), bench.median(mean_ratios), bench.spread(mean_ratios),
            len(results), bench.median([a[2] for a, _ in results]),
            bench.median([b[2] for _, b in results]),
        ],
        "step_ms": 1000 * batch_size / bare_ips,
        "extras": extras_cost(cfg, batches[0], device, bench.size(args, 7, 5, 2)),
        "compiled": None,
        "profile": None,
    }  # fmt: skip
    if args.compile:
        runs = [bare_run(cfg, batches, warmup + 2, measured, device, True) for _ in range(2)]
        compiled = bench.median([r[0] for r in runs])
        out["compiled"] = [f"Unet {encoder}, bare + torch.compile", "", "", compiled,
                           *[""] * 4, 2, "", ""]  # fmt: skip
    if args.profile:
        table = profile_difference(
            cfg, batches, (warmup, measured), device, tmp / encoder / "profile"
        )
        out["profile"] = f"Unet {encoder}: {table}\n"
    print(f"{encoder}: podium/bare {out['ratio']:.3f} ({bench.spread(ratios)})")
    return out


def main() -> None:
    def options(parser):
        parser.add_argument("--models", default="resnet34,mobilenet_v2", help="encoders")
        parser.add_argument("--compile", action="store_true", help="also time bare+torch.compile")
        parser.add_argument("--profile", action="store_true", help="add torch.profiler tables")

    args = bench.parse_args(__doc__.splitlines()[0], options)
    device = bench.torch_device(args.device)
    encoders = [e.strip() for e in args.models.split(",") if e.strip()]
    with bench.temp_dir("train_step") as tmp:
        results = {encoder: measure(args, encoder, device, tmp) for encoder in encoders}
    rows = [r["row"] for r in results.values()]
    rows += [r["compiled"] for r in results.values() if r["compiled"]]
    columns = ["model", "input", "podium img/s", "bare img/s", "ratio", "pair ratios",
               "ratio (mean steps)", "pair ratios", "pairs", "podium page faults/step",
               "bare page faults/step"]  # fmt: skip
    cost_rows = []
    for i, (name, _) in enumerate(next(iter(results.values()))["extras"]):
        cells = []
        for r in results.values():
            ms = r["extras"][i][1]
            cells.append(f"{ms:.2f} ({100 * ms / r['step_ms']:.1f}%)")
        cost_rows.append([name, *cells])
    body = [
        bench.table(columns, rows),
        "",
        "img/s and ratio: from each run's median step time (a burst of another process's work "
        "spoils one step, not the run), median over the alternated pairs; ratio (mean steps): "
        "from the runs' total time over the same steps. Page faults: minor faults of the "
        "process per measured step (memory the allocator gave back to the OS and touches again).",
        "",
        "What podium's loop adds per step (ms, median of single timings; % of a bare step):",
        "",
        bench.table(["piece", *[f"Unet {e}" for e in encoders]], cost_rows),
        "",
        "Bare step (ms): "
        + ", ".join(f"Unet {e} {r['step_ms']:.0f}" for e, r in results.items())
        + ".",
        "",
        *[r["profile"] for r in results.values() if r["profile"]],
    ]
    worst = min(r["ratio"] for r in results.values())
    bench.record(args, "train_step", f"train_step ratio {worst:.3f}", "\n".join(body), args.device)


if __name__ == "__main__":
    main()
