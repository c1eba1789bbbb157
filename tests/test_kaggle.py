"""podium.kaggle against a loopback fake Kaggle server, with the REAL kaggle client doing HTTP."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from podium import kaggle as pk
from podium.kaggle import KaggleError, downloader

try:
    from kaggle_fake import FakeCompetition, FakeKaggle, fake_kaggle, kaggle_home, make_zip
except ImportError:  # tests/ turned into a package
    from tests.kaggle_fake import FakeCompetition, FakeKaggle, fake_kaggle, kaggle_home, make_zip

__all__ = ["fake_kaggle", "kaggle_home"]  # fixtures, used by name

STATE_DIR = ".podium-kaggle"
GOOD_CSV = b"id,rle_mask\n1,1 3\n2,\n"


def data_files(dest: Path) -> set[str]:
    """Every file under dest except podium's own state dir, as posix paths."""
    return {
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and STATE_DIR not in p.relative_to(dest).parts
    }


def write_csv(tmp_path: Path, content: bytes = GOOD_CSV, name: str = "submission.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------- credentials


def test_missing_credentials_says_what_and_where(kaggle_home: Path, capsys) -> None:
    from podium.io import PodiumError

    with pytest.raises(PodiumError) as err:  # what the CLI catches and prints as one line
        pk.preflight()
    assert isinstance(err.value, KaggleError)
    message = str(err.value)
    assert "\n" not in message
    for needle in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "access_token"):
        assert needle in message
    assert str(kaggle_home / "kaggle-config" / "kaggle.json") in message
    # The client's multi-line auth help must not leak onto the terminal.
    assert capsys.readouterr().out == ""


