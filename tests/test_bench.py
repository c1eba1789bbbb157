"""Smoke tests of the benchmarks: each bench/ script runs at its --tiny size and ends with its
headline line. The scripts run in this process (`runpy`, as `python bench/x.py` would) so the
suite pays for torch's import once; results go to a temp file, never bench/RESULTS.md."""

from __future__ import annotations

import os
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def run_bench(tmp_path, monkeypatch, capsys):
    """run_bench(name, *args) -> (last printed line, text of the results file)."""
    results = tmp_path / "RESULTS.md"
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # the scripts set them; restored after
    threads = torch.get_num_threads()

    def run(name: str, *args: str) -> tuple[str, str]:
        script = BENCH / f"{name}.py"
        monkeypatch.setattr(sys, "argv", [str(script), "--tiny", "--results", str(results), *args])
        runpy.run_path(str(script), run_name="__main__")
        lines = capsys.readouterr().out.strip().splitlines()
        return lines[-1], results.read_text() if results.is_file() else ""

    yield run
    torch.set_num_threads(threads)


def test_train_step_times_podium_against_the_bare_loop(run_bench):
    last, results = run_bench("train_step", "--models", "mobilenet_v2")
    assert re.fullmatch(r"train_step ratio \d+\.\d{3}", last)
    assert "| Unet mobilenet_v2 | 64px x 2 |" in results
    assert "EMA update (every step)" in results  # the price list of podium's extras


def test_loader_reports_per_worker_speed_and_headroom(run_bench):
    last, results = run_bench("loader")
    assert re.fullmatch(r"loader headroom \d+\.\d{2}", last)
    assert "generated 622x530 JPEGs" in results and re.search(r"\| 64px \| \d+ \| ", results)


def test_rle_matches_its_peers_and_keeps_a_short_history(run_bench, tmp_path):
    (tmp_path / "RESULTS.md").write_text("# Benchmarks\n\nHand-written summary.\n")
    first, _ = run_bench("rle")
    assert re.fullmatch(r"rle ratio \d+\.\d{3}", first)
    _, results = run_bench("rle")
    assert results.startswith("# Benchmarks\n\nHand-written summary.\n")
    assert results.count("## rle (tiny)") == 1  # replaced, not appended
    assert re.search(r"Earlier runs:\n- .*\(tiny\): rle ratio \d", results)
    assert "Kaggle kernel (C)" in results and "pytorch-toolbelt (F)" in results


def test_predict_compares_podium_predict_with_a_bare_loop(run_bench):
    last, results = run_bench("predict")
    assert re.fullmatch(r"predict ratio \d+\.\d{3}", last)
    assert "| podium predict |" in results and "| bare loop |" in results


def test_quality_trains_random_and_pretrained_through_podium(run_bench, tmp_path):
    import segmentation_models_pytorch as smp
    from loader import generate_folder
    from safetensors.torch import save_file

    generate_folder(tmp_path / "data" / "kvasir_seg", 8)
    weights = tmp_path / "encoder.safetensors"
    encoder = smp.Unet("mobilenet_v2", encoder_weights=None).encoder
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(weights))
    last, results = run_bench(
        "quality", "--datasets", "kvasir_seg", "--data-root", str(tmp_path / "data"),
        "--weights", str(weights),
    )  # fmt: skip
    assert re.fullmatch(r"quality ratio \d+\.\d{3}", last)
    assert "| kvasir_seg | iou | random init |" in results
    assert "| kvasir_seg | iou | ImageNet |" in results


def test_quality_without_real_data_says_so_and_records_nothing(run_bench, tmp_path):
    last, results = run_bench("quality", "--data-root", str(tmp_path / "nothing"))
    assert last == "quality skipped: no real data (../shared/data) on this machine"
    assert results == ""


def test_ddp_trains_one_and_two_processes_at_the_same_global_batch(run_bench):
    last, results = run_bench("ddp")
    assert re.fullmatch(r"ddp score gap \d+\.\d{4}", last)
    assert re.search(r"\| 0 \| \d\.\d{3} \| \d\.\d{3} \| [+-]\d\.\d{4} \|", results)
    assert "global batch 4: 1 process x 4 against 2 processes x 2" in results


def test_datacheck_times_a_first_and_a_cached_check(run_bench, tmp_path):
    from loader import generate_folder

    generate_folder(tmp_path / "data" / "kvasir_seg", 6)
    last, results = run_bench(
        "datacheck", "--datasets", "kvasir_seg", "--data-root", str(tmp_path / "data")
    )
    assert re.fullmatch(r"datacheck second run \d+\.\d{2} s \(first/second x\d+\.\d\)", last)
    assert re.search(r"\| kvasir_seg \| 6 \| 0 \| \d+\.\d{3} \| \d+\.\d{3} \| ", results)


def test_datacheck_without_real_data_says_so_and_records_nothing(run_bench, tmp_path):
    last, results = run_bench("datacheck", "--data-root", str(tmp_path / "nothing"))
    assert last == "datacheck skipped: no real data (../shared/data) on this machine"
    assert results == ""


@pytest.mark.slow
def test_estimate_compares_an_estimate_with_the_run_it_estimates(run_bench):
    last, results = run_bench("estimate")
    headline = r"estimate ratio \d+\.\d{3} \(estimate / measured, [\d.]+\.\.[\d.]+\)"
    assert re.fullmatch(headline, last)
    assert "tiny demo (48 images, 64 px)" in results and re.search(r"\| 1 \| [\d.]+ \| ", results)


def test_levers_without_real_data_says_so_and_records_nothing(run_bench, tmp_path):
    last, results = run_bench("levers", "--data-root", str(tmp_path / "nothing"))
    assert (
        last
        == f"levers skipped: no real TGS data ({tmp_path / 'nothing' / 'tgs_salt'}) on this machine"
    )
    assert results == ""
