"""The code-competition half of the fake Kaggle server (``kaggle_fake.FakeKaggle`` mixes it in).

Datasets (create, version, status), blob uploads, kernels (push, session status, output) and
code submissions, answered as kaggle 2.2.4 / kagglesdk 0.1.37 expect. Where a shape comes from:

* "spec": /work/shared/reference/kaggle_api.md §5 (verified against a prototype);
* "client": kaggle/api/kaggle_api_extended.py (what it sends, what it reads back);
* "sdk": the kagglesdk request/response types (field names, enum names);
* "guess": not documented anywhere we can check; chosen to be plausible and labelled so.

Responses are camelCase JSON; enums travel as their member names (``READY``, ``COMPLETE``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

DATASETS = "datasets.DatasetApiService"
BLOBS = "blobs.BlobApiService"
KERNELS = "kernels.KernelsApiService"
COMPETITIONS = "competitions.CompetitionApiService"
#: RPC method -> the service it belongs to (the rest are competition calls)
CODE_ROUTES = {
    "GetDatasetStatus": DATASETS,
    "GetDataset": DATASETS,
    "CreateDataset": DATASETS,
    "CreateDatasetVersion": DATASETS,
    "CreateDatasetVersionById": DATASETS,
    "StartBlobUpload": BLOBS,
    "SaveKernel": KERNELS,
    "GetKernelSessionStatus": KERNELS,
    "ListKernelSessionOutput": KERNELS,
}
#: what a kernel run writes unless a test says otherwise
DEFAULT_OUTPUT = {"submission.csv": b"id,rle_mask\n1,1 3\n2,\n"}


class ApiError(Exception):
    """Answered as ``{"code": N, "message": ...}`` with HTTP status N (spec G5)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class FakeDatasetVersion:
    number: int
    files: dict[str, bytes]  # uploaded name (a zipped folder is "<folder>.zip") -> bytes
    notes: str
    polls_left: int  # GetDatasetStatus answers that still say BLOBS_RECEIVED


@dataclass
class FakeDataset:
    ref: str  # owner/slug
    id: int
    title: str
    license_name: str
    is_private: bool
    versions: list[FakeDatasetVersion] = field(default_factory=list)


@dataclass
class FakeKernelVersion:
    number: int
    request: dict[str, Any]  # the SaveKernel body as sent (enableInternet, sources...)
    runs: bool  # False for a QUICK_SAVE push: nothing is executed
    queued_left: int = 0
    running_left: int = 0
    outcome: str = "COMPLETE"  # COMPLETE or ERROR once it has run
    failure_message: str = ""


@dataclass
class FakeKernel:
    ref: str  # owner/slug
    id: int
    versions: list[FakeKernelVersion] = field(default_factory=list)


class CodeCompetitionState:
    """State and knobs of the code-competition endpoints (initialised by FakeKaggle)."""

    def init_code_state(self) -> None:
        self.datasets: dict[str, FakeDataset] = {}
        self.kernels: dict[str, FakeKernel] = {}
        self.blob_sizes: dict[str, int] = {}  # upload token -> the contentLength announced
        # Knobs.
        self.dataset_pending_polls = 0  # status answers a new version stays BLOBS_RECEIVED for
        self.dataset_processing_fails = False  # the version ends FAILED instead of READY
        self.create_dataset_error: str | None = None  # CreateDataset answers status "error"
        self.save_kernel_error: str | None = None  # SaveKernel answers {"error": ...}
        self.kernel_queued_polls = 1  # status answers a run stays QUEUED, then RUNNING for:
        self.kernel_running_polls = 1
        self.kernel_failure: str | None = None  # a run ends in ERROR with this message
        self.kernel_outputs: dict[str, bytes] = dict(DEFAULT_OUTPUT)
        self.kernel_log = '[{"stream_name":"stdout","time":1.0,"data":"predicting 2 images\\n"}]'
        self.code_submission_error: str | None = None  # e.g. "Notebook Threw Exception"


