"""Code competitions: push a kernel, watch its run, fetch its output, submit a version of it.

A code competition scores a notebook (a "kernel"), not a file: the weights and wheels go up as a
private dataset (:mod:`podium.kaggle.datasets`), an offline kernel that reads them is pushed, and
a version of that kernel is submitted; Kaggle re-runs it on the hidden test set. kaggle 2.2.4
reports a refused push in ``error`` and unattached sources in ``invalid*`` (podium checks both),
cannot push without running (podium sets the SDK's Quick Save field itself), turns a 401/403 on
kernel calls into a ValueError about benchmarks, and downloads kernel output with no timeout and
trusting its file names: podium calls the SDK and downloads itself.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from podium.archives import safe_relative
from podium.io import write_text
from podium.kaggle.client import (
    KaggleError,
    Session,
    check_slug,
    kaggle_errors,
    open_session,
    paged,
    poll_until,
    quiet_stdout,
    sdk_client,
)
from podium.kaggle.competitions import wait_for_score
from podium.kaggle.datasets import check_owner, client_refusals, read_metadata, split_ref
from podium.kaggle.downloader import download_blob

log = logging.getLogger(__name__)

__all__ = ["push_kernel", "kernel_status", "wait_for_kernel", "kernel_output", "submit_code"]

_WORK_DIR = ".podium-kaggle"  # partial downloads inside the output folder
#: what a kernel run ends in, when it did not complete
FAILED_STATUSES = ("ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED")


@contextlib.contextmanager
def _quick_save(api: Any) -> Iterator[None]:
    """Make the next SaveKernel a Quick Save (saved, not run). kaggle 2.2.4's kernels_push
    cannot ask for it; kagglesdk 0.1.37's request has the field (kernel_execution_type)."""
    from kagglesdk.kernels.types.kernels_enums import KernelExecutionType

    build = api.build_kaggle_client

    def build_quick_save_client() -> Any:
        client = build()
        kernels = client.kernels.kernels_api_client
        save_kernel = kernels.save_kernel

        def save_without_running(request: Any) -> Any:
            request.kernel_execution_type = KernelExecutionType.QUICK_SAVE
            return save_kernel(request)

        kernels.save_kernel = save_without_running
        return client

    api.build_kaggle_client = build_quick_save_client
    try:
        yield
    finally:
        del api.build_kaggle_client


def push_kernel(folder: Path, run: bool = True) -> dict[str, Any]:
    """Push ``folder`` (kernel-metadata.json and its code file) as a new kernel version.

    ``run=False`` saves the version without running it (Kaggle's Quick Save). Returns ref,
    version (int: what a code submission names), url and run. Refusals, and sources Kaggle
    could not attach (the notebook would not find its dataset), are KaggleErrors.
    """
    folder = Path(folder)
    meta = read_metadata(folder, "kernel-metadata.json")
    ref = str(meta["id"])
    session = open_session()
    check_owner(session, ref, folder / "kernel-metadata.json")
    with (
        kaggle_errors(f"pushing kernel {ref}", None, session.creds),
        client_refusals(str(folder)),
        quiet_stdout() as printed,
        contextlib.nullcontext() if run else _quick_save(session.api),
    ):
        result = session.api.kernels_push(str(folder))
    for line in printed.getvalue().splitlines():
        if line.strip():
            log.warning("kaggle: %s", line.strip())  # e.g. title and id do not match
    if result is None or result.error:
        raise KaggleError(f"Kaggle refused kernel {ref}: {getattr(result, 'error', '') or '?'}")
    version = result.version_number
    invalid = [
        *(result.invalid_dataset_sources or []),
        *(result.invalid_competition_sources or []),
        *(result.invalid_kernel_sources or []),
        *(result.invalid_model_sources or []),
    ]
    if invalid:
        raise KaggleError(
            f"kernel {ref} version {version} was pushed, but Kaggle could not attach "
            f"{', '.join(invalid)}: the notebook cannot read them; check the sources in "
            f"{folder / 'kernel-metadata.json'} (is the dataset pushed and ready?)"
        )
    if not isinstance(version, int) or version < 1:
        raise KaggleError(f"Kaggle accepted kernel {ref} but returned no version number")
    return {"ref": ref, "version": version, "url": result.url, "run": run}


def _session_status(session: Session, kernel: str) -> dict[str, str]:
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

    owner, slug = split_ref(kernel, "kernel")
    request = ApiGetKernelSessionStatusRequest()
    request.user_name, request.kernel_slug = owner, slug
    with sdk_client(session) as client:
        response = client.kernels.kernels_api_client.get_kernel_session_status(request)
    return {"status": response.status.name, "failure_message": response.failure_message or ""}


