"""datacheck: how long the data check before training takes on real data, the first time (every
file read strictly, in worker processes) and the second time (verdicts from the cache).

Datasets (skipped with a message when absent):
  tgs_salt    TGS Salt in its Kaggle layout (../shared/data/tgs_salt/original/train.csv, 3200
              RLE masks, 101x101 PNG images), `competition=tgs-salt-identification-challenge`.
  kvasir_seg  Kvasir-SEG (../shared/data/kvasir_seg, 664 JPEG images of mixed sizes with PNG
              masks), `competition=image-folder`.
Each run is what `podium train` does before its folds: list the training samples, then
`podium.datacheck.check_samples`. The folders are linked into a temp dir (the check caches its
verdicts in the data folder); nothing is written to ../shared. The goal: under 10 s cached.
"""

from __future__ import annotations

from pathlib import Path

import _common as bench
from quality import link_folder, link_tgs

from podium.competition import load_competition
from podium.config import compose_config
from podium.datacheck import check_samples

DATASETS = {  # name -> (folder under the data root, competition, link function)
    "tgs_salt": ("tgs_salt", "tgs-salt-identification-challenge", link_tgs),
    "kvasir_seg": ("kvasir_seg", "image-folder", link_folder),
}
GOAL_S = 10.0  # a cached check, per dataset


def timed_check(competition_name: str, data_dir: Path, workers: int | None) -> tuple[float, dict]:
    """One pre-training check from a fresh process's point of view: list, then check."""
    cfg = compose_config(
        "tools", [f"competition={competition_name}", f"competition.data_dir={data_dir}"]
    )
    elapsed = bench.timer()
    competition = load_competition(cfg)
    samples = competition.train_samples()
    report = check_samples(competition, samples, "train", workers=workers)
    seconds = elapsed()
    return seconds, {"samples": report.total, "read": report.read, "problems": report.bad_samples}


def main() -> None:
    def extra(parser):
        parser.add_argument("--datasets", default="tgs_salt,kvasir_seg")
        parser.add_argument("--data-root", type=Path, default=bench.SHARED_DATA)
        parser.add_argument("--workers", type=int, help="check processes (default: the CPUs)")

    args = bench.parse_args(__doc__.splitlines()[0], extra)
    wanted = [d.strip() for d in args.datasets.split(",") if d.strip()]
    present = [d for d in wanted if (args.data_root / DATASETS[d][0]).is_dir()]
    for name in sorted(set(wanted) - set(present)):
        print(f"datacheck: {name} skipped ({args.data_root / DATASETS[name][0]} not found)")
    if not present:
        print("datacheck skipped: no real data (../shared/data) on this machine")
        return
    rows, worst_cached, worst_ratio = [], 0.0, float("inf")
    with bench.temp_dir("datacheck") as tmp:
        for name in present:
            folder, competition_name, link = DATASETS[name]
            data_dir = tmp / competition_name
            link(args.data_root / folder, data_dir)
            first_s, first = timed_check(competition_name, data_dir, args.workers)
            second_s, second = timed_check(competition_name, data_dir, args.workers)
            assert second["read"] == 0, f"{name}: the second run read {second['read']} samples"
            ratio = first_s / second_s
            worst_cached, worst_ratio = max(worst_cached, second_s), min(worst_ratio, ratio)
            rows.append([name, first["samples"], first["problems"], first_s, second_s, ratio,
                         "yes" if second_s < GOAL_S else "NO"])  # fmt: skip
            print(f"{name}: first {first_s:.2f} s, second {second_s:.2f} s, x{ratio:.1f}")
    workers = args.workers or "one per CPU"
    body = "\n".join([
        f"The pre-training check (list the training samples, then check them; `podium train` "
        f"runs it before its folds) on the real data, linked into a temp dir. First run: every "
        f"file read strictly (worker processes: {workers}); second run: the same command again, "
        f"every verdict from the cache. Goal: second run under {GOAL_S:.0f} s.",
        "",
        bench.table(["dataset", "samples", "with problems", "first run s", "second run s",
                     "first / second", f"second < {GOAL_S:.0f} s"], rows),
        "",
    ])  # fmt: skip
    headline = f"datacheck second run {worst_cached:.2f} s (first/second x{worst_ratio:.1f})"
    bench.record(args, "datacheck", headline, body, args.device)


if __name__ == "__main__":
    main()
