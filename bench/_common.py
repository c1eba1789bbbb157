"""What every benchmark shares: arguments, the machine description, interleaved A/B timing,
tables, and the RESULTS.md writer.

Timing rule: this machine's speed drifts (up to 1.6x within minutes) and other processes load
its cores, so A is never timed in one block and B in another. `interleaved` alternates them
(AB, BA, AB, ...) and the headline is the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights"
# section order in RESULTS.md
ORDER = ("train_step", "compile", "loader", "predict", "rle", "quality", "ddp", "datacheck",
         "estimate", "levers", "threads")  # fmt: skip
HISTORY = 5  # earlier headlines kept under each section


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """--device cpu|cuda, --quick (the `make bench` size), --tiny (the smoke test's size) and
    --results PATH (where to record; the smoke test writes elsewhere), plus `extra` options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="short run (make bench)")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes (smoke test)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch/OpenMP threads here and in podium subprocesses; 0: torch's default (all "
        "cores). 1 by default: on a shared, oversubscribed machine two OpenMP threads wait for "
        "each other at every parallel region (steps measured 10-100x slower), so the timings "
        "would measure the scheduler instead of the code",
    )  # fmt: skip
    parser.add_argument(
        "--malloc", choices=("default", "tuned", "heap"), default="default",
        help="glibc malloc here and in podium subprocesses. tuned: keep freed memory for the "
        "next step (fixed 32 MiB mmap threshold, no trimming) instead of giving it back to the "
        "OS and page-faulting it in again; heap: also no mmap at all (blocks over 32 MiB too)",
    )  # fmt: skip
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.malloc != "default" and not tune_malloc(no_mmap=args.malloc == "heap"):
        parser.error(f"--malloc {args.malloc}: not a glibc system")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # for podium subprocesses
            os.environ[name] = str(args.threads)
    if args.device == "cpu":
        # podium trains and predicts on CUDA whenever it sees a GPU; hide it (CUDA reads this
        # at its first use, which comes later) from this process and its children.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible")
    return args


MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 1 << 30


def tune_malloc(no_mmap: bool = False) -> bool:
    """Make glibc malloc keep the memory a training step frees for the next step: a fixed mmap
    threshold (the dynamic one sends some activations to fresh mmaps) and no trimming of the
    heap top; with `no_mmap`, no mmap at all. Children get the same settings (environment)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = {  # <malloc.h> parameter number, environment variable, value
        "trim": (-1, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),
        "mmap threshold": (-3, "MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD),
    }
    if no_mmap:
        settings["mmap max"] = (-4, "MALLOC_MMAP_MAX_", 0)
    for number, variable, value in settings.values():
        if not libc.mallopt(number, value):
            return False
        os.environ[variable] = str(value)
    return True


def size(args, full, quick, tiny):
    """The value for this run's size: --tiny, else --quick, else the full benchmark."""
    return tiny if args.tiny else quick if args.quick else full


def mode(args) -> str:
    return "tiny" if args.tiny else "quick" if args.quick else "full"


def podium_env() -> dict[str, str]:
    """Environment for podium subprocesses (the device choice travels in
    CUDA_VISIBLE_DEVICES, set by `parse_args`); offline hub."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def podium_command(args: Sequence[str]) -> None:
    """Run `podium <args>` in this process, through the CLI's own entry point (as `podium demo`
    does), saving a second import of torch; a failure stops the benchmark."""
    from podium import cli

    code = cli.main(list(args))
    if code:
        raise SystemExit(f"podium {' '.join(args)} exited {code}")


def torch_device(name: str):
    import torch

    return torch.device("cuda", 0) if name == "cuda" else torch.device("cpu")


def synchronize(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def machine(device: str) -> str:
    """One line: CPU model, cores, load, torch version and threads, device."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = found.group(1).strip() if found else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    where = "CPU"
    if device == "cuda":
        where = f"CUDA {torch.cuda.get_device_name(0)}"
    return (
        f"{cpu}, {cores} cores (load average {load} at the end), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, device {where}"
        + (", glibc malloc tuned" if "MALLOC_TRIM_THRESHOLD_" in os.environ else "")
        + (" (no mmap)" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "")
    )


