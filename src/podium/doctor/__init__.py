"""`podium doctor`: what a competition's data holds, checked before any training.

Every image (and training mask) is read once through the competition's adapter, as training
reads it (`scan`: the facts of each image, cached by file path, size and modification time, so
a later run reads only new or changed files). The report — a few terminal lines, one line per
problem, and `<paths.root_dir>/doctor/<competition>.md` with figures — covers:
- images: sizes, channels and bit depths per split; unreadable files (`sections`);
- masks: raw value sets and the convention they follow (0/1, 0/255, class ids, lossy JPEG
  greys), masks off that convention, masks whose size differs from their image's, empty
  fraction and coverage per class (`sections`);
- train vs test: sizes and formats only test has, intensity that differs clearly (`sections`);
- duplicates: exact and near-duplicate images, their clusters and the folds they fall in;
  `doctor.group_duplicates=true` makes folds keep each cluster in one fold (`duplicates`).

The doctor reports; it exits 0 whatever it finds. Settings: `doctor:` in configs/tools.yaml.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from podium import io
from podium.competition import Competition, load_competition
from podium.data import resolve_num_workers
from podium.doctor.facts import Entry, scan
from podium.io import PodiumError

__all__ = ["Report", "doctor_command", "write_report"]


@dataclass
class Report:
    path: Path
    summary: list[str]  # a line per section
    problems: list[str]  # a line per problem


def doctor_command(cfg: DictConfig) -> int:
    """`podium doctor competition=X`: scan, write the report, print one line per problem and
    the report's path; exit 0."""
    options = cfg.doctor  # typed and range-checked when composed (podium.schema)
    competition = load_competition(cfg)
    competition.require_data()
    splits, problems = {"train": competition.train_samples(), "test": []}, []
    if options.include_test:
        try:
            splits["test"] = competition.test_samples()
        except PodiumError as e:  # the training images still deserve their checks
            problems.append(f"test images: cannot list them ({e})")
    out_dir = Path(options.out_dir or Path(cfg.paths.root_dir) / "doctor")
    # One cache per data folder: image-folder reads many, under one competition name.
    where = hashlib.sha1(str(competition.data_dir.resolve()).encode()).hexdigest()[:8]
    cache = out_dir / ".cache" / f"{competition.name}-{where}.npz"
    entries = scan(competition, splits, cache, resolve_num_workers(options.workers) or 1)
    report = write_report(competition, entries, options, out_dir, problems)
    for line in report.summary:
        print(line)
    print("problems:" if report.problems else "no problems found")
    for line in report.problems:
        print(f"  - {line}")
    print(f"report: {report.path}")
    return 0


def write_report(
    competition: Competition,
    entries: list[Entry],
    options: DictConfig,
    out_dir: Path,
    problems: Sequence[str] = (),
) -> Report:
    """Write `<out_dir>/<competition>.md`, and its figures and pairs.csv in
    `<out_dir>/<competition>/`; `problems` found before the scan come first."""
    from podium.doctor.duplicates import duplicates_section
    from podium.doctor.sections import images_section, masks_section, splits_section

    files = out_dir / competition.name
    files.mkdir(parents=True, exist_ok=True)
    readable = [e for e in entries if not e.facts.error.startswith("image")]
    sections = [
        images_section(entries, readable, files),
        masks_section(competition, [e for e in readable if e.split == "train"], files),
        splits_section(readable, files),
        duplicates_section(competition, entries, readable, options, files),
    ]
    problems = [*problems, *(p for s in sections for p in s.problems)]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# Data doctor: {competition.name}",
        "",
        f"`{competition.data_dir}`, {stamp}: `podium doctor competition={competition.name}`.",
        "",
        "## Problems",
        "",
        *([f"- {p}" for p in problems] or ["None found."]),
    ]
    for section in sections:
        lines += ["", f"## {section.title}", "", *section.body]
    path = out_dir / f"{competition.name}.md"
    io.write_text(path, "\n".join(lines) + "\n")
    return Report(path, [s.summary for s in sections], problems)
