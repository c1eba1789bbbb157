"""`podium export` and `podium dryrun`: a code competition's bundle, and its kernel run here the
way Kaggle runs it (offline, read-only input, a fresh Python holding only the image's packages).

The slow tests share one module fixture: two tiny demo runs (one `train -m` sweep), tuned,
predicted with `podium predict`, and exported with `dryrun=true`. The demo has no Kaggle slug,
so these exports give it one (competition.kaggle=demo-shapes).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import TINY_DEMO, TINY_TRAIN, run_podium
from kaggle_fake import FakeCompetition, FakeKaggle

from podium import cli, export, kernel_script, ledger, packages, rundir
from podium.dryrun import probe_sandbox
from podium.models import load_run_model

SLUG = "demo-shapes"
USER = "alice"
KERNEL, DATASET = f"{USER}/{SLUG}-podium-infer", f"{USER}/{SLUG}-podium"
KEY = "podium-export-secret-key-51b2"
EXPORT = [*TINY_DEMO[1:], f"competition.kaggle={SLUG}", f"user={USER}", "tta=flip"]


def sandbox_mode() -> str:
    with tempfile.TemporaryDirectory(prefix="podium-probe-") as scratch:
        return probe_sandbox(Path(scratch))[0]


needs_sandbox = pytest.mark.skipif(
    sandbox_mode() == "none", reason="no network namespace here (unshare --net)"
)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line (progress lines of the log aside), and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("podium: error")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def exported(demo_paths, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("export")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as podium's subprocesses here (OMP_NUM_THREADS=1)
    try:  # in this process: no interpreter start, no second import of torch and smp
        sweep = [*TINY_DEMO, *TINY_TRAIN, *demo_paths, "fold=0,1", f"hydra.sweep.dir={base}/runs"]
        assert cli.main(["train", "-m", *sweep]) == 0
        runs = sorted(p.parent for p in (base / "runs").glob("*/config.yaml"))
        assert len(runs) == 2
        listed = f"runs=[{','.join(str(r) for r in runs)}]"
        tune = [*TINY_DEMO[1:], *demo_paths, listed, "progress=false", f"hydra.run.dir={base}/tune"]
        assert cli.main(["tune", *tune]) == 0
    finally:
        torch.set_num_threads(threads)
    predict = base / "predict"
    run_podium(
        "predict", *TINY_DEMO[1:], *demo_paths, listed, "tta=flip", f"hydra.run.dir={predict}"
    )
    bundle = base / "bundle"
    proc = run_podium("export", *EXPORT, *demo_paths, listed, f"out={bundle}", "dryrun=true")
    return {
        "base": base, "runs": runs, "listed": listed, "predict": predict, "bundle": bundle,
        "paths": demo_paths, "output": proc.stdout + proc.stderr,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# without training
def test_the_bundle_ships_what_the_image_lacks_and_never_torch():
    plan = packages.plan_packages(["torch", "torchvision", "numpy", "pandas"])
    needed = packages.dependency_closure(["podium"]) - {"podium"}
    assert set(plan.bundle) | set(plan.image) == needed
    assert not set(plan.bundle) & set(plan.image)
    assert {"torch", "torchvision", "numpy", "pandas"} <= set(plan.image)
    # what torch pulls in (its CUDA libraries, sympy...) is the image's too
    assert "sympy" in plan.image and not [n for n in plan.bundle if n.startswith("nvidia")]
    assert {"omegaconf", "hydra-core", "segmentation-models-pytorch", "timm"} <= set(plan.bundle)
    lock = packages.locked_versions()
    assert all(lock[name] == version for name, version in plan.bundle.items())
    assert "torch" in packages.plan_packages([]).bundle  # nothing provided: everything shipped


def test_the_kernel_script_is_filled_in_and_parses():
    settings = {"competition": "demo_shapes", "runs": ["runs/00_a"], "predict_overrides": []}
    source = export.kernel_source(settings)
    tree = ast.parse(source)
    assigned = [n for n in tree.body if isinstance(n, ast.AnnAssign) and n.target.id == "SETTINGS"]
    assert ast.literal_eval(assigned[0].value) == settings
    assert "--no-index" in source and "NO_ALBUMENTATIONS_UPDATE" in source
    assert kernel_script.quoted("/a/it's") == r"'/a/it\'s'"


def test_the_kernel_finds_inputs_where_kaggle_mounts_them(tmp_path: Path):
    (tmp_path / "input" / "datasets" / "alice" / "my-bundle").mkdir(parents=True)
    (tmp_path / "input" / "demo-shapes").mkdir()
    assert kernel_script.find_input(tmp_path, "demo-shapes", "x") == tmp_path / "input" / SLUG
    found = kernel_script.find_input(tmp_path, "my-bundle", "x")
    assert found == tmp_path / "input" / "datasets" / "alice" / "my-bundle"
    with pytest.raises(kernel_script.KernelFailed, match="attach the dataset a/b"):
        kernel_script.find_input(tmp_path, "missing", "the dataset a/b")


def in_process(capsys, *args: str) -> tuple[int, str]:
    """`podium ARGS` in this process (no interpreter start): exit code, the error line."""
    code = cli.main(list(args))
    errors = [line for line in capsys.readouterr().err.splitlines() if "podium: error" in line]
    assert len(errors) == (1 if code else 0), errors
    return code, errors[0] if errors else ""


def test_export_mistakes_are_one_line(capsys, tmp_path: Path):
    out = f"out={tmp_path / 'bundle'}"
    code, line = in_process(capsys, "export", "runs=[x]")
    assert code == 2 and "export needs out=DIR" in line
    code, line = in_process(capsys, "export", out, "runs=[x]", f"user={USER}")
    assert code == 2 and "has no Kaggle slug" in line
    code, line = in_process(
        capsys, "export", out, "runs=[x]", f"competition.kaggle={SLUG}", "user=a/b"
    )
    assert code == 2 and "expected a Kaggle user name" in line
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    code, line = in_process(capsys, "export", f"out={taken}", f"competition.kaggle={SLUG}")
    assert code == 1 and "is not a podium bundle" in line
    assert (taken / "mine.txt").read_text() == "keep me"
    code, line = in_process(capsys, "dryrun")
    assert code == 2 and "dryrun needs bundle=DIR" in line
    assert not (tmp_path / "bundle").exists()


def test_export_without_user_asks_for_one(kaggle_home, tmp_path: Path):
    proc = run_podium(
        "export", f"out={tmp_path / 'bundle'}", "runs=[x]", f"competition.kaggle={SLUG}",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2  # no user=, and no credentials in this clean Kaggle home
    assert "user= not given, and no Kaggle user from the credentials" in error_line(proc)


# ---------------------------------------------------------------------------------------------
# a bundle of trained runs
@pytest.mark.slow
def test_the_bundle_has_the_contract_layout(exported: dict):
    bundle = exported["bundle"]
    assert json.loads((bundle / "bundle.json").read_text()) == {
        "competition": "demo_shapes",
        "runs": [str(r) for r in exported["runs"]],
        "kernel": KERNEL,
        "dataset": DATASET,
    }
    meta = json.loads((bundle / "dataset" / "dataset-metadata.json").read_text())
    assert meta["id"] == DATASET and meta["licenses"] == [{"name": "CC0-1.0"}]
    kernel = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] is False and kernel["enable_gpu"] is True
    assert kernel["id"] == KERNEL and kernel["code_file"] == "infer.py"
    assert kernel["dataset_sources"] == [DATASET] and kernel["competition_sources"] == [SLUG]
    assert (bundle / "kernel" / "infer.py").is_file()
    dataset = bundle / "dataset"
    wheels = sorted(p.name for p in (dataset / "wheels").glob("*.whl"))
    names = {packages.canonical(w.split("-")[0]) for w in wheels}
    assert "podium" in names and {"omegaconf", "timm"} <= names
    assert not names & {"torch", "torchvision", "numpy", "nvidia-cublas"}
    competition = dataset / "competitions" / "demo_shapes"
    assert (competition / "adapter.py").is_file()
    assert f"kaggle: {SLUG}" in (competition / "competition.yaml").read_text()
    tuned = json.loads((dataset / "tuned.json").read_text())
    assert tuned["runs"] == ["runs/00_0_f0_s0", "runs/01_1_f1_s0"]

    for original, name in zip(exported["runs"], tuned["runs"], strict=True):
        run = dataset / name
        assert rundir.is_run(run)
        slim = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
        assert set(slim) == {"config", "model", "ema", "exported"}  # no optimizer, RNG...
        full = torch.load(original / "checkpoints" / "best.pt", weights_only=False)
        ema = {k[len("module.") :]: v for k, v in full["ema"].items() if k != "n_averaged"}
        assert slim["model"].keys() == ema.keys()
        assert all(torch.equal(slim["model"][k], ema[k]) for k in ema)  # the EMA weights
        model, _ = load_run_model(run)  # loads unchanged
        assert not model.training
    assert "dataset alice/demo-shapes-podium" in exported["output"]
    assert "biggest:" in exported["output"]


@pytest.mark.slow
def test_a_failed_export_leaves_no_folder(exported: dict, tmp_path: Path, capsys):
    out = tmp_path / "bundle"
    code, line = in_process(
        capsys, "export", *EXPORT, *exported["paths"], exported["listed"], f"out={out}",
        "podium_wheel=/nowhere/podium-0.1.0-py3-none-any.whl",
    )  # fmt: skip
    assert code == 1 and "not a podium-*.whl file" in line  # after the runs were written
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its partial folder


@pytest.mark.slow
@needs_sandbox
def test_the_dry_run_is_offline_and_matches_predict(exported: dict):
    bundle = exported["bundle"]
    report = json.loads((bundle / "dryrun" / "report.json").read_text())
    assert report["offline"] is True and report["interfaces"] == ["lo"]
    assert report["kernel_exit"] == 0 and report["failure"] is None
    assert report["input_written"] == [] and report["valid"] is True
    assert report["images"] == 8 and report["estimated_s"] > 0 and report["limit_s"] == 9 * 3600
    assert "network: cut off" in exported["output"]

    dry = bundle / "dryrun" / "submission.csv"
    predicted = exported["predict"] / "submission.csv"
    assert dry.read_bytes() == predicted.read_bytes()
    common = [*TINY_DEMO[1:], *exported["paths"]]
    assert "valid submission" in run_podium("validate", *common, f"file={dry}").stdout
    scored = run_podium("score", *common, f"file={dry}").stdout.splitlines()[-1]
    by_predict = json.loads((exported["predict"] / rundir.PREDICTED).read_text())["local_score"]
    assert scored == f"dice: {by_predict:.6f}"
    log = (bundle / "dryrun" / "kernel.log").read_text()
    assert "podium kernel: wrote" in log and "Retrying" not in log


@pytest.mark.slow
@needs_sandbox
def test_a_kernel_that_needs_the_index_fails_offline(exported: dict, tmp_path: Path):
    """A bundle missing a wheel, and a kernel that lets pip fall back on the package index: on a
    connected machine pip would fetch omegaconf; in the sandbox it cannot, and the dry run says
    so. (Without --no-index but with every wheel bundled, pip only retries the index for
    minutes and then installs from the wheels: --no-index is what keeps the kernel fast.)"""
    variant = tmp_path / "variant"
    shutil.copytree(exported["bundle"], variant, ignore=shutil.ignore_patterns("dryrun"))
    for wheel in (variant / "dataset" / "wheels").glob("omegaconf-*.whl"):
        wheel.unlink()
    script = variant / "kernel" / "infer.py"
    source = script.read_text()
    assert '"--no-index", ' in source
    variant_source = source.replace('"--no-index", ', '"--retries", "1", ')
    script.write_text(variant_source.replace('["-q", ', "["))  # pip's warnings in the log
    proc = run_podium("dryrun", *exported["paths"], f"bundle={variant}", check=False)
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith("podium: error: dry run failed: the kernel exited 1: ")
    assert "installing podium from the bundle's wheels" in line
    report = json.loads((variant / "dryrun" / "report.json").read_text())
    assert report["offline"] is True and report["kernel_exit"] == 1
    log = (variant / "dryrun" / "kernel.log").read_text()
    assert "pypi.org" in log and "omegaconf" in log
    assert "network: cut off" in proc.stdout and "last lines of the log" in proc.stdout


@pytest.fixture
def kaggle(kaggle_home, monkeypatch):
    from conftest import ROOT

    fake = FakeKaggle(key=KEY)
    fake.add_competition(FakeCompetition(SLUG, "Demo shapes", {}, code_competition=True))
    with fake:  # the podium subprocesses find the fake through these (tests/kaggle_sitecustomize)
        for name, value in {
            "KAGGLE_USERNAME": fake.username, "KAGGLE_KEY": KEY, "PODIUM_FAKE_KAGGLE_URL": fake.url,
            "PYTHONPATH": str(ROOT / "tests" / "kaggle_sitecustomize"),
        }.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        yield fake


@pytest.mark.slow
def test_export_push_submit_lands_a_score_joined_to_the_runs(exported: dict, kaggle, tmp_path):
    assert kaggle.username == USER
    bundle = exported["bundle"]
    common = [
        f"competition.kaggle={SLUG}", "competition.code_competition=true",
        f"paths.runs_dir={tmp_path / 'runs'}", "poll_interval=0.05",
    ]  # fmt: skip
    pushed = run_podium("push", f"bundle={bundle}", "message=export test", *common)
    assert f"kernel {KERNEL} version 1 pushed" in pushed.stdout
    uploaded = kaggle.datasets[DATASET].versions[0]
    assert {"wheels.zip", "runs.zip", "competitions.zip", "tuned.json"} <= set(uploaded.files)
    sent = kaggle.kernels[KERNEL].versions[0].request
    assert sent["enableInternet"] is False and sent["datasetDataSources"] == [DATASET]
    submitted = run_podium(
        "submit", f"kernel={KERNEL}", "version=1", "wait=true", f"bundle={bundle}", *common
    )
    assert "public score 0.75" in submitted.stdout
    [record] = ledger.submissions(ledger.read(tmp_path / "runs" / "demo_shapes" / "ledger.jsonl"))
    assert (record["kernel"], record["version"], record["public_score"]) == (KERNEL, 1, 0.75)
    assert record["runs"] == [str(r) for r in exported["runs"]]