def command_line() -> str:
    """The command that produced this run, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO)
    return shlex.join(["python", str(script), *sys.argv[1:]])


# -- timing -----------------------------------------------------------------------------------
def interleaved(
    run_a: Callable[[], float], run_b: Callable[[], float], pairs: int
) -> list[tuple[float, float]]:
    """Alternate A and B `pairs` times (AB, BA, AB, ... so a drift in machine speed hits both
    alike); returns (A, B) per pair, each being what the callable returned."""
    return [(a, b) for a, b in rounds([run_a, run_b], pairs)]


def rounds(runs: Sequence[Callable[[], float]], count: int) -> list[tuple[float, ...]]:
    """`count` rounds of every callable, the order rotated each round (ABC, BCA, CAB, ...);
    returns one tuple of results per round, in the order of `runs`."""
    out = []
    for i in range(count):
        results: list = [None] * len(runs)
        for k in range(len(runs)):
            j = (i + k) % len(runs)
            results[j] = runs[j]()
        out.append(tuple(results))
    return out


def pair_ratios(pairs: Sequence[tuple[float, float]]) -> list[float]:
    return [a / b for a, b in pairs]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """min..max of a list of ratios, to show how noisy the machine was."""
    return f"{min(values):.3f}..{max(values):.3f}"


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A scratch folder outside the repository (runs, generated data), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"podium-bench-{prefix}-") as path:
        yield Path(path)


def timer() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


# -- output -----------------------------------------------------------------------------------
def table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table; floats get 3 significant decimals."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def variant(args) -> str:
    """The options that make a run a different configuration (its own section), besides the
    mode."""
    parts = []
    if args.device != "cpu":
        parts.append(f"--device {args.device}")
    if args.threads != 1:
        parts.append(f"--threads {args.threads}")
    if args.malloc != "default":
        parts.append(f"--malloc {args.malloc}")
    return " ".join(parts)


def record(args, name: str, headline: str, body: str, device: str) -> None:
    """Print the result (the headline last) and replace the section of benchmark `name` in this
    configuration (`variant`) in the results file, keeping the last few earlier headlines."""
    print(body)
    config = ", ".join(filter(None, ["" if mode(args) == "full" else mode(args), variant(args)]))
    if config:  # `make bench` (--quick) keeps its own sections: it never replaces a full run
        name = f"{name} ({config})"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            f"## {name}",
            "",
            f"`{command_line()}` ({mode(args)}), {stamp}",
            "",
            f"Machine: {machine(device)}.",
            "",
            body.strip(),
            "",
            f"**{headline}**",
        ]
    )
    update_results(Path(args.results), name, section, f"{stamp} ({mode(args)}): {headline}")
    print(headline)


def update_results(path: Path, name: str, section: str, history_line: str) -> None:
    """Replace the block of section `name` in the results file (between its markers)
    atomically, under a lock; the text before the first block (the hand-written summary) is
    kept as is. Blocks are ordered by benchmark, then configuration."""
    import hashlib

    from filelock import FileLock

    from podium.io import atomic_write

    key = re.sub(r"\W+", "-", name).strip("-")  # HTML comments may not hold "--"
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    with FileLock(str(Path(tempfile.gettempdir()) / f"podium-bench-{digest}.lock"), timeout=120):
        text = path.read_text() if path.is_file() else "# podium benchmarks\n"
        blocks = dict(
            re.findall(r"^<!-- bench:(\S+) -->\n(.*?)^<!-- /bench:\1 -->$", text, re.M | re.S)
        )
        old = blocks.get(key, "")
        latest = re.findall(r"^<!-- latest: (.+) -->$", old, re.M)
        earlier = (
            re.findall(r"^- (.+)$", old.split("Earlier runs:", 1)[1], re.M)
            if ("Earlier runs:" in old)
            else []
        )
        history = (latest + earlier)[:HISTORY]
        block = f"<!-- latest: {history_line} -->\n{section}\n"
        if history:
            block += "\nEarlier runs:\n" + "".join(f"- {h}\n" for h in history)
        blocks[key] = block

        def order(k: str) -> tuple:
            base = k.split("-")[0]
            return (ORDER.index(base) if base in ORDER else len(ORDER), k)

        head = re.split(r"^<!-- bench:", text, maxsplit=1, flags=re.M)[0].rstrip() + "\n"
        out = head + "".join(
            f"\n<!-- bench:{k} -->\n{blocks[k].strip()}\n<!-- /bench:{k} -->\n"
            for k in sorted(blocks, key=order)
        )
        with atomic_write(path) as f:
            f.write(out)


# -- training steps (train_step and loader) ---------------------------------------------------
def synthetic_batches(count: int, batch: int, size: int, seed: int = 0) -> list[dict]:
    """`count` in-memory batches like podium's loader gives: uint8 NCHW images and uint8 Nx1xHxW
    binary masks (a blob per image), so no benchmark step waits for data."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = []
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(count):
        images = torch.randint(
            0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator
        )
        centres = torch.rand(batch, 2, generator=generator) * size
        radius = (0.1 + 0.3 * torch.rand(batch, generator=generator)) * size
        dist2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
        masks = (dist2 < radius[:, None, None] ** 2).to(torch.uint8)[:, None]
        out.append({"image": images, "mask": masks, "index": torch.arange(batch)})
    return out


