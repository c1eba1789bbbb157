"""`podium dryrun competition=X bundle=DIR`: a bundle's kernel run here as Kaggle would run it.

Kaggle's runtime, rebuilt in a scratch folder ROOT:

    ROOT/input/<competition slug>/   the local competition data folder (the public test set)
    ROOT/input/<dataset slug>/       the bundle's dataset/
    ROOT/working/                    the kernel's working folder, where submission.csv lands
    ROOT/venv/                       a fresh Python holding only what the image provides to
                                     podium (export.json; uv installs it from its cache), pip

The kernel (the bundle's kernel/infer.py, unchanged, with PODIUM_KAGGLE_ROOT=ROOT) runs in a new
network namespace (`unshare --net`: no interface but a loopback that is down) with both input
folders bind-mounted read-only, in a clean environment (no pip configuration, an empty home, so
no package index, cache or credential of this machine reaches it). Where unshare cannot do
that, the report says so and does not call the run offline.

The dry run then validates the submission with the bundled adapter, scores it when the
competition has a local solution, and reports wall time and peak memory, extrapolated to the
hidden test set (competition.hidden_test_images) against competition.kernel_time_limit_h.
Report, kernel log and submission go to DIR/dryrun/.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from podium import io, packages, submission
from podium.competition import load_competition
from podium.config import ConfigError, load_competition_yaml
from podium.io import PodiumError

__all__ = ["dryrun_command", "dryrun_bundle", "probe_sandbox", "format_report"]

REPORT_FOLDER = "dryrun"
# Run inside the sandbox by the image's Python: times the kernel, and notes the largest process
# of its tree (getrusage counts every descendant the kernel waited for) and the network
# interfaces the sandbox has.
_MEASURE = r"""
import json, resource, socket, subprocess, sys, time
report, log, command = sys.argv[1], sys.argv[2], sys.argv[3:]
interfaces = sorted(name for _, name in socket.if_nameindex())
start = time.monotonic()
with open(log, "wb") as out:
    code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(report, "w") as f:
    json.dump({"exit": code, "wall_s": time.monotonic() - start,
               "largest_process_kib": usage.ru_maxrss, "interfaces": interfaces}, f)
"""
# Hardware settings of this machine the kernel may keep (Kaggle sets its own).
_PASSED_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def dryrun_command(cfg: DictConfig) -> int:
    """`podium dryrun competition=X bundle=DIR`: exit 1 when the kernel run fails."""
    if not cfg.bundle:
        raise ConfigError("dryrun needs bundle=DIR (a folder made by podium export)")
    dryrun_bundle(cfg, Path(str(cfg.bundle)))
    return 0


def dryrun_bundle(cfg: DictConfig, bundle_dir: Path) -> dict[str, Any]:
    """Run the bundle's kernel offline here; print and save the report. A failed run is a
    PodiumError naming why (the report is saved first)."""
    from podium.kaggle.commands import read_bundle

    bundle_dir = bundle_dir.expanduser().resolve()
    bundle = read_bundle(bundle_dir)
    if bundle.get("competition") != cfg.competition.name:
        raise ConfigError(
            f"bundle={bundle_dir} was exported for {bundle.get('competition')}, not "
            f"{cfg.competition.name} (add competition={bundle.get('competition')})"
        )
    kernel_meta = io.read_json(bundle_dir / "kernel" / "kernel-metadata.json")
    exported = io.read_json(bundle_dir / "export.json")
    local_data = Path(cfg.competition.data_dir)
    if not local_data.is_dir():
        raise PodiumError(
            f"{local_data}: no data for {cfg.competition.name}, the dry run's test set; run "
            f"podium download competition={cfg.competition.name} (or set paths.data_dir)"
        )
    keep = bool(cfg.get("dryrun_dir"))
    root = Path(str(cfg.dryrun_dir)) if keep else Path(tempfile.mkdtemp(prefix="podium-dryrun-"))
    root = root.expanduser().resolve()
    if keep and root.exists() and any(root.iterdir()):
        raise PodiumError(f"dryrun_dir={cfg.dryrun_dir}: not empty; choose a new folder")
    print(f"dry run of {bundle_dir} (kernel {bundle['kernel']}) in {root}", flush=True)
    try:
        inputs = {
            kernel_meta["competition_sources"][0]: local_data,
            kernel_meta["dataset_sources"][0].split("/")[-1]: bundle_dir / "dataset",
        }
        limit_h = cfg.competition.get("kernel_time_limit_h")
        script = bundle_dir / "kernel" / "infer.py"
        report = _run_kernel(root, script, inputs, exported, limit_h and float(limit_h) * 3600)
        report |= _check_outputs(cfg, root, bundle_dir, local_data, report)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    report["failure"] = _failure(report)
    io.write_json(bundle_dir / REPORT_FOLDER / "report.json", report)
    print(format_report(report))
    if report["failure"]:
        raise PodiumError(f"dry run failed: {report['failure']}")
    return report


def probe_sandbox(scratch: Path) -> tuple[str, str]:
    """How far this machine can cut a process off: ("net+mount", ""), ("net", why no
    read-only mounts) or ("none", why no network namespace)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "none", "unshare not found"
    source, target = scratch / "probe-source", scratch / "probe-target"
    source.mkdir(parents=True, exist_ok=True)
    target.mkdir(exist_ok=True)
    try:
        probe = [unshare, *_UNSHARE_MOUNT, "sh", "-c", _MOUNT_ONE, "probe", source, target]
        mounted = _quiet_run(probe)
        if mounted is None:
            return "net+mount", ""
        netns = _quiet_run([unshare, "--net", "true"])
        if netns is None:
            return "net", f"no read-only bind mounts ({mounted})"
        return "none", f"unshare --net failed ({netns})"
    finally:
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)