def kernel_status(kernel: str) -> dict[str, str]:
    """The status of the kernel's latest run: status (QUEUED, RUNNING, COMPLETE, ERROR...) and
    failure_message."""
    split_ref(kernel, "kernel")
    session = open_session()
    with kaggle_errors(f"reading the status of kernel {kernel}", None, session.creds):
        return _session_status(session, kernel)


def wait_for_kernel(
    kernel: str,
    poll_interval: float = 30.0,
    timeout: float = 9 * 3600.0,
    raise_on_failure: bool = True,
) -> dict[str, str]:
    """Poll until the kernel's latest run has finished; returns its status (see
    :func:`kernel_status`). A failed run is a KaggleError with Kaggle's failure message, or,
    with ``raise_on_failure=False``, returned like a completed one."""
    split_ref(kernel, "kernel")
    session = open_session()

    def finished() -> dict[str, str] | None:
        with kaggle_errors(f"waiting for kernel {kernel}", None, session.creds):
            status = _session_status(session, kernel)
        if status["status"] == "COMPLETE":
            return status
        if status["status"] in FAILED_STATUSES and not raise_on_failure:
            return status
        if status["status"] in FAILED_STATUSES:
            reason = status["failure_message"] or "no failure message given"
            raise KaggleError(
                f"kernel {kernel} ended {status['status']} on Kaggle: {reason} "
                f"(its log: podium kernel-output kernel={kernel})"
            )
        return None

    return poll_until(
        finished,
        poll_interval,
        timeout,
        still=f"kernel {kernel} was still running",
        later=f"check later with: podium kernel-output kernel={kernel}",
    )


def kernel_output(kernel: str, dest: Path, progress: bool | None = None) -> list[Path]:
    """Download the log (``<slug>.log``) and output files of the kernel's latest run into
    ``dest``. Returns the paths written; file names that would leave ``dest`` are refused."""
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    owner, slug = split_ref(kernel, "kernel")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    session = open_session()
    logs: list[str] = []
    with kaggle_errors(f"fetching the output of kernel {kernel}", None, session.creds):
        with sdk_client(session) as client:

            def fetch(token: str) -> tuple[list[Any], str]:
                request = ApiListKernelSessionOutputRequest()
                request.user_name, request.kernel_slug = owner, slug
                request.page_size, request.page_token = 100, token
                response = client.kernels.kernels_api_client.list_kernel_session_output(request)
                logs.append(response.log or "")
                return response.files, response.next_page_token

            files = [(item.file_name, item.url) for item in paged(fetch)]
        written = []
        for name, url in files:
            rel = safe_relative(name, reserved=(_WORK_DIR,))
            if isinstance(rel, str):
                raise KaggleError(f"kernel {kernel} output file {name!r} {rel}: not written")
            written.append(download_blob(url, dest / rel, dest / _WORK_DIR, progress))
    shutil.rmtree(dest / _WORK_DIR, ignore_errors=True)
    if logs and logs[0]:
        log_path = dest / f"{slug}.log"
        write_text(log_path, logs[0])
        written.append(log_path)
    return written


def submit_code(
    slug: str,
    kernel: str,
    version: int,
    message: str = "",
    wait: bool = False,
    poll_interval: float = 5.0,
    timeout: float = 9 * 3600.0,
    file_name: str = "submission.csv",
) -> dict[str, Any]:
    """Submit version ``version`` of ``kernel`` (USER/SLUG) to the code competition ``slug``;
    Kaggle re-runs it on the hidden test set and scores the ``file_name`` it writes.

    With ``wait``, polls until scored; an ERROR ("Notebook Threw Exception", "Submission CSV
    Not Found"...) is a KaggleError with Kaggle's description. Returns ref, status,
    public_score, error_description, kernel, version and the server message.
    """
    check_slug(slug)
    split_ref(kernel, "kernel")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise KaggleError(
            f"kernel version must be a whole number >= 1 (what `podium push` printed), "
            f"got {version!r}"
        )
    session = open_session()
    action = f"submitting kernel {kernel} version {version}"
    with kaggle_errors(action, slug, session.creds), client_refusals(f"kernel {kernel}"):
        result = session.api.competition_submit_code(
            file_name, message, slug, kernel=kernel, kernel_version=version, quiet=True
        )
    if not result.ref:
        raise KaggleError(
            f"Kaggle did not accept kernel {kernel} version {version} as a submission to "
            f"'{slug}' ({result.message or 'no submission ref returned'})"
        )
    log.debug("submitted %s version %d to %s as ref %s", kernel, version, slug, result.ref)
    info: dict[str, Any] = {
        "ref": result.ref,
        "status": "PENDING",
        "public_score": None,
        "error_description": "",
        "kernel": kernel,
        "version": version,
        "message": result.message,
    }
    if wait:
        info.update(wait_for_score(session, slug, result.ref, poll_interval, timeout))
    return info