class CodeCompetitionHandlers:
    """``api_<Method>`` handlers; mixed into the fake's request handler."""

    state: Any  # the FakeKaggle (with CodeCompetitionState)

    if TYPE_CHECKING:  # plumbing the request handler provides

        def _send_json(self, payload: dict[str, Any], status: int = 200) -> None: ...
        def _base(self) -> str: ...
        def _competition(self, body: dict[str, Any], need_rules: bool = False) -> Any: ...
        def _page(self, body: dict[str, Any], items: list[Any]) -> tuple[list[Any], str]: ...

    def _own(self, owner: str) -> None:
        if owner != self.state.username:
            raise ApiError(403, f"Permission denied: you are not '{owner}'")  # guess: wording

    # ---- datasets (spec §5; GetDataset from the client's dataset_status(format=...))
    def _dataset(self, owner: str, slug: str) -> FakeDataset:
        dataset = self.state.datasets.get(f"{owner}/{slug}")
        if dataset is None:  # spec: 404 while new (dataset_create_new relies on it)
            raise ApiError(404, f"Dataset '{owner}/{slug}' not found")
        return dataset

    def api_GetDatasetStatus(self, body: dict[str, Any]) -> None:
        dataset = self._dataset(body.get("ownerSlug", ""), body.get("datasetSlug", ""))
        fake, latest = self.state, dataset.versions[-1]
        with fake._lock:
            if latest.polls_left > 0:
                latest.polls_left -= 1
                status = "BLOBS_RECEIVED"  # sdk: a DatabundleVersionStatus still processing
            else:
                status = "FAILED" if fake.dataset_processing_fails else "READY"
        self._send_json({"status": status})

    def api_GetDataset(self, body: dict[str, Any]) -> None:
        dataset = self._dataset(body.get("ownerSlug", ""), body.get("datasetSlug", ""))
        self._send_json(
            {  # sdk: ApiDataset (the fields the client and podium read)
                "id": dataset.id,
                "ref": dataset.ref,
                "title": dataset.title,
                "isPrivate": dataset.is_private,
                "licenseName": dataset.license_name,
                "currentVersionNumber": len(dataset.versions),
                "url": f"https://www.kaggle.com/datasets/{dataset.ref}",
            }
        )

    def api_StartBlobUpload(self, body: dict[str, Any]) -> None:
        # spec: {"type":"DATASET","name","contentLength","lastModifiedEpochSeconds"}
        fake = self.state
        with fake._lock:
            token = f"blob{len(fake.upload_names) + 1}"
            fake.upload_names[token] = body.get("name", "")
            fake.blob_sizes[token] = int(body.get("contentLength") or 0)
        # G8: createUrl absolute, from the Host header; the PUT goes to kaggle_fake.do_PUT.
        self._send_json({"token": token, "createUrl": f"{self._base()}/_upload/{token}"})

    def _uploaded_files(self, files: list[dict[str, Any]]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for entry in files or []:
            token = entry.get("token", "")
            if token not in self.state.uploads:
                raise ApiError(400, f"Unknown blob token '{token}'")  # guess: wording
            out[self.state.upload_names[token]] = self.state.uploads[token]
        return out

    def _new_version(self, dataset: FakeDataset, files: list[Any], notes: str) -> None:
        version = FakeDatasetVersion(
            len(dataset.versions) + 1,
            self._uploaded_files(files),
            notes,
            polls_left=self.state.dataset_pending_polls,
        )
        dataset.versions.append(version)
        url = f"https://www.kaggle.com/datasets/{dataset.ref}"
        self._send_json({"ref": dataset.ref, "url": url, "status": "ok"})  # spec

    def api_CreateDataset(self, body: dict[str, Any]) -> None:
        fake = self.state
        owner, slug = body.get("ownerSlug", ""), body.get("slug", "")
        self._own(owner)
        if fake.create_dataset_error is not None:  # spec: failure is status "error", HTTP 200
            self._send_json({"status": "error", "error": fake.create_dataset_error})
            return
        ref = f"{owner}/{slug}"
        if ref in fake.datasets:
            self._send_json({"status": "error", "error": f"Dataset '{ref}' already exists"})
            return
        with fake._lock:
            dataset = FakeDataset(
                ref,
                id=100 + len(fake.datasets),
                title=body.get("title", ""),
                license_name=body.get("licenseName", ""),
                is_private=bool(body.get("isPrivate", False)),
            )
            fake.datasets[ref] = dataset
        self._new_version(dataset, body.get("files", []), notes="")

    def api_CreateDatasetVersion(self, body: dict[str, Any]) -> None:
        # spec: {"ownerSlug","datasetSlug","body":{"versionNotes","files":[{"token"}]}}
        self._own(body.get("ownerSlug", ""))
        dataset = self._dataset(body.get("ownerSlug", ""), body.get("datasetSlug", ""))
        version_body = body.get("body") or {}
        self._new_version(
            dataset, version_body.get("files", []), version_body.get("versionNotes", "")
        )

    def api_CreateDatasetVersionById(self, body: dict[str, Any]) -> None:
        # client: sent instead of CreateDatasetVersion when the metadata has "id_no"
        dataset_id = int(body.get("id") or 0)
        dataset = next((d for d in self.state.datasets.values() if d.id == dataset_id), None)
        if dataset is None:
            raise ApiError(404, f"Dataset {dataset_id} not found")
        version_body = body.get("body") or {}
        self._new_version(
            dataset, version_body.get("files", []), version_body.get("versionNotes", "")
        )

    # ---- kernels (spec §5 SaveKernel; status and output: client kernels_status/kernels_output)
    def _kernel(self, owner: str, slug: str) -> FakeKernel:
        kernel = self.state.kernels.get(f"{owner}/{slug}")
        if kernel is None:
            raise ApiError(404, f"Kernel '{owner}/{slug}' not found")  # guess: wording
        return kernel

    def api_SaveKernel(self, body: dict[str, Any]) -> None:
        fake = self.state
        ref = body.get("slug", "")
        self._own(ref.partition("/")[0])
        if fake.save_kernel_error is not None:  # spec: failure is {"error": ...}, HTTP 200
            self._send_json({"error": fake.save_kernel_error})
            return
        # sdk: ApiSaveKernelResponse.invalid_dataset_sources, for sources the server cannot find
        unknown = [d for d in body.get("datasetDataSources", []) if d not in fake.datasets]
        unknown_competitions = [
            c for c in body.get("competitionDataSources", []) if c not in fake.competitions
        ]
        with fake._lock:
            kernel = fake.kernels.setdefault(ref, FakeKernel(ref, id=42 + len(fake.kernels)))
            runs = body.get("kernelExecutionType") != "QUICK_SAVE"  # sdk: KernelExecutionType
            version = FakeKernelVersion(
                len(kernel.versions) + 1,
                body,
                runs,
                queued_left=fake.kernel_queued_polls,
                running_left=fake.kernel_running_polls,
                outcome="ERROR" if fake.kernel_failure else "COMPLETE",
                failure_message=fake.kernel_failure or "",
            )
            kernel.versions.append(version)
        self._send_json(
            {
                "ref": f"/code/{ref}",
                "url": f"https://www.kaggle.com/code/{ref}",
                "versionNumber": version.number,
                "kernelId": kernel.id,
                "invalidDatasetSources": unknown,
                "invalidCompetitionSources": unknown_competitions,
            }
        )

    def _last_run(self, body: dict[str, Any]) -> FakeKernelVersion | None:
        kernel = self._kernel(body.get("userName", ""), body.get("kernelSlug", ""))
        return next((v for v in reversed(kernel.versions) if v.runs), None)

    def api_GetKernelSessionStatus(self, body: dict[str, Any]) -> None:
        # sdk: {"status": KernelWorkerStatus, "failureMessage"}; the latest run is reported
        # (guess: a kernel with only quick saves reports NEW_SCRIPT)
        fake, run = self.state, self._last_run(body)
        with fake._lock:
            if run is None:
                status, message = "NEW_SCRIPT", ""
            elif run.queued_left > 0:
                run.queued_left -= 1
                status, message = "QUEUED", ""
            elif run.running_left > 0:
                run.running_left -= 1
                status, message = "RUNNING", ""
            else:
                status, message = run.outcome, run.failure_message
        self._send_json({"status": status, "failureMessage": message})

    def api_ListKernelSessionOutput(self, body: dict[str, Any]) -> None:
        # sdk: {"files": [{"url","fileName"}], "log", "nextPageToken"}; urls are plain GETs
        # (client: requests.get(item.url) with no auth) - served by serve_kernel_output
        run = self._last_run(body)
        owner, slug = body.get("userName", ""), body.get("kernelSlug", "")
        finished = run is not None and run.queued_left == 0 and run.running_left == 0
        names = sorted(self.state.kernel_outputs) if finished and run.outcome == "COMPLETE" else []
        files = [
            {
                "fileName": name,
                "url": f"{self._base()}/_kernel_output/{owner}/{slug}/{name}?X-Goog-Signature=x",
            }
            for name in names
        ]
        page, token = self._page(body, files)
        log = self.state.kernel_log if finished else ""
        self._send_json({"files": page, "log": log, "nextPageToken": token})

    def kernel_output_bytes(self, path: str) -> bytes | None:
        """The body of a GET /_kernel_output/<owner>/<slug>/<name>, or None (404)."""
        parts = path.split("/", 4)
        if len(parts) != 5 or f"{parts[2]}/{parts[3]}" not in self.state.kernels:
            return None
        return self.state.kernel_outputs.get(parts[4])

    # ---- competitions: the listing (for isKernelsSubmissionsOnly) and code submissions
    def api_ListCompetitions(self, body: dict[str, Any]) -> None:
        # spec: {"competitions": [ApiCompetition], "nextPageToken"}; ref is the full URL
        search = (body.get("search") or "").lower()
        rows = [
            {
                "id": index + 1,
                "ref": f"https://www.kaggle.com/competitions/{comp.slug}",
                "title": comp.title,
                "url": f"https://www.kaggle.com/competitions/{comp.slug}",
                "isKernelsSubmissionsOnly": comp.code_competition,
                "deadline": "2030-01-01T00:00:00Z",
                "category": "Featured",
            }
            for index, comp in enumerate(self.state.competitions.values())
            if search in comp.slug or search in comp.title.lower()
        ]
        page, token = self._page(body, rows)
        self._send_json({"competitions": page, "nextPageToken": token})

    def api_CreateCodeSubmission(self, body: dict[str, Any]) -> None:
        # spec: {"competitionName","kernelOwner","kernelSlug","kernelVersion","fileName",
        # "submissionDescription"} -> {"message","ref"}; kernelVersion is omitted when 0
        comp = self._competition(body, need_rules=True)
        fake = self.state
        kernel = self._kernel(body.get("kernelOwner", ""), body.get("kernelSlug", ""))
        number = int(body.get("kernelVersion") or len(kernel.versions))
        if not 1 <= number <= len(kernel.versions):
            raise ApiError(404, f"Version {number} of kernel '{kernel.ref}' not found")  # guess
        with fake._lock:
            sub = fake.new_submission(
                file_name=body.get("fileName", "submission.csv"),
                description=body.get("submissionDescription", ""),
                size=0,
            )
            sub.kernel, sub.kernel_version = kernel.ref, number
            if fake.code_submission_error:
                sub.error_description = fake.code_submission_error
            else:
                sub.public_score = fake.score
        self._send_json({"message": f"Successfully submitted to {comp.title}", "ref": sub.ref})


def write_bundle(
    folder: Path, user: str, competition: str, runs: list[str] | None = None, name: str = "podium"
) -> Path:
    """A small bundle folder as `podium export` writes it (the contract in the code-competition
    brief): dataset/ (a few bytes of weights, a wheel, a config), kernel/, bundle.json."""
    dataset_ref, kernel_ref = f"{user}/{name}-bundle", f"{user}/{name}-infer"
    dataset, kernel = folder / "dataset", folder / "kernel"
    (dataset / "weights" / "fold0").mkdir(parents=True)
    (dataset / "wheels").mkdir()
    (dataset / "weights" / "fold0" / "model.pt").write_bytes(bytes(range(256)) * 4)
    (dataset / "weights" / "fold1.pt").write_bytes(b"\x00weights\xff" * 10)
    (dataset / "wheels" / "podium-0.1-py3-none-any.whl").write_bytes(b"PK fake wheel")
    (dataset / "config.yaml").write_text("model: unet\nencoder: resnet34\n")
    meta = {"title": f"{name} bundle", "id": dataset_ref, "licenses": [{"name": "CC0-1.0"}]}
    (dataset / "dataset-metadata.json").write_text(json.dumps(meta))
    kernel.mkdir()
    (kernel / "infer.py").write_text(
        "import pandas as pd\n"
        f"print('weights in /kaggle/input/{name}-bundle')\n"
        "pd.DataFrame({'id': [], 'rle_mask': []}).to_csv('/kaggle/working/submission.csv')\n"
    )
    kernel_meta = {
        "id": kernel_ref,
        "title": f"{name} infer",
        "code_file": "infer.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "enable_internet": False,
        "dataset_sources": [dataset_ref],
        "competition_sources": [competition],
        "model_sources": [],
        "kernel_sources": [],
    }
    (kernel / "kernel-metadata.json").write_text(json.dumps(kernel_meta))
    bundle = {
        "competition": competition,
        "runs": runs or [],
        "kernel": kernel_ref,
        "dataset": dataset_ref,
    }
    (folder / "bundle.json").write_text(json.dumps(bundle))
    return folder