_UNSHARE_MOUNT = ["--net", "--mount", "--propagation", "private"]
_MOUNT_ONE = 'mount --bind -o ro "$1" "$2"'


def _quiet_run(command: list) -> str | None:
    """None when `command` succeeds, else its last line of output."""
    try:
        proc = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    except OSError as e:
        return str(e)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr + proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def _make_image_python(venv: Path, provides: dict[str, str]) -> Path:
    """A fresh virtual environment holding exactly `provides` (no dependencies resolved: the
    list is closed) and pip, from uv's cache."""
    uv = packages.uv_executable()
    python = venv / "bin" / "python"
    steps = [
        [uv, "venv", "-q", "--seed", venv, "--python", sys.executable],
        [uv, "pip", "install", "-q", "--no-deps", "-p", python]
        + [f"{name}=={version}" for name, version in provides.items()],
    ]
    for step in steps:
        why = _quiet_run(step)
        if why is not None:
            raise PodiumError(f"dry run: making the image's Python failed: {why}")
    return python


def _run_kernel(
    root: Path, script: Path, inputs: dict[str, Path], exported: dict, limit_s: float | None
) -> dict:
    """Lay out ROOT, run the kernel script in the sandbox; its measurements."""
    for folder in ("working", "home", "tmp"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    print("  making the image's Python (uv, from its cache)", flush=True)
    python = _make_image_python(root / "venv", exported["image"]["provides"])
    mode, why = probe_sandbox(root / "tmp")
    mounts = []
    for slug, source in inputs.items():
        target = root / "input" / slug
        if mode == "net+mount":
            target.mkdir(parents=True)
            mounts += [source, target]
        else:  # no mount namespace: the folders are linked, and written files are looked for
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source, target_is_directory=True)
    measured_file, log = root / "measured.json", root / "kernel.log"
    inner = [python, "-c", _MEASURE, measured_file, log, python, script]
    command = _sandboxed(mode, mounts, inner)
    before = {source: _snapshot(source) for source in inputs.values()}
    print(f"  running the kernel ({_describe_sandbox(mode, why)})", flush=True)
    env = _kernel_env(root, python)
    peak = _run_measuring([str(c) for c in command], env, root / "working", limit_s)
    measured = io.read_json(measured_file) if measured_file.is_file() else {"exit": None}
    written = [
        str(source / path)
        for source, old in before.items()
        for path, state in sorted(_snapshot(source).items())
        if old.get(path) != state
    ]
    offline = mode != "none" and measured.get("interfaces") == ["lo"]
    return {
        "sandbox": mode,
        "sandbox_note": why,
        "offline": offline,
        "interfaces": measured.get("interfaces"),
        "input_read_only": mode == "net+mount",
        "input_written": written,
        "kernel_exit": measured.get("exit"),
        "wall_s": round(measured.get("wall_s", 0.0), 1),
        "peak_memory_mib": round(peak / 2**20, 1),
        "largest_process_mib": round(measured.get("largest_process_kib", 0) / 1024, 1),
        "log_tail": _tail(log, 20),
        "_log": str(log),
    }