def test_kaggle_json_found_despite_stale_class_config_dir(
    fake_kaggle: FakeKaggle, kaggle_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KaggleApi.config_dir is frozen at first import; podium must resolve the directory itself.
    from kaggle.api.kaggle_api_extended import KaggleApi

    stale = kaggle_home / "stale"
    stale.mkdir()
    monkeypatch.setattr(KaggleApi, "config_dir", str(stale))
    monkeypatch.setattr(KaggleApi, "config", str(stale / "kaggle.json"))
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    config = kaggle_home / "kaggle-config" / "kaggle.json"
    config.write_text(json.dumps({"username": fake_kaggle.username, "key": fake_kaggle.key}))
    config.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0600 file must not warn
        assert pk.preflight() == "alice"
        names = [f["name"] for f in pk.list_files("demo-seg")]
    assert "train.csv" in names
    assert fake_kaggle.api_calls("ListDataFiles")[-1]["auth"] == "basic"


def test_world_readable_kaggle_json_warns(
    fake_kaggle: FakeKaggle, kaggle_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAGGLE_KEY")
    config = kaggle_home / "kaggle-config" / "kaggle.json"
    config.write_text(json.dumps({"username": "alice", "key": fake_kaggle.key}))
    config.chmod(0o644)
    with pytest.warns(pk.KaggleCredentialsWarning, match="chmod 600") as record:
        assert pk.preflight() == "alice"
    assert all(fake_kaggle.key not in str(w.message) for w in record)


def test_broken_kaggle_json_is_reported(kaggle_home: Path) -> None:
    config = kaggle_home / "kaggle-config" / "kaggle.json"
    config.write_text("{not json")
    config.chmod(0o600)
    with pytest.raises(KaggleError, match="not a valid Kaggle credentials file"):
        pk.preflight()


def test_access_token_authenticates_with_bearer(
    fake_kaggle: FakeKaggle, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_kaggle.token = "podium-test-token-abc123"
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake_kaggle.token)
    assert pk.preflight() == "alice"  # from the token introspection
    assert pk.list_files("demo-seg")
    assert fake_kaggle.api_calls("ListDataFiles")[-1]["auth"] == "bearer"


def test_username_key_wins_over_a_stale_access_token(
    fake_kaggle: FakeKaggle, kaggle_home: Path
) -> None:
    # The client alone would send the stale token as Bearer and get 401 (G4).
    token_file = kaggle_home / "home" / ".kaggle" / "access_token"
    token_file.parent.mkdir()
    token_file.write_text("stale-token-that-the-server-rejects")
    assert pk.list_files("demo-seg")
    assert fake_kaggle.api_calls("ListDataFiles")[-1]["auth"] == "basic"


def test_bad_credentials_give_one_clear_line(
    fake_kaggle: FakeKaggle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key-0123456789")
    with pytest.raises(KaggleError) as err:
        pk.list_files("demo-seg")
    message = str(err.value)
    assert "401" in message and "KAGGLE_USERNAME/KAGGLE_KEY" in message
    assert "wrong-key-0123456789" not in message and "\n" not in message


# ---------------------------------------------------------------------------------- listing


def test_list_files_follows_pages(fake_kaggle: FakeKaggle) -> None:
    fake_kaggle.max_page_size = 1
    files = pk.list_files("demo-seg")
    assert [f["name"] for f in files] == [
        "train.csv",
        "sample_submission.csv",
        "train/images/0001.png",
    ]
    assert files[0]["size"] == len(b"id,rle_mask\n1,1 3\n2,\n")
    assert len(fake_kaggle.api_calls("ListDataFiles")) == 3


def test_unknown_competition_is_a_clear_404(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    with pytest.raises(KaggleError, match=r"404.*no-such-comp"):
        pk.download("no-such-comp", tmp_path / "data")
    with pytest.raises(KaggleError, match="invalid competition slug"):
        pk.list_files("../etc")


def test_server_down_fails_fast(
    kaggle_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import socket

    from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setitem(_env_to_endpoint, KaggleEnv.PROD, f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "some-key")
    started = time.monotonic()
    with pytest.raises(KaggleError, match="cannot reach Kaggle.*refused"):
        pk.download("demo-seg", tmp_path / "data")
    with pytest.raises(KaggleError, match="cannot reach Kaggle"):
        pk.submit("demo-seg", write_csv(tmp_path), "msg")
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------------- download


def test_download_all_then_skip_then_force(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    files = fake_kaggle.competitions["demo-seg"].files
    paths = pk.download("demo-seg", dest)
    assert {p.relative_to(dest).as_posix() for p in paths} == set(files)
    assert data_files(dest) == set(files)  # unzipped, and the archive itself is gone
    for name, content in files.items():
        assert (dest / name).read_bytes() == content
    assert not list((dest / STATE_DIR).glob("*.part"))
    assert sorted(pk.downloaded(dest) or []) == sorted(paths)  # local check, no network
    assert pk.downloaded(dest, files=["train.csv"]) is None  # never fetched on its own
    before = {name: (dest / name).stat().st_ino for name in files}

    again = pk.download("demo-seg", dest)  # complete: nothing rewritten
    assert sorted(again) == sorted(paths)
    assert {name: (dest / name).stat().st_ino for name in files} == before

    (dest / "train.csv").unlink()  # incomplete again: fetched again
    assert pk.downloaded(dest) is None
    pk.download("demo-seg", dest)
    assert (dest / "train.csv").read_bytes() == files["train.csv"]

    # force fetches files that look complete. Tamper with their bytes but not their sizes (the
    # local check compares sizes): a plain download keeps them, a forced one restores them.
    # (Comparing inodes here was flaky: the filesystem may reuse a freed inode number.)
    for name, content in files.items():
        (dest / name).write_bytes(bytes(len(content)))
    assert pk.downloaded(dest) is not None
    pk.download("demo-seg", dest)
    assert all((dest / name).read_bytes() == bytes(len(files[name])) for name in files)
    pk.download("demo-seg", dest, force=True)
    for name, content in files.items():
        assert (dest / name).read_bytes() == content
    # Every call asks Kaggle once (a skip reads only the response headers): 5 calls.
    assert len(fake_kaggle.api_calls("DownloadDataFiles")) == 5


def test_download_single_files(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    files = fake_kaggle.competitions["demo-seg"].files
    wanted = ["sample_submission.csv", "train.csv", "train/images/0001.png"]
    paths = pk.download("demo-seg", dest, files=wanted)
    # train.csv is served as train.csv.zip (as Kaggle does for big files) and gets unwrapped.
    assert data_files(dest) == set(wanted)
    assert {p.relative_to(dest).as_posix() for p in paths} == set(wanted)
    for name in wanted:
        assert (dest / name).read_bytes() == files[name]
    ino = (dest / "train.csv").stat().st_ino
    assert pk.download("demo-seg", dest, files=["train.csv"]) == [dest / "train.csv"]
    assert (dest / "train.csv").stat().st_ino == ino
    with pytest.raises(KaggleError, match="404"):
        pk.download("demo-seg", dest, files=["missing.csv"])
    calls = len(fake_kaggle.calls)
    with pytest.raises(KaggleError, match="invalid file name"):
        pk.download("demo-seg", dest, files=["../outside.csv"])
    assert len(fake_kaggle.calls) == calls  # rejected before any request


def test_rules_not_accepted_names_the_rules_url(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    with pytest.raises(KaggleError) as err:
        pk.download("locked-comp", dest)
    assert "https://www.kaggle.com/competitions/locked-comp/rules" in str(err.value)
    assert "403" in str(err.value)
    assert data_files(dest) == set()
    with pytest.raises(KaggleError, match="competitions/locked-comp/rules"):
        pk.submit("locked-comp", write_csv(tmp_path), "first")


def test_interrupted_download_is_never_taken_as_complete(
    fake_kaggle: FakeKaggle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader, "RESUME_DELAYS_S", ())  # no in-call retry: fail at once
    dest = tmp_path / "data"
    files = fake_kaggle.competitions["demo-seg"].files
    files["big.bin"] = random.Random(0).randbytes(1_500_000)  # larger than a read chunk
    fake_kaggle.truncate_blob_gets = 1
    with pytest.raises(KaggleError, match="interrupted.*run the same command again"):
        pk.download("demo-seg", dest)
    assert data_files(dest) == set()
    manifest = dest / STATE_DIR / "manifest.json"
    assert not manifest.exists() or json.loads(manifest.read_text())["downloads"] == {}
    assert len(list((dest / STATE_DIR).glob("*.part"))) == 1  # kept, to resume from

    partial_size = next((dest / STATE_DIR).glob("*.part")).stat().st_size
    assert partial_size > 0

    paths = pk.download("demo-seg", dest)  # the retry resumes and completes
    assert fake_kaggle.blob_gets[-1]["range"] == f"bytes={partial_size}-"
    assert {p.relative_to(dest).as_posix() for p in paths} == set(files)
    for name, content in files.items():
        assert (dest / name).read_bytes() == content
    assert not list((dest / STATE_DIR).glob("*.part*"))


def test_interrupted_download_resumes_within_the_call(
    fake_kaggle: FakeKaggle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader, "RESUME_DELAYS_S", (0.0,))
    big = random.Random(1).randbytes(1_500_000)
    fake_kaggle.competitions["demo-seg"].files["big.bin"] = big
    fake_kaggle.truncate_blob_gets = 1
    (path,) = pk.download("demo-seg", tmp_path / "data", files=["big.bin"])
    assert path.read_bytes() == big
    assert [g["truncated"] for g in fake_kaggle.blob_gets] == [True, False]
    assert fake_kaggle.blob_gets[1]["range"] not in (None, "bytes=0-")


def test_concurrent_download_into_one_dir_waits(
    fake_kaggle: FakeKaggle, tmp_path: Path, caplog
) -> None:
    from filelock import FileLock

    dest = tmp_path / "data"
    (dest / STATE_DIR).mkdir(parents=True)
    caplog.set_level(logging.WARNING, logger="podium.kaggle")
    lock = FileLock(str(dest / STATE_DIR / "lock"))  # held by "another download"
    lock.acquire()
    result: list[Path] = []
    worker = threading.Thread(
        target=lambda: result.extend(pk.download("demo-seg", dest, files=["sample_submission.csv"]))
    )
    try:
        worker.start()
        deadline = time.monotonic() + 10
        while "waiting for another podium download" not in caplog.text:
            assert time.monotonic() < deadline, "download did not wait for the lock"
            time.sleep(0.01)
        assert worker.is_alive() and result == []  # blocked, not downloading
    finally:
        lock.release()
        worker.join(10)
    assert [p.name for p in result] == ["sample_submission.csv"]


@pytest.mark.parametrize(
    ("entry", "archive"),
    [
        ("../evil.txt", make_zip({"ok.csv": b"a\n", "../evil.txt": b"pwned"})),
        ("/tmp/evil.txt", make_zip({"ok.csv": b"a\n", "/tmp/evil.txt": b"pwned"})),
        ("link", make_zip({"ok.csv": b"a\n"}, symlinks={"link": "../../evil.txt"})),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_archive_is_rejected_whole(
    fake_kaggle: FakeKaggle, tmp_path: Path, entry: str, archive: bytes
) -> None:
    fake_kaggle.add_competition(FakeCompetition("evil-comp", "Evil", {}, archive=archive))
    dest = tmp_path / "out" / "data"
    with pytest.raises(KaggleError) as err:
        pk.download("evil-comp", dest)
    assert repr(entry) in str(err.value) and "nothing was extracted" in str(err.value)
    assert data_files(dest) == set()  # not even the harmless ok.csv
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not list((dest / STATE_DIR).glob(".unpack-*"))  # no staging folder left
    assert not list((dest / STATE_DIR).glob("*.part*"))  # the bad archive is not kept


def test_extraction_conflict_changes_nothing(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    (dest / "train.csv").mkdir(parents=True)  # a directory where the archive has a file
    with pytest.raises(KaggleError, match="'train.csv' would replace the directory"):
        pk.download("demo-seg", dest)
    assert data_files(dest) == set()  # the other members were not put in place either


# ---------------------------------------------------------------------------------- nested archives
# Kaggle's competition zip holds more archives (train.zip, train_masks.csv.zip, ...); the full
# layouts of TGS, Carvana and Ultrasound Nerve are exercised in tests/test_download.py.
NESTED = {
    "train.zip": make_zip({"images/a.png": b"A" * 300, "masks/a.png": b"M" * 300}),
    "train_masks.csv.zip": make_zip({"train_masks.csv": b"img,rle_mask\na,1 2\n"}),
    "sample_submission.csv": b"id,rle_mask\na,\n",
}


def nested_comp(fake: FakeKaggle, files: dict[str, bytes] | None = None) -> str:
    fake.add_competition(FakeCompetition("nested-comp", "Nested", dict(files or NESTED)))
    return "nested-comp"


def test_member_archives_are_unpacked_and_deleted(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    slug, dest = nested_comp(fake_kaggle), tmp_path / "data"
    paths = pk.download(slug, dest)
    expected = {
        "train/images/a.png",
        "train/masks/a.png",
        "train_masks.csv",
        "sample_submission.csv",
    }
    assert data_files(dest) == expected  # the member archives are gone once verified
    assert {p.relative_to(dest).as_posix() for p in paths} == expected
    assert (dest / "train_masks.csv").read_bytes() == b"img,rle_mask\na,1 2\n"
    manifest = json.loads((dest / STATE_DIR / "manifest.json").read_text())
    assert set(manifest["unpacked"]) == {"train.zip", "train_masks.csv.zip"}
    assert sorted(pk.downloaded(dest) or []) == sorted(paths)  # deleted archives count as done

    (dest / "train" / "masks" / "a.png").write_bytes(b"m" * 300)  # same size: looks complete
    assert sorted(pk.download(slug, dest)) == sorted(paths)  # skipped: nothing redone
    assert (dest / "train" / "masks" / "a.png").read_bytes() == b"m" * 300
    pk.download(slug, dest, force=True)  # redone: downloaded and unpacked again
    assert (dest / "train" / "masks" / "a.png").read_bytes() == b"M" * 300
    assert data_files(dest) == expected

    (dest / "train" / "images" / "a.png").unlink()  # an unpacked file lost: fetched again
    pk.download(slug, dest)
    assert data_files(dest) == expected
    assert (dest / "train" / "images" / "a.png").read_bytes() == b"A" * 300


def test_unpack_rules_keep_or_redirect(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    slug, dest = nested_comp(fake_kaggle), tmp_path / "data"
    rules = pk.UnpackRules({"train_masks.csv.zip": False, "train.zip": "stage1"}, True)
    pk.download(slug, dest, unpack=rules)
    assert data_files(dest) == {
        "train.zip", "train_masks.csv.zip", "sample_submission.csv", "stage1/images/a.png",
        "stage1/masks/a.png",
    }  # fmt: skip
    before = (dest / "stage1" / "images" / "a.png").stat().st_mtime_ns
    pk.download(slug, dest, unpack=rules)  # kept archive, recorded as unpacked: not redone
    assert (dest / "stage1" / "images" / "a.png").stat().st_mtime_ns == before


def test_unsafe_inner_archive_leaves_nothing_of_it(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    evil = make_zip({"images/ok.png": b"fine", "../../evil.txt": b"pwned"})
    slug, dest = nested_comp(fake_kaggle, {**NESTED, "train.zip": evil}), tmp_path / "out" / "data"
    with pytest.raises(KaggleError) as err:
        pk.download(slug, dest)
    message = str(err.value)
    assert "refusing to extract train.zip" in message and "'../../evil.txt'" in message
    assert "\n" not in message
    assert not (dest / "train").exists()  # nothing from that archive, not even images/ok.png
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not list((dest / STATE_DIR).glob(".unpack-*"))
    # The rest of the download is in place and recorded; the refused archive is kept (not
    # trusted, not deleted) and refused again on the next run.
    assert (dest / "train.zip").is_file() and (dest / "sample_submission.csv").is_file()
    before = (dest / "sample_submission.csv").stat().st_mtime_ns
    with pytest.raises(KaggleError, match="refusing to extract train.zip"):
        pk.download(slug, dest)
    assert (dest / "sample_submission.csv").stat().st_mtime_ns == before  # not fetched again


def test_seven_zip_tar_and_gz_members(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    import gzip
    import io
    import tarfile

    import py7zr

    seven = io.BytesIO()
    with py7zr.SevenZipFile(seven, "w") as archive:
        archive.writestr(b"7" * 100, "images/s.png")
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:gz") as tf:
        info = tarfile.TarInfo("extra/t.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"tar"))
    files = {
        "train.7z": seven.getvalue(),
        "extra.tar.gz": tar.getvalue(),
        "depths.csv.gz": gzip.compress(b"id,z\n"),
    }
    slug, dest = nested_comp(fake_kaggle, files), tmp_path / "data"
    pk.download(slug, dest)
    assert data_files(dest) == {"train/images/s.png", "extra/t.png", "depths.csv"}
    assert (dest / "extra" / "t.png").read_bytes() == b"tar"


# ---------------------------------------------------------------------------------- submit


def test_submit_and_wait_returns_the_score(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    csv = write_csv(tmp_path)
    result = pk.submit("demo-seg", csv, "first try", wait=True, poll_interval=0.01, timeout=10)
    assert result["ref"] == 1001
    assert result["status"] == "COMPLETE"
    assert result["public_score"] == pytest.approx(0.75)
    assert result["sha256"] == hashlib.sha256(GOOD_CSV).hexdigest()
    assert fake_kaggle.puts == [{"token": "blob1", "bytes": len(GOOD_CSV), "auth": False}]
    assert fake_kaggle.submissions[0].description == "first try"
    assert len(fake_kaggle.api_calls("ListSubmissions")) >= 2  # it really polled

    quick = pk.submit("demo-seg", csv, "no wait")
    assert quick["ref"] == 1002 and quick["status"] == "PENDING"


def test_failed_upload_is_an_error(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    fake_kaggle.fail_uploads = True  # the createUrl answers 500
    with pytest.raises(KaggleError, match="upload of submission.csv .*failed"):
        # A short timeout: a regression that misses the failure must fail, not hang.
        pk.submit(
            "demo-seg", write_csv(tmp_path), "doomed", wait=True, poll_interval=0.01, timeout=1
        )
    assert fake_kaggle.api_calls("CreateSubmission") == []
    assert fake_kaggle.submissions == []


def test_scoring_error_raises_its_description(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    csv = write_csv(tmp_path, b"ImageId,EncodedPixels\n1,\n")
    with pytest.raises(KaggleError, match=r"1001 .*failed on Kaggle: .*expected 'id,rle_mask'"):
        pk.submit("demo-seg", csv, "bad header", wait=True, poll_interval=0.01, timeout=10)


def test_submit_wait_times_out(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    fake_kaggle.pending_polls = 10_000
    with pytest.raises(KaggleError, match="still pending"):
        pk.submit(
            "demo-seg", write_csv(tmp_path), "slow", wait=True, poll_interval=0.01, timeout=0.1
        )


def test_submit_checks_the_file_first(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    with pytest.raises(KaggleError, match="not found"):
        pk.submit("demo-seg", tmp_path / "nope.csv", "x")
    with pytest.raises(KaggleError, match="empty"):
        pk.submit("demo-seg", write_csv(tmp_path, b""), "x")
    assert fake_kaggle.calls == []


def test_submissions_and_leaderboard(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    csv = write_csv(tmp_path)
    pk.submit("demo-seg", csv, "good", wait=True, poll_interval=0.01, timeout=10)
    fake_kaggle.pending_polls = 0
    pk.submit("demo-seg", write_csv(tmp_path, b"bad\n", "bad.csv"), "bad")
    fake_kaggle.max_page_size = 1  # force pagination everywhere

    rows = pk.submissions("demo-seg")
    assert [r["ref"] for r in rows] == [1002, 1001]
    assert [r["status"] for r in rows] == ["ERROR", "COMPLETE"]
    assert rows[1]["public_score"] == pytest.approx(0.75) and rows[1]["description"] == "good"
    assert "expected" in rows[0]["error_description"]

    top, own = pk.leaderboard("demo-seg", top=2)
    assert [(r["rank"], r["team_name"]) for r in top] == [(1, "Bob"), (2, "Carol")]
    assert own is not None
    assert (own["rank"], own["team_name"], own["score"]) == (3, "Alice Team", pytest.approx(0.75))
    top_all, own_all = pk.leaderboard("demo-seg", top=10)
    assert len(top_all) == 4 and own_all == own


def test_leaderboard_without_own_row(fake_kaggle: FakeKaggle) -> None:
    top, own = pk.leaderboard("demo-seg", top=20)
    assert [r["team_name"] for r in top] == ["Bob", "Carol", "Dan"] and own is None


# ---------------------------------------------------------------------------------- hygiene


def test_no_credentials_in_outputs_logs_or_messages(
    fake_kaggle: FakeKaggle,
    kaggle_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    caplog,
    recwarn,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "podium-secret-token-" + "9" * 20
    fake_kaggle.token = token
    secrets = [fake_kaggle.key, token, "wrong-secret-key-42"]
    dest = kaggle_home / "out"
    messages: list[str] = []

    pk.download("demo-seg", dest / "all")
    pk.download("demo-seg", dest / "one", files=["train.csv"])
    csv = write_csv(kaggle_home / "out")
    pk.submit("demo-seg", csv, "msg", wait=True, poll_interval=0.01, timeout=10)
    pk.submissions("demo-seg")
    pk.leaderboard("demo-seg")
    for bad in (
        lambda: pk.download("locked-comp", dest / "locked"),
        lambda: pk.submit(
            "demo-seg",
            write_csv(kaggle_home, b"x,y\n", "bad.csv"),
            "m",
            wait=True,
            poll_interval=0.01,
        ),
    ):
        with pytest.raises(KaggleError) as err:
            bad()
        messages += [str(err.value), repr(err.value)]
    fake_kaggle.fail_uploads = True
    with pytest.raises(KaggleError) as err:
        pk.submit("demo-seg", csv, "m")
    messages.append(str(err.value))
    fake_kaggle.fail_uploads = False

    monkeypatch.setenv("KAGGLE_KEY", "wrong-secret-key-42")
    with pytest.raises(KaggleError) as err:
        pk.download("demo-seg", dest / "denied")
    messages.append(str(err.value))

    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", token)
    pk.download("demo-seg", dest / "all", force=True)
    pk.submit("demo-seg", csv, "with token", wait=True, poll_interval=0.01, timeout=10)
    assert fake_kaggle.api_calls("CreateSubmission")[-1]["auth"] == "bearer"

    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text, *messages]
    texts += [str(w.message) for w in recwarn]
    written = [
        p
        for p in kaggle_home.rglob("*")
        if p.is_file() and p.name not in ("kaggle.json", "access_token")
    ]
    assert len(written) > 5  # the scan really covers the outputs
    for secret in secrets:
        assert all(secret not in text for text in texts), secret
        for path in written:
            assert secret.encode() not in path.read_bytes(), (secret, path)


def test_format_table() -> None:
    rows = [
        {"rank": 1, "team_name": "Bob", "score": 0.9},
        {"rank": 12, "team_name": "Alice Team", "score": None},
    ]
    table = pk.format_table(rows, ["rank", "team_name", "score"])
    assert table.splitlines() == [
        "rank  team_name   score",
        "----  ----------  -----",
        "   1  Bob           0.9",
        "  12  Alice Team",
    ]
    assert pk.format_table([], ["a"]) == "a\n-"


def test_subprocess_reaches_the_fake_through_sitecustomize(fake_kaggle: FakeKaggle) -> None:
    # Seam B, for tests that run podium in a child process.
    shim = Path(__file__).parent / "kaggle_sitecustomize"
    env = dict(os.environ, PODIUM_FAKE_KAGGLE_URL=fake_kaggle.url, PYTHONPATH=str(shim))
    code = "from podium import kaggle; print(len(kaggle.list_files('demo-seg')))"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"
    assert fake_kaggle.api_calls("ListDataFiles")
