"""Code competitions through podium.kaggle (datasets, kernels, code submissions): the REAL kaggle
client, in-process, against the loopback fake (seam A)."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from podium import kaggle as pk
from podium.kaggle import KaggleError, SubmissionFailed

try:
    from kaggle_fake import FakeCompetition, FakeKaggle
    from kaggle_fake_code import write_bundle
except ImportError:  # tests/ turned into a package
    from tests.kaggle_fake import FakeCompetition, FakeKaggle
    from tests.kaggle_fake_code import write_bundle

DATASET, KERNEL, SLUG = "alice/podium-bundle", "alice/podium-infer", "demo-seg"
FAST = {"poll_interval": 0.01, "timeout": 10}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "bundle", "alice", SLUG)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def zip_files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message
    return message


# ---------------------------------------------------------------------------------- datasets


def test_dataset_created_then_versioned_byte_identical(fake_kaggle: FakeKaggle, bundle: Path):
    fake_kaggle.dataset_pending_polls = 2  # processing takes a while: podium waits for READY
    data = bundle / "dataset"
    result = pk.push_dataset(data, message="ignored for a new dataset", **FAST)
    assert result == {
        "ref": DATASET,
        "version": 1,
        "created": True,
        "status": "ready",
        "url": f"https://www.kaggle.com/datasets/{DATASET}",
    }
    dataset = fake_kaggle.datasets[DATASET]
    assert dataset.is_private and dataset.license_name == "CC0-1.0"
    uploaded = dataset.versions[0].files
    assert sorted(uploaded) == ["config.yaml", "weights.zip", "wheels.zip"]  # folders zipped
    assert uploaded["config.yaml"] == (data / "config.yaml").read_bytes()
    assert zip_files(uploaded["weights.zip"]) == folder_files(data / "weights")
    assert zip_files(uploaded["wheels.zip"]) == folder_files(data / "wheels")
    statuses = fake_kaggle.api_calls("GetDatasetStatus")
    assert len(statuses) >= 4  # existence check, the client's own check, 2 pending, ready

    (data / "weights" / "fold1.pt").write_bytes(b"retrained")
    again = pk.push_dataset(data, message="fold 1 retrained", **FAST)
    assert (again["version"], again["created"], again["status"]) == (2, False, "ready")
    version = dataset.versions[1]
    assert version.notes == "fold 1 retrained"
    assert zip_files(version.files["weights.zip"])["fold1.pt"] == b"retrained"
    assert len(fake_kaggle.api_calls("CreateDataset")) == 1


def test_dataset_error_status_is_a_one_line_error(fake_kaggle: FakeKaggle, bundle: Path):
    # The client returns status "error" (G12) instead of raising: podium must not say "ok".
    fake_kaggle.create_dataset_error = "The requested title is already in use.\nPick another."
    with pytest.raises(KaggleError) as error:
        pk.push_dataset(bundle / "dataset", **FAST)
    assert one_line(error).startswith(f"Kaggle refused dataset {DATASET}: The requested title")
    assert fake_kaggle.datasets == {}


def test_failed_upload_creates_nothing(fake_kaggle: FakeKaggle, bundle: Path):
    fake_kaggle.fail_uploads = True  # the client leaves the file out and carries on
    with pytest.raises(KaggleError, match=r"only 0 of the 3 entries .* nothing was created"):
        pk.push_dataset(bundle / "dataset", **FAST)
    assert fake_kaggle.api_calls("CreateDataset") == []


def test_stale_upload_state_cannot_drop_files(
    fake_kaggle: FakeKaggle, bundle: Path, kaggle_home: Path
):
    """G10: a resume entry left in $TMPDIR by an earlier, failed push points at a dead upload
    URL; the client would "resume" there, fail, and drop the file without a word."""
    from kagglesdk.blobs.types.blob_api_service import ApiBlobType, ApiStartBlobUploadRequest

    config = bundle / "dataset" / "config.yaml"
    request = ApiStartBlobUploadRequest()
    request.type = ApiBlobType.DATASET
    request.name = config.name
    request.content_length = config.stat().st_size
    request.last_modified_epoch_seconds = int(config.stat().st_mtime)
    state_dir = kaggle_home / "tmp" / ".kaggle" / "uploads"  # the fixture's TMPDIR
    state_dir.mkdir(parents=True)
    stale = {
        "path": str(config),
        "start_blob_upload_request": request.to_dict(),
        "timestamp": time.time(),
        "start_blob_upload_response": {"token": "old", "createUrl": "http://127.0.0.1:9/_upload/x"},
        "upload_complete": False,
    }
    state_file = state_dir / (str(config).replace(os.sep, "_") + ".json")
    state_file.write_text(json.dumps(stale))

    pk.push_dataset(bundle / "dataset", **FAST)
    files = fake_kaggle.datasets[DATASET].versions[0].files
    assert files["config.yaml"] == config.read_bytes()
    assert state_file.exists()  # left alone: podium used a private state, not this one


def test_dataset_processing_failure_and_timeout(fake_kaggle: FakeKaggle, bundle: Path):
    fake_kaggle.dataset_processing_fails = True
    with pytest.raises(KaggleError, match=r"could not process dataset .* \(status failed\)"):
        pk.push_dataset(bundle / "dataset", **FAST)
    fake_kaggle.dataset_processing_fails = False
    fake_kaggle.dataset_pending_polls = 10_000
    with pytest.raises(KaggleError, match="still being processed by Kaggle after 0.1 s"):
        pk.push_dataset(bundle / "dataset", poll_interval=0.01, timeout=0.1)


def test_metadata_mistakes_are_caught_before_any_call(fake_kaggle: FakeKaggle, bundle: Path):
    meta_file = bundle / "dataset" / "dataset-metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(meta | {"id": "bob/podium-bundle"}))
    with pytest.raises(KaggleError, match="credentials are for 'alice'"):
        pk.push_dataset(bundle / "dataset", **FAST)
    meta_file.write_text(json.dumps(meta | {"id": "no-owner"}))
    with pytest.raises(KaggleError, match='"id" must be "USER/SLUG"'):
        pk.push_dataset(bundle / "dataset", **FAST)
    assert fake_kaggle.calls == []
    # What the client itself refuses (here: a title under 6 characters) is one line too.
    meta_file.write_text(json.dumps(meta | {"title": "tiny"}))
    with pytest.raises(KaggleError, match="kaggle client refused .*title must be between"):
        pk.push_dataset(bundle / "dataset", **FAST)


# ---------------------------------------------------------------------------------- kernels


def test_kernel_push_versions_and_recorded_metadata(fake_kaggle: FakeKaggle, bundle: Path):
    pk.push_dataset(bundle / "dataset", **FAST)
    first = pk.push_kernel(bundle / "kernel")
    second = pk.push_kernel(bundle / "kernel")
    assert (first["version"], second["version"]) == (1, 2)
    assert first["ref"] == KERNEL and first["run"] is True
    sent = fake_kaggle.kernels[KERNEL].versions[-1].request
    assert sent["enableInternet"] is False and sent["enableGpu"] is True
    assert sent["datasetDataSources"] == [DATASET]
    assert sent["competitionDataSources"] == [SLUG]
    assert sent["isPrivate"] is True and sent["kernelType"] == "script"
    assert "kaggle/working/submission.csv" in sent["text"]
    assert "kernelExecutionType" not in sent  # a normal push: saved and run


def test_kernel_push_without_running(fake_kaggle: FakeKaggle, bundle: Path):
    pk.push_dataset(bundle / "dataset", **FAST)
    saved = pk.push_kernel(bundle / "kernel", run=False)
    assert saved["version"] == 1 and saved["run"] is False
    version = fake_kaggle.kernels[KERNEL].versions[0]
    assert version.request["kernelExecutionType"] == "QUICK_SAVE" and not version.runs
    pk.push_kernel(bundle / "kernel")  # the Quick Save hook does not outlive its push
    assert "kernelExecutionType" not in fake_kaggle.kernels[KERNEL].versions[1].request


def test_kernel_push_refusals(fake_kaggle: FakeKaggle, bundle: Path):
    # The dataset was never pushed: Kaggle cannot attach it, the notebook would not find it.
    with pytest.raises(KaggleError) as error:
        pk.push_kernel(bundle / "kernel")
    assert f"could not attach {DATASET}" in one_line(error)
    fake_kaggle.save_kernel_error = "Notebook title is too long"
    with pytest.raises(KaggleError, match="Kaggle refused kernel alice/podium-infer: Notebook"):
        pk.push_kernel(bundle / "kernel")
    with pytest.raises(KaggleError, match="kernel-metadata.json is missing"):
        pk.push_kernel(bundle / "dataset")


def test_kernel_status_wait_and_output(fake_kaggle: FakeKaggle, bundle: Path, tmp_path: Path):
    pk.push_dataset(bundle / "dataset", **FAST)
    pk.push_kernel(bundle / "kernel")
    assert pk.kernel_status(KERNEL)["status"] == "QUEUED"
    assert pk.wait_for_kernel(KERNEL, poll_interval=0.01, timeout=10)["status"] == "COMPLETE"
    fake_kaggle.kernel_outputs["preds/probs.npy"] = b"\x93NUMPY fake"
    out = tmp_path / "out"
    written = pk.kernel_output(KERNEL, out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "podium-infer.log",
        "preds/probs.npy",
        "submission.csv",
    ]
    assert (out / "submission.csv").read_bytes() == fake_kaggle.kernel_outputs["submission.csv"]
    assert "predicting 2 images" in (out / "podium-infer.log").read_text()
    assert not (out / ".podium-kaggle").exists()


def test_failed_kernel_run_and_unsafe_output(fake_kaggle: FakeKaggle, bundle: Path, tmp_path):
    pk.push_dataset(bundle / "dataset", **FAST)
    fake_kaggle.kernel_failure = "ModuleNotFoundError: No module named 'timm'"
    pk.push_kernel(bundle / "kernel")
    with pytest.raises(KaggleError) as error:
        pk.wait_for_kernel(KERNEL, poll_interval=0.01, timeout=10)
    assert "ended ERROR on Kaggle: ModuleNotFoundError" in one_line(error)
    fake_kaggle.kernel_failure = None
    fake_kaggle.kernel_queued_polls = fake_kaggle.kernel_running_polls = 0
    pk.push_kernel(bundle / "kernel")
    fake_kaggle.kernel_outputs = {"../escape.csv": b"x"}
    with pytest.raises(KaggleError, match="escapes the target directory"):
        pk.kernel_output(KERNEL, tmp_path / "out")
    assert not (tmp_path / "escape.csv").exists()
    with pytest.raises(KaggleError, match="not found .*alice/nope"):
        pk.kernel_status("alice/nope")


# ---------------------------------------------------------------------------------- submitting


def test_submit_code_waits_for_the_score(fake_kaggle: FakeKaggle, bundle: Path):
    pk.push_dataset(bundle / "dataset", **FAST)
    pk.push_kernel(bundle / "kernel")
    pk.push_kernel(bundle / "kernel")
    result = pk.submit_code(SLUG, KERNEL, 2, "two folds", wait=True, **FAST)
    assert result["status"] == "COMPLETE" and result["public_score"] == pytest.approx(0.75)
    assert (result["ref"], result["kernel"], result["version"]) == (1001, KERNEL, 2)
    sent = fake_kaggle.api_calls("CreateCodeSubmission")[0]["body"]
    assert sent == {
        "competitionName": SLUG,
        "kernelOwner": "alice",
        "kernelSlug": "podium-infer",
        "kernelVersion": 2,
        "fileName": "submission.csv",
        "submissionDescription": "two folds",
    }
    with pytest.raises(KaggleError, match="Version 7 of kernel .* not found"):
        pk.submit_code(SLUG, KERNEL, 7, "no such version")


@pytest.mark.parametrize(
    "reason", ["Notebook Threw Exception", "Submission CSV Not Found", "Notebook Timeout"]
)
def test_code_submission_errors_carry_kaggles_reason(
    fake_kaggle: FakeKaggle, bundle: Path, reason: str
):
    pk.push_dataset(bundle / "dataset", **FAST)
    pk.push_kernel(bundle / "kernel")
    fake_kaggle.code_submission_error = reason
    with pytest.raises(SubmissionFailed) as error:
        pk.submit_code(SLUG, KERNEL, 1, "doomed", wait=True, **FAST)
    assert one_line(error) == f"submission 1001 to '{SLUG}' failed on Kaggle: {reason}"
    assert error.value.ref == 1001 and error.value.description == reason


@pytest.mark.parametrize("version", ["3", 2.0, True, 0, None])
def test_kernel_version_must_be_an_integer(fake_kaggle: FakeKaggle, version):
    with pytest.raises(KaggleError, match="whole number"):
        pk.submit_code(SLUG, KERNEL, version, "x")  # type: ignore[arg-type]
    assert fake_kaggle.calls == []


def test_competition_listing_says_code_competition(fake_kaggle: FakeKaggle):
    fake_kaggle.add_competition(
        FakeCompetition("sense-seg", "Sense Seg", {}, code_competition=True)
    )
    assert pk.competition_info("sense-seg")["code_competition"] is True
    assert pk.competition_info(SLUG)["code_competition"] is False
    assert pk.competition_info("absent-comp") is None