def _sandboxed(mode: str, mounts: list[Path], inner: list) -> list:
    """`inner` in a new network namespace (and a mount namespace binding each `mounts` pair
    read-only) as far as `mode` allows."""
    if mode == "net+mount":
        binds = "".join(
            f'mount --bind -o ro "${i + 1}" "${i + 2}"\n' for i in range(0, len(mounts), 2)
        )
        script = f'set -e\n{binds}shift {len(mounts)}\nexec "$@"\n'
        return ["unshare", *_UNSHARE_MOUNT, "sh", "-c", script, "sandbox", *mounts, *inner]
    return (["unshare", "--net"] if mode == "net" else []) + inner


def _kernel_env(root: Path, python: Path) -> dict[str, str]:
    """A clean environment, as on Kaggle: the image's Python first on PATH, an empty home (no
    caches, credentials or pip configuration of this machine), PODIUM_KAGGLE_ROOT."""
    env = {
        "PATH": f"{python.parent}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,  # no index or find-links of this machine
        "PODIUM_KAGGLE_ROOT": str(root),
    }
    return env | {name: os.environ[name] for name in _PASSED_VARIABLES if name in os.environ}


def _describe_sandbox(mode: str, why: str) -> str:
    if mode == "net+mount":
        return "network cut off: unshare --net; input/ mounted read-only"
    if mode == "net":
        return f"network cut off: unshare --net; input/ writable, {why}"
    return f"NOT offline: {why}; the kernel runs with this machine's network"


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file below `folder`, to see what the kernel wrote there."""
    found = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            path = Path(directory) / name
            stat = path.lstat()
            found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return found


def _run_measuring(command: list[str], env: dict, cwd: Path, timeout_s: float | None) -> int:
    """Run `command`; return the peak of the summed memory of its process tree, sampled every
    quarter second: proportional set sizes (else RSS), so that pages the processes share (a
    forked DataLoader worker's) count once; pages shared with processes outside the tree
    count in part."""
    proc = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True)
    peak, started = 0, time.monotonic()
    try:
        while proc.poll() is None:
            peak = max(peak, _tree_memory(proc.pid))
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise PodiumError(f"dry run: the kernel ran past the {timeout_s / 3600:g} h limit")
            time.sleep(0.25)
    except BaseException:  # the limit, or Ctrl-C (its own session does not get the signal)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole tree: pip, podium, its workers
            proc.wait()
        raise
    return peak


def _tree_memory(root_pid: int) -> int:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {root_pid}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(_process_memory(pid) for pid in tree)


def _process_memory(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _tail(path: Path, lines: int) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


def _check_outputs(
    cfg: DictConfig, root: Path, bundle_dir: Path, local_data: Path, measured: dict
) -> dict[str, Any]:
    """Keep log and submission in DIR/dryrun/; validate, score, extrapolate."""
    out = bundle_dir / REPORT_FOLDER
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = Path(measured.pop("_log"))
    if log.is_file():
        shutil.copyfile(log, out / "kernel.log")
    result: dict[str, Any] = {"log": str(out / "kernel.log"), "submission": None}
    produced = root / "working" / "submission.csv"
    if not produced.is_file():
        return result
    shutil.copyfile(produced, out / "submission.csv")
    result["submission"] = str(out / "submission.csv")
    bundled = bundle_dir / "dataset" / "competitions" / cfg.competition.name
    comp_cfg = load_competition_yaml(bundled / "competition.yaml")
    comp_cfg.data_dir = str(local_data)
    competition = load_competition(OmegaConf.create({"competition": comp_cfg}))
    problems = submission.validate_submission(competition, out / "submission.csv")
    result |= {"valid": not problems, "problems": problems[:5], "metric": comp_cfg.metric}
    solution = competition.solution_path()
    if not problems and solution is not None and Path(solution).is_file():
        result["score"] = submission.score_submission(competition, out / "submission.csv", solution)
    predicted_file = root / "working" / "podium-predict" / "predict.json"
    if predicted_file.is_file():
        result |= _extrapolate(cfg, io.read_json(predicted_file), measured["wall_s"])
    return result


def _extrapolate(cfg: DictConfig, predicted: dict, wall_s: float) -> dict[str, Any]:
    """The kernel's time on the hidden test set: its fixed part (install, loading) plus the
    measured time per image times the hidden images. Memory does not grow with the test set
    (prediction streams batches)."""
    images, predict_s = int(predicted["images"]), float(predicted["predict_s"])
    hidden = cfg.competition.get("hidden_test_images") or images
    per_image = predict_s / max(images, 1)
    estimate = max(wall_s - predict_s, 0.0) + per_image * int(hidden)
    limit_h = cfg.competition.get("kernel_time_limit_h")
    return {
        "images": images,
        "predict_s": predict_s,
        "device": predicted.get("device"),
        "precision": predicted.get("precision"),
        "hidden_test_images": int(hidden),
        "hidden_test_from": "competition.hidden_test_images" if cfg.competition.get(
            "hidden_test_images") else "the local test set",
        "estimated_s": round(estimate, 1),
        "limit_s": float(limit_h) * 3600 if limit_h else None,
    }  # fmt: skip


def _failure(report: dict) -> str | None:
    log = report.get("log")
    if report.get("kernel_exit") is None:
        return "the sandbox did not start the kernel (its error is above)"
    if report.get("kernel_exit") != 0:
        last = next((line for line in reversed(report["log_tail"]) if line.strip()), "no output")
        return f"the kernel exited {report.get('kernel_exit')}: {last.strip()} (log: {log})"
    if report.get("input_written"):
        return f"the kernel wrote into its read-only input: {report['input_written'][0]}"
    if not report.get("submission"):
        return f"the kernel wrote no working/submission.csv (log: {log})"
    if not report.get("valid"):
        return f"invalid submission: {report['problems'][0]}"
    return None


def format_report(report: dict) -> str:
    """The report as a few lines for the terminal."""
    lines = []
    if report["offline"]:
        lines.append(
            f"  network: cut off (unshare --net; interfaces in the sandbox: "
            f"{', '.join(report['interfaces'])})"
        )
    else:
        note = report["sandbox_note"] or f"interfaces in the sandbox: {report['interfaces']}"
        lines.append(f"  network: NOT cut off ({note}): this run does not show the kernel offline")
    lines.append(
        "  input: read-only bind mounts" if report["input_read_only"]
        else "  input: writable here (checked afterwards for written files)"
    )  # fmt: skip
    lines.append(
        f"  kernel: exit {report['kernel_exit']} after {report['wall_s']:.1f} s; peak memory "
        f"{report['largest_process_mib'] / 1024:.2f} GiB (its largest process, getrusage), "
        f"{report['peak_memory_mib'] / 1024:.2f} GiB summed over its processes (PSS, sampled)"
    )
    if report.get("submission"):
        score = f"; local {report['metric']} {report['score']:.4f}" if "score" in report else ""
        state = "valid" if report.get("valid") else f"INVALID ({report['problems'][0]})"
        lines.append(f"  submission: {state}{score}: {report['submission']}")
    if report.get("estimated_s") is not None:
        limit, estimate = report["limit_s"], report["estimated_s"]
        share = f" of the {limit / 3600:g} h limit ({estimate / limit:.1%})" if limit else ""
        lines.append(
            f"  time: {report['images']} test images predicted in {report['predict_s']:.1f} s "
            f"({report['device']}, {report['precision']}); {report['hidden_test_images']} hidden "
            f"test images ({report['hidden_test_from']}): about {report['estimated_s']:.0f} s"
            f"{share} on this machine's hardware"
        )
    lines.append(f"  log: {report['log']}")
    if report["failure"]:
        lines += ["  last lines of the log:"] + [f"    {line}" for line in report["log_tail"][-8:]]
    return "\n".join(lines)
