"""`podium runs` and `podium writeup` on REAL tiny demo trainings: two experiments (bce_dice and
dice loss), 2 folds x 2 seeds each, trained once per session by the CLI. Every number the reports
show is checked against the runs' own summary.json files."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from podium import ledger, report
from podium.competition import load_competition
from podium.config import compose_config
from podium.io import PodiumError

ROOT = Path(__file__).resolve().parents[1]
DATA = [
    "competition.options.n_train=20",
    "competition.options.n_test=4",
    "competition.options.size=64",
]
TINY = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=1",
    "trainer.batch_size=8",
    "trainer.num_workers=0",
    "trainer.progress=false",
    # A 0.4M-parameter UNet: checkpoints of a few MB keep 8 runs cheap on a busy disk.
    "model.encoder=tu-mobilenetv3_small_050",
    "model.kwargs={decoder_channels:[32,16,8,8,8]}",
]
# TEST FIXTURES, not results: leaderboard scores invented so the CV-vs-LB join can be tested.
FAKE_LB = {"9001": (0.61, 0.6), "9002": (0.55, 0.54), "9003": (0.58, None)}


def podium(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # One math thread: on a shared, oversubscribed CPU two OpenMP threads spin against each other
    # and a step of this tiny model takes seconds instead of a tenth of one.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "podium.cli", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"podium {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """Data, 8 real runs in two experiments, fabricated submissions and a predict folder."""
    base = tmp_path_factory.mktemp("report")
    paths = [
        f"paths.data_dir={base / 'data'}",
        f"paths.runs_dir={base / 'runs'}",
        f"paths.root_dir={base}",
    ]
    # The demo's data, made in-process (`podium download` runs this same adapter step).
    load_competition(compose_config("tools", [*DATA, *paths])).prepare()
    sweep = base / "runs" / "demo_shapes" / "sweep"
    podium(
        "train", "-m", "experiment=demo", "loss=bce_dice,dice", "experiment_name=demo_${loss.name}",
        "fold=0,1", "seed=0,1", *TINY, *DATA, *paths, f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    summaries = {}
    for path in sorted(sweep.glob("*/summary.json")):
        summaries[path.parent] = json.loads(path.read_text())
    assert len(summaries) == 8
    by = {(s["experiment_name"], s["fold"], s["seed"]): d for d, s in summaries.items()}
    ledger_file = ledger.ledger_path(base / "runs", "demo_shapes")
    # Submissions refer to their runs in the three ways record_submission accepts.
    ledger.record_submission(
        ledger_file, ref=9001, runs=["demo_bce_dice"], message="fixture: all bce_dice runs",
        public_score=FAKE_LB["9001"][0], private_score=FAKE_LB["9001"][1],
    )  # fmt: skip
    ledger.record_submission(
        ledger_file, ref=9002, message="fixture: dice seed zero",
        runs=[by["demo_dice", 0, 0], by["demo_dice", 1, 0].relative_to(sweep.parent)],
    )  # fmt: skip
    ledger.record_submission(ledger_file, ref=9002, public_score=FAKE_LB["9002"][0])
    ledger.record_submission(ledger_file, ref=9002, private_score=FAKE_LB["9002"][1])
    # A `podium tune` and a `podium predict` folder as podium/infer.py leaves them (fixtures:
    # the JSON files it writes, with invented values), and a submission made from the latter.
    mixed = [str(by["demo_bce_dice", 0, 0]), str(by["demo_dice", 0, 0])]
    tune_dir, predict_dir = sweep.parent / "tune_fixture", sweep.parent / "predict_fixture"
    tune_dir.mkdir()
    predict_dir.mkdir()
    tuned = {"threshold": 0.45, "min_area": 12.0, "empty_area": 0.0}
    defaults = {"threshold": 0.5, "min_area": 0.0, "empty_area": 0.0}
    (tune_dir / "tuned.json").write_text(json.dumps({
        "competition": "demo_shapes", "metric": "dice", "runs": mixed, "run_weights": [1.0, 1.0],
        "images": 8, "postprocess": tuned, "tta": None, "area_basis": [64, 64],
        "default": defaults, "default_score": 0.5, "tuned_score": 0.52, "gain": 0.02,
        "by_tta": None,
    }))  # fmt: skip
    (predict_dir / "predict.json").write_text(json.dumps({
        "competition": "demo_shapes", "submission": str(predict_dir / "submission.csv"),
        "rows": 4, "images": 4, "runs": mixed, "run_weights": [1.0, 1.0], "tta": "flip",
        "tta_scales": [1.0], "views": 4, "postprocess": tuned,
        "tuned": str(tune_dir / "tuned.json"), "tile_size": None, "device": "cpu",
        "precision": "fp32", "duration_s": 1.0, "images_per_s": 4.0, "local_score": None,
    }))  # fmt: skip
    (predict_dir / "submission.csv").write_text("id,rle_mask\n")
    ledger.record_submission(
        ledger_file, ref=9003, file=predict_dir / "submission.csv", message="fixture: mixed",
        public_score=FAKE_LB["9003"][0],
    )  # fmt: skip
    return {"base": base, "paths": paths, "summaries": summaries, "by": by, "sweep": sweep}


def tools_config(demo, *overrides: str):
    return compose_config("tools", [*demo["paths"], *overrides])


def expected_stats(summaries: dict) -> dict:
    """Independently of podium.report: the statistics of each experiment, from summary.json."""
    stats = {}
    for name in ("demo_bce_dice", "demo_dice"):
        cells = {
            (s["seed"], s["fold"]): s["best_score"]
            for s in summaries.values()
            if s["experiment_name"] == name
        }
        seeds = sorted({k[0] for k in cells})
        folds = sorted({k[1] for k in cells})
        seed_means = {s: statistics.fmean(cells[s, f] for f in folds) for s in seeds}
        stats[name] = {
            "cells": cells,
            "mean": statistics.fmean(cells.values()),
            "std": statistics.stdev(cells.values()),
            "seed_means": seed_means,
            "seed_std": statistics.stdev(seed_means.values()),
            "fold": {
                f: (statistics.fmean(cells[s, f] for s in seeds),
                    statistics.stdev(cells[s, f] for s in seeds))
                for f in folds
            },
        }  # fmt: skip
    return stats


def fmt(x: float) -> str:
    return f"{x:.4f}"


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table of a Markdown text, as rows of {header: cell}."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
            continue
        if block:
            header, _rule, *rows = block
            tables.append([dict(zip(header, row, strict=True)) for row in rows])
            block = []
    return tables


def test_runs_prints_both_experiments_with_mean_and_spread(demo):
    stats = expected_stats(demo["summaries"])
    out = podium("runs", *demo["paths"]).stdout
    (table,) = markdown_tables(out)[:1]
    rows = {row["Experiment"]: row for row in table}
    assert set(rows) == {"demo_bce_dice", "demo_dice"}
    for name, s in stats.items():
        row = rows[name]
        assert row["Runs"] == "4" and row["Folds"] == "0, 1" and row["Seeds"] == "0, 1"
        # The mean over all runs, not the best run: the spread is reported beside it.
        assert row["CV mean ± std (runs)"] == f"{fmt(s['mean'])} ± {fmt(s['std'])}"
        assert row["Std of seed means"] == fmt(s["seed_std"])
    # Best LB: only submissions made from that experiment's runs alone (9003 mixes both).
    assert rows["demo_bce_dice"]["Best LB public / private"] == "0.6100 / 0.6000"
    assert rows["demo_dice"]["Best LB public / private"] == "0.5500 / 0.5400"
    assert "std (runs): sample standard deviation (n-1)" in out
    assert "8 runs in 2 experiments, 3 submissions" in out


def test_runs_lists_the_runs_of_chosen_experiments(demo, capsys):
    assert report.runs_command(tools_config(demo, "experiments=[demo_dice]")) == 0
    tables = markdown_tables(capsys.readouterr().out)
    assert [r["Experiment"] for r in tables[0]] == ["demo_dice"]
    runs = {(r["Fold"], r["Seed"]): r["CV"] for r in tables[1]}
    cells = expected_stats(demo["summaries"])["demo_dice"]["cells"]
    assert runs == {(str(f), str(s)): fmt(v) for (s, f), v in cells.items()}


def test_runs_diff_of_experiments_and_of_runs(demo, capsys):
    assert report.runs_command(tools_config(demo, "diff=[demo_bce_dice,demo_dice]")) == 0
    out = capsys.readouterr().out
    diff = {r["Key"]: (r["A"], r["B"]) for r in markdown_tables(out)[0]}
    assert diff == {"`loss.name`": ("bce_dice", "dice"), "`loss.weights.bce`": ("1.0", "(absent)")}
    # A run by its folder against a run by its id: fold and seed differ too.
    by, sweep = demo["by"], demo["sweep"]
    a = by["demo_bce_dice", 0, 0]
    b = by["demo_bce_dice", 1, 1].relative_to(sweep.parent)
    assert report.runs_command(tools_config(demo, f"diff=[{a},{b}]")) == 0
    diff = {r["Key"]: (r["A"], r["B"]) for r in markdown_tables(capsys.readouterr().out)[0]}
    assert diff == {"`fold`": ("0", "1"), "`seed`": ("0", "1")}
    with pytest.raises(PodiumError, match="'nope' is neither a run"):
        report.runs_command(tools_config(demo, "diff=[demo_dice,nope]"))
    with pytest.raises(PodiumError, match="experiments: no runs of nope"):
        report.runs_command(tools_config(demo, "experiments=[nope]"))


def test_writeup_numbers_match_the_summaries_and_figures_exist(demo, tmp_path):
    cfg = tools_config(demo, f"+writeup_dir={tmp_path}")
    assert report.writeup_command(cfg) == 0
    text = (tmp_path / "demo_shapes.md").read_text()
    stats = expected_stats(demo["summaries"])
    tables = markdown_tables(text)
    summary, per_fold_bce, per_fold_dice, submissions, ablation = tables

    # Results table.
    for row in summary:
        s = stats[row["Experiment"]]
        assert row["CV mean ± std (runs)"] == f"{fmt(s['mean'])} ± {fmt(s['std'])}"
        assert row["Std of seed means"] == fmt(s["seed_std"])
    # Per fold and seed: each cell is that run's summary.json best_score.
    for name, table in (("demo_bce_dice", per_fold_bce), ("demo_dice", per_fold_dice)):
        s = stats[name]
        for row in table[:2]:
            seed = int(row["Seed"])
            assert row["Fold 0"] == fmt(s["cells"][seed, 0])
            assert row["Fold 1"] == fmt(s["cells"][seed, 1])
            assert row["Mean over folds"] == fmt(s["seed_means"][seed])
        spread = table[2]
        assert spread["Fold 1"] == f"{fmt(s['fold'][1][0])} ± {fmt(s['fold'][1][1])}"
        assert spread["Mean over folds"] == f"{fmt(s['mean'])} ± {fmt(s['seed_std'])}"
    # Submissions: the leaderboard fixtures, and the CV of exactly the runs behind each file.
    subs = {row["Ref"]: row for row in submissions}
    by = demo["by"]
    score = {k: demo["summaries"][d]["best_score"] for k, d in by.items()}
    cv_of = {
        "9001": statistics.fmean(score["demo_bce_dice", f, s] for f in (0, 1) for s in (0, 1)),
        "9002": statistics.fmean([score["demo_dice", 0, 0], score["demo_dice", 1, 0]]),
        "9003": statistics.fmean([score["demo_bce_dice", 0, 0], score["demo_dice", 0, 0]]),
    }
    for ref, (public, private) in FAKE_LB.items():
        assert subs[ref]["Public LB"] == fmt(public)
        assert subs[ref]["Private LB"] == (fmt(private) if private is not None else "—")
        assert subs[ref]["Mean CV of its runs"] == fmt(cv_of[ref])
    assert subs["9003"]["Experiments"] == "demo_bce_dice, demo_dice"
    # The ablation: one setting (the loss) changed.
    (row,) = ablation
    assert (row["Setting"], row["Baseline"], row["Changed to"]) == (
        "`loss.name`",
        "bce_dice",
        "dice",
    )
    delta = stats["demo_dice"]["mean"] - stats["demo_bce_dice"]["mean"]
    assert row["Δ CV"] == f"{delta:+.4f}"

    # Every decimal number in every table is one of the values above: nothing else, no NaN.
    allowed = {fmt(v) for v in cv_of.values()} | {f"{delta:+.4f}"}
    allowed |= {fmt(v) for pair in FAKE_LB.values() for v in pair if v is not None}
    for s in stats.values():
        allowed |= {fmt(v) for v in (s["mean"], s["std"], s["seed_std"])}
        allowed |= {fmt(v) for v in [*s["cells"].values(), *s["seed_means"].values()]}
        allowed |= {fmt(v) for pair in s["fold"].values() for v in pair}
    found = [n for table in tables for row in table for cell in row.values()
             for n in re.findall(r"[+-]?\d+\.\d+", cell)]  # fmt: skip
    assert len(found) > 40
    assert set(found) <= allowed, set(found) - allowed
    assert "nan" not in text.lower()

    # Method from the resolved configs; inference from the predict folder.
    assert "`tu-mobilenetv3_small_050`, no pretraining (random initialisation)" in text
    assert "`bce_dice` = 1·dice + 1·bce" in text and "`dice` = 1·dice" in text
    assert (
        "probabilities averaged over 2 runs (1 × demo_bce_dice, 1 × demo_dice); TTA `flip` "
        "(4 views); post-processing threshold 0.45, min_area 12, empty_area 0 (tuned in "
        "`tune_fixture`)" in text
    )
    assert "OOF dice 0.5000 with the defaults (threshold 0.5, min_area 0, empty_area 0) -> " in text
    assert "podium train -m experiment=demo loss=bce_dice" in text
    assert str(demo["base"] / "data") not in text  # machine paths stay out of commands
    assert "**[TODO:" in text

    # Three figures, linked and non-empty PNGs.
    for name in ("learning_curves", "cv_vs_lb", "validation_grid"):
        png = tmp_path / f"demo_shapes_{name}.png"
        assert f"]({png.name})" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_writeup_does_not_overwrite_a_person_s_edits(demo, tmp_path):
    cfg = tools_config(demo, f"+writeup_dir={tmp_path}", "experiments=[demo_dice]")
    report.writeup_command(cfg)
    out = tmp_path / "demo_shapes.md"
    report.writeup_command(cfg)  # unedited: regenerated freely
    out.write_text(out.read_text().replace("**[TODO: title]**", "Stripes"))
    with pytest.raises(PodiumError, match="demo_shapes.md: edited since podium wrote it"):
        report.writeup_command(cfg)
    assert "Stripes" in out.read_text()
    report.writeup_command(tools_config(demo, f"+writeup_dir={tmp_path}", "force=true"))
    assert "Stripes" not in out.read_text()


def test_validation_cases_reproduce_each_run_s_score(demo):
    """The grid's per-image scores are the runs' own: their mean is summary.json's best_score."""
    results = report.load_results(tools_config(demo))
    for run in results.runs:
        competition = load_competition(OmegaConf.create(run.config))
        cases = report.oof_cases(run, competition)
        assert len(cases) == 4
        # Equal up to the uint8 rounding of the saved probabilities.
        assert statistics.fmean(c.score for c in cases) == pytest.approx(run.score, abs=0.01)


def test_empty_ledger_is_a_clear_error(tmp_path):
    cfg = compose_config("tools", [f"paths.runs_dir={tmp_path}", f"paths.root_dir={tmp_path}"])
    with pytest.raises(PodiumError, match="ledger.jsonl: no training runs recorded yet"):
        report.runs_command(cfg)
    done = podium(
        "writeup", f"paths.runs_dir={tmp_path}", f"paths.root_dir={tmp_path}", check=False
    )
    assert done.returncode == 1 and "no training runs recorded yet" in done.stderr
    assert not (tmp_path / "writeup").exists()
