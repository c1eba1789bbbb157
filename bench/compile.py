"""compile: a training step of podium's model with `trainer.compile=true` against without.

The model, optimizer and loss are podium's (`podium.run_state.build_train_state` pieces, the
demo's Unet-mobilenet_v2 by default); the compiled forward is what `trainer.compile=true` trains
with: `torch.compile` of the same module, sharing its weights. The first compiled step (tracing
and code generation) is timed on its own; then eager and compiled steps alternate (AB, BA, ...)
in blocks of `steps`, on the same in-memory batches. The headline is the median per-pair ratio
of images/s compiled/eager; the table adds the compile time and the number of steps after which
compiling has paid for itself (never, when the compiled step is not faster).
"""

from __future__ import annotations

import time

import _common as bench
import torch

from podium.config import compose_config
from podium.losses import build_loss
from podium.models import build_model, to_input
from podium.run_state import build_optimizer


def step_runner(cfg, forward, model, device, batches):
    """run(count) -> seconds for `count` training steps of `forward` (compiled or not)."""
    loss_fn = build_loss(cfg.loss, "binary")
    optimizer = build_optimizer(cfg.optimizer, model)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format

    def run(count: int) -> float:
        model.train()
        elapsed = bench.timer()
        for i in range(count):
            batch = batches[i % len(batches)]
            images = to_input(batch["image"], model, device, memory_format)
            loss = loss_fn(forward(images), batch["mask"].to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        bench.synchronize(device)
        return elapsed()

    return run


def main() -> None:
    def options(parser):
        parser.add_argument("--model", default="unet_mobilenet", help="a configs/model name")

    args = bench.parse_args(__doc__.splitlines()[0], options)
    device = bench.torch_device(args.device)
    size = bench.size(args, 128, 96, 64)
    batch_size = bench.size(args, 8, 4, 2)
    steps, pairs = bench.size(args, 5, 3, 1), bench.size(args, 5, 3, 1)
    cfg = compose_config(
        "train", [f"model={args.model}", "model.encoder_weights=null", "trainer.ema=null"]
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, 1).to(device=device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compiled = torch.compile(model)
    batches = bench.synthetic_batches(4, batch_size, size)
    eager_run = step_runner(cfg, model, model, device, batches)
    compiled_run = step_runner(cfg, compiled, model, device, batches)
    eager_run(1)  # warm-up: the allocator and the optimizer's state
    started = time.perf_counter()
    compiled_run(1)  # tracing and code generation (forward and backward)
    compile_s = time.perf_counter() - started
    compiled_run(1)
    results = bench.interleaved(lambda: compiled_run(steps), lambda: eager_run(steps), pairs)
    images = steps * batch_size
    ratios = [(images / c) / (images / e) for c, e in results]  # images/s compiled / eager
    compiled_ms = 1000 * bench.median([c for c, _ in results]) / steps
    eager_ms = 1000 * bench.median([e for _, e in results]) / steps
    saved_ms = eager_ms - compiled_ms
    break_even = f"{1000 * compile_s / saved_ms:.0f}" if saved_ms > 0 else "never"
    rows = [[
        f"{cfg.model.arch} {cfg.model.encoder}", f"{size}px x {batch_size}", eager_ms,
        compiled_ms, bench.median(ratios), bench.spread(ratios), len(results), compile_s,
        break_even,
    ]]  # fmt: skip
    columns = ["model", "input", "eager ms/step", "compiled ms/step", "ratio", "pair ratios",
               "pairs", "first compiled step (s)", "steps to break even"]  # fmt: skip
    body = "\n".join([
        bench.table(columns, rows),
        "",
        f"ratio: images/s compiled / eager, median over the alternated pairs ({steps} steps "
        "each, AdamW, BCE + soft Dice, fp32 on CPU). First compiled step: tracing and code "
        "generation of the forward and backward passes, paid once per training process.",
    ])  # fmt: skip
    headline = f"compile ratio {bench.median(ratios):.3f}"
    bench.record(args, "compile", headline, body, args.device)


if __name__ == "__main__":
    main()
