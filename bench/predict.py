"""predict: `podium predict` with flip TTA against a bare loop doing the same forward passes,
and podium's peak memory at a small and a large test set.

Setup (in a temp folder): the demo competition generated twice (`podium download
competition=demo_shapes`, 120x120 images, the same 64 training images, a small and a large
test set), and one short `podium train experiment=demo` run (Unet-mobilenet_v2).

A: `podium predict runs=[RUN] tta=flip tuned=null` in a subprocess; its throughput is the one
   predict.json reports (from the first batch to the last row written; model loading,
   validation and scoring left out), its peak RSS the subprocess's (the largest of the
   process and its loader workers).
B: `python bench/predict.py --bare ...` in a subprocess: the same model weights, a DataLoader
   of cv2-decoded images, one forward pass over the 4 flip views, the mean of the de-flipped
   sigmoids, threshold 0.5, the classic Kaggle-kernel RLE, a CSV line per image; timed the
   same way.
A and B alternate on the small test set; the headline is the median of the per-pair ratios of
images/s (goal >= 0.95). Memory: peak RSS of podium at the large set / at the small set (goal:
flat within 10%).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as bench

# The model the benchmark predicts with: the demo's light UNet, a few epochs on 64 images.
TRAIN = ["experiment=demo", "trainer.max_epochs=4", "trainer.num_workers=0",
         "trainer.progress=false", "trainer.early_stopping=null"]  # fmt: skip


# Runs a command and writes its peak RSS (KiB) to argv[1]. Linux counts the resident set of
# the process a child was forked from (at exec) in the child's peak, so the benchmark's own
# 1.5 GB would show up in every measurement: this small process forks the command instead.
PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss));"
    " sys.exit(code)"
)


def measured_process(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of a subprocess: the largest resident set of
    the process and of the children it waited for (its DataLoader workers)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err, peak = (Path(tmp) / name for name in ("out", "err", "peak"))
        with open(out, "w") as stdout, open(err, "w") as stderr:
            start = time.perf_counter()
            code = subprocess.call(
                [sys.executable, "-c", PEAK_RSS, str(peak), *command], stdout=stdout,
                stderr=stderr, env=bench.podium_env(), cwd=bench.REPO,
            )  # fmt: skip
            wall = time.perf_counter() - start
        if code:
            raise SystemExit(f"{' '.join(command)} failed ({code}):\n{out.read_text()}\n"
                             f"{err.read_text()}")  # fmt: skip
        return wall, int(peak.read_text()) / 1024, out.read_text()


def podium_predict(run: Path, data_dir: Path, out: Path, batch: int) -> dict:
    command = [
        sys.executable, "-m", "podium.cli", "predict", "competition=demo_shapes",
        f"runs=[{run}]", "tta=flip", "tuned=null", f"batch_size={batch}", "progress=false",
        f"paths.data_dir={data_dir}", f"paths.runs_dir={out.parent}", f"hydra.run.dir={out}",
    ]  # fmt: skip
    wall, rss, _ = measured_process(command)
    summary = json.loads((out / "predict.json").read_text())
    return {"images_per_s": summary["images_per_s"], "wall_s": wall, "rss_mib": rss,
            "images": summary["images"], "score": summary["local_score"]}  # fmt: skip


def bare_predict(run: Path, data_dir: Path, out: Path, device: str, batch: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--bare", str(run), str(data_dir),
               str(out), "--device", device, "--batch", str(batch)]  # fmt: skip
    wall, rss, stdout = measured_process(command)
    result = json.loads(stdout.strip().splitlines()[-1])
    return result | {"wall_s": wall, "rss_mib": rss}


# -- the bare loop (runs in its own process) --------------------------------------------------
def kernel_rle(mask) -> str:
    """The classic Kaggle-kernel encoder, column-major (the demo's order), 1-based."""
    import numpy as np

    pixels = np.concatenate([[0], mask.flatten(order="F"), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def bare_main(run: Path, data_dir: Path, out: Path, device_name: str, batch: int) -> None:
    import cv2
    import torch

    from podium.data import resolve_num_workers
    from podium.models import load_run_model, resolve_precision

    device = bench.torch_device(device_name)
    model, _ = load_run_model(run)  # podium's loader: the same weights (not timed)
    model = model.to(device=device, memory_format=torch.channels_last)
    precision = resolve_precision("auto", device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1) * 255
    data_dir = data_dir / "demo_shapes"
    with open(data_dir / "sample_submission.csv", newline="") as f:
        ids = [row["id"] for row in csv.DictReader(f)]

    class TestImages(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int):
            image = cv2.imread(str(data_dir / "test" / "images" / f"{ids[i]}.png"))
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            return i, torch.from_numpy(image.transpose(2, 0, 1).copy())

    loader = torch.utils.data.DataLoader(
        TestImages(), batch_size=batch, num_workers=resolve_num_workers("auto"),
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    elapsed = bench.timer()
    with torch.inference_mode(), open(out / "submission.csv", "w") as f:
        f.write("id,rle_mask\n")
        for indices, images in loader:
            x = (images.to(device, non_blocking=True).float() - mean) / std
            x = x.contiguous(memory_format=torch.channels_last)
            n = len(x)
            views = torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-2, -1)])
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
                probs = model(views).float().sigmoid()
            mean_probs = (
                probs[:n] + probs[n : 2 * n].flip(-1) + probs[2 * n : 3 * n].flip(-2)
                + probs[3 * n :].flip(-2, -1)
            ) / 4  # fmt: skip
            masks = (mean_probs[:, 0] > 0.5).to(torch.uint8).cpu().numpy()
            for i, mask in zip(indices.tolist(), masks, strict=True):
                f.write(f"{ids[i]},{kernel_rle(mask)}\n")
    seconds = elapsed()
    print(json.dumps({"images_per_s": len(ids) / seconds, "images": len(ids)}))


# -- the benchmark ------------------------------------------------------------------------------
def main() -> None:
    if "--bare" in sys.argv:
        import argparse

        parser = argparse.ArgumentParser()
        parser.add_argument("--bare", nargs=3, type=Path)
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--batch", type=int, default=16)
        a = parser.parse_args()
        return bare_main(*a.bare, a.device, a.batch)

    args = bench.parse_args(__doc__.splitlines()[0])
    small, large = bench.size(args, (200, 2000), (200, 2000), (8, None))
    pairs = bench.size(args, 5, 3, 1)
    batch = bench.size(args, 16, 16, 4)
    n_train = bench.size(args, 64, 64, 16)
    with bench.temp_dir("predict") as tmp:
        data = {n: tmp / f"data{n}" for n in (small, large) if n}
        for n_test, data_dir in data.items():
            bench.podium_command(["download", "competition=demo_shapes",
                                  f"competition.options.n_test={n_test}",
                                  f"competition.options.n_train={n_train}",
                                  f"paths.data_dir={data_dir}"])  # fmt: skip
        run = tmp / "runs" / "train"
        tiny = ["model.kwargs={decoder_channels:[32,16,16,8,8]}", "trainer.max_epochs=1",
                "trainer.batch_size=4", "competition.n_folds=4"]  # fmt: skip
        bench.podium_command([
            "train", *TRAIN, *(tiny if args.tiny else []), f"competition.options.n_train={n_train}",
            f"competition.options.n_test={small}", f"paths.data_dir={data[small]}",
            f"paths.runs_dir={tmp / 'runs'}", f"hydra.run.dir={run}",
        ])  # fmt: skip
        outs = (tmp / "out" / str(i) for i in range(10**6))
        results = bench.interleaved(
            lambda: podium_predict(run, data[small], next(outs), batch),
            lambda: bare_predict(run, data[small], next(outs), args.device, batch),
            pairs,
        )
        at_large = [None, None]  # (podium, bare) on the large test set
        if large:
            at_large[0] = podium_predict(run, data[large], next(outs), batch)
            if not args.quick:  # minutes on a CPU: only the full run has it
                at_large[1] = bare_predict(run, data[large], next(outs), args.device, batch)
    ratios = [a["images_per_s"] / b["images_per_s"] for a, b in results]
    rows = []
    for name, pick in (("podium predict", 0), ("bare loop", 1)):
        runs = [r[pick] for r in results]
        peak = max(r["rss_mib"] for r in runs)
        big = at_large[pick]
        rows.append([
            name, bench.median([r["images_per_s"] for r in runs]),
            bench.median([r["wall_s"] for r in runs]), peak,
            *([big["images_per_s"], big["wall_s"], big["rss_mib"], big["rss_mib"] / peak]
              if big else ["-"] * 4)[: 4 if large else 0],
        ])  # fmt: skip
    columns = ["loop", f"img/s ({small} images)", "process wall s", "peak RSS MiB"]
    if large:
        columns += [f"img/s ({large})", "process wall s", "peak RSS MiB", f"RSS {large} / {small}"]
    body = [
        f"Demo competition, 120x120 test images, flip TTA (4 views in one forward pass), batch "
        f"{batch}, Unet-mobilenet_v2 (demo decoder); the podium submission's local Dice was "
        f"{results[0][0]['score']:.3f}. img/s at {small} images: median of {pairs} alternated "
        f"pairs (ratios podium/bare {bench.spread(ratios)})"
        + (
            f"; at {large} images one podium run, and one bare run in the full mode only."
            if large
            else "."
        )
        + " Peak RSS: the largest resident set of the process or one of its loader workers; "
        "about 830 MiB of it is the imports (torch alone 575 MiB).",
        "",
        bench.table(columns, rows),
    ]
    if all(at_large):
        podium_large, bare_large = at_large
        ratio_large = podium_large["images_per_s"] / bare_large["images_per_s"]
        body += ["", f"podium/bare throughput at {large} images: {ratio_large:.3f}."]
    if at_large[0]:
        body += ["", f"Peak RSS of podium predict at {large} vs {small} test images: "
                 f"x{rows[0][7]:.3f} (goal: within 1.10)."]  # fmt: skip
    headline = f"predict ratio {bench.median(ratios):.3f}"
    bench.record(args, "predict", headline, "\n".join(body), args.device)


if __name__ == "__main__":
    main()