class TimedBatches:
    """An endless loader over in-memory batches that notes the time at which batches `warmup`
    to `warmup + measured` are fetched: consecutive notes are one whole training step of
    whatever loop consumes it. On CUDA the device is synchronised at the first and the last
    note only (so the loop keeps its asynchrony) and only the mean speed is defined."""

    def __init__(self, batches: list[dict], warmup: int, measured: int, device):
        if getattr(device, "type", device) == "cuda":  # as podium's loaders pin them on CUDA
            batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
        self.batches, self.warmup, self.measured, self.device = batches, warmup, measured, device
        self.times: list[float] = []
        self.faults: list[int] = []

    @property
    def steps(self) -> int:
        """Batches a loop must draw to complete the measurement (the last one is not timed)."""
        return self.warmup + self.measured + 1

    def __iter__(self):
        last = self.warmup + self.measured
        for i in range(10**9):
            if self.warmup <= i <= last:
                if i in (self.warmup, last):
                    synchronize(self.device)
                    self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
                self.times.append(time.perf_counter())
            yield self.batches[i % len(self.batches)]

    def images_per_s(self, robust: bool = True) -> float:
        """Images per second over the measured steps: from the median step time (`robust`,
        CPU only: a burst of another process's work spoils one step, not the run), or from
        their total time."""
        if len(self.times) != self.measured + 1:
            raise RuntimeError("the loop stopped before the measurement ended")
        batch = len(self.batches[0]["image"])
        if robust and getattr(self.device, "type", self.device) == "cpu":
            steps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
            return batch / median(steps)
        return self.measured * batch / (self.times[-1] - self.times[0])

    def page_faults(self) -> float:
        """Minor page faults of this process per measured step."""
        return (self.faults[-1] - self.faults[0]) / self.measured


def bare_training(
    model_cfg, device, precision: str, channels_last: bool, compile_model=False, seed: int = 0
):
    """A hand-written training loop as a strong competitor writes it: the smp model itself,
    AdamW, BCE + soft Dice, autocast (and a GradScaler for fp16) — and nothing else. Returns
    run(loader, steps) -> None."""
    import segmentation_models_pytorch as smp
    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.benchmark = True  # as podium's seed_everything sets it
    torch.manual_seed(seed)  # the weights podium starts from with the same seed
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = smp.create_model(
        model_cfg.arch, encoder_name=model_cfg.encoder, encoder_weights=None, classes=1,
        **dict(model_cfg.get("kwargs") or {}),
    ).to(device=device, memory_format=memory_format)  # fmt: skip
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mean = torch.tensor(model_cfg.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(model_cfg.std, device=device).view(1, 3, 1, 1) * 255

    def run(loader, steps: int) -> None:
        model.train()
        for _, batch in zip(range(steps), loader, strict=False):
            x = (batch["image"].to(device, non_blocking=True).float() - mean) / std
            x = x.contiguous(memory_format=memory_format)
            y = batch["mask"].to(device, non_blocking=True).float()
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                logits = forward(x)
            logits = logits.float()
            probs = logits.sigmoid()
            dice = (2 * (probs * y).sum() + 1) / (probs.sum() + y.sum() + 1)
            loss = F.binary_cross_entropy_with_logits(logits, y) + 1 - dice
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return run
