"""The ledger: append-only JSON lines that survive concurrent writers and killed processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest

from podium import ledger
from podium.io import PodiumError

# Forked writers start instantly (no re-import of podium); they only touch files.
FORK = multiprocessing.get_context("fork")


def payload(writer: int, i: int) -> str:
    """A record body whose content is checkable and whose size varies up to ~40 KB, so some
    lines span many pages."""
    return f"{writer}:{i}:" + "x" * (37 * i % 40_000)


def append_many(path, writer: int, count: int, start) -> None:
    start.wait()
    for i in range(count):
        ledger.append(path, {"writer": writer, "i": i, "payload": payload(writer, i)})


def append_forever(path) -> None:
    i = 0
    while True:
        ledger.append(path, {"writer": 0, "i": i, "payload": payload(0, i)})
        i += 1


def test_append_and_read_round_trip(tmp_path):
    path = ledger.ledger_path(tmp_path / "runs", "comp")
    assert path == tmp_path / "runs" / "comp" / "ledger.jsonl"
    assert ledger.read(path) == []
    ledger.record_run(path, {"fold": 0, "seed": 1, "best_score": 0.5, "run_dir": "/r/a"})
    ledger.append(path, {"kind": "note", "text": "line\nbreak"})
    records = ledger.read(path)
    assert [r["kind"] for r in records] == ["run", "note"]
    assert records[0]["best_score"] == 0.5 and records[1]["text"] == "line\nbreak"
    assert len(path.read_text().splitlines()) == 2  # one human-readable line per record


def test_concurrent_writers_lose_and_mix_nothing(tmp_path):
    path = tmp_path / "ledger.jsonl"
    start = FORK.Event()
    writers = [FORK.Process(target=append_many, args=(path, w, 60, start)) for w in range(4)]
    for p in writers:
        p.start()
    start.set()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    records = ledger.read(path)
    assert len(path.read_bytes().splitlines()) == len(records) == 240
    for w in range(4):
        mine = [r for r in records if r["writer"] == w]
        assert [r["i"] for r in mine] == list(range(60))  # all there, in each writer's order
        assert all(r["payload"] == payload(w, r["i"]) for r in mine)


def test_killed_writer_leaves_a_readable_ledger_and_no_stuck_lock(tmp_path):
    path = tmp_path / "ledger.jsonl"
    writer = FORK.Process(target=append_forever, args=(path,))
    writer.start()
    deadline = time.monotonic() + 30
    while len(ledger.read(path)) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(writer.pid, signal.SIGKILL)  # wherever it is: in the lock, mid-write, between
    writer.join(10)
    assert writer.exitcode == -signal.SIGKILL
    records = ledger.read(path)
    assert len(records) >= 40
    assert [r["i"] for r in records] == list(range(len(records)))
    assert all(r["payload"] == payload(0, r["i"]) for r in records)
    # The OS released the dead writer's lock: the next append neither waits nor merges lines.
    t0 = time.monotonic()
    ledger.append(path, {"writer": 1, "i": 0})
    assert time.monotonic() - t0 < ledger.LOCK_TIMEOUT_S / 2
    after = ledger.read(path)
    assert after[: len(records)] == records and after[-1] == {"writer": 1, "i": 0}


def test_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line(tmp_path):
    # What a kill in the middle of write() (or a power cut) can leave: half a record.
    path = tmp_path / "ledger.jsonl"
    for i in range(3):
        ledger.append(path, {"i": i})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"i": 3, "payload": "cut sho')
    assert [r["i"] for r in ledger.read(path)] == [0, 1, 2]
    ledger.append(path, {"i": 4})
    assert [r["i"] for r in ledger.read(path)] == [0, 1, 2, 4]
    assert path.read_bytes().startswith(whole)  # intact records are never rewritten


def test_runs_keep_the_latest_record_of_a_resumed_run():
    records = [
        {"kind": "run", "run_dir": "/r/a", "best_score": 0.1, "epochs_run": 1},
        {"kind": "run", "run_dir": "/r/b", "best_score": 0.3},
        {"kind": "submission", "ref": "7"},
        {"kind": "run", "run_dir": "/r/a", "best_score": 0.2, "epochs_run": 2},  # resumed
    ]
    runs = ledger.runs(records)
    assert [(r["run_dir"], r["best_score"]) for r in runs] == [("/r/a", 0.2), ("/r/b", 0.3)]


def test_submission_records_merge_by_ref_and_hash_the_file(tmp_path):
    path = tmp_path / "ledger.jsonl"
    csv = tmp_path / "submission.csv"
    csv.write_text("id,rle_mask\na,1 2\n")
    first = ledger.record_submission(
        path, ref=42, file=csv, runs=["runs/x", tmp_path / "y"], message="folds 0-4",
        status="PENDING", submitted_at="2026-01-02T03:04:05",
    )  # fmt: skip
    assert first["sha256"] == ledger.hash_file(csv) and len(first["sha256"]) == 64
    assert first["runs"] == ["runs/x", str(tmp_path / "y")]
    ledger.record_submission(path, ref="42", status="COMPLETE", public_score=0.81)
    ledger.record_submission(path, ref=43, public_score=0.7, private_score=0.69)
    merged = ledger.submissions(ledger.read(path))
    assert [s["ref"] for s in merged] == ["42", "43"]
    s42 = merged[0]
    assert s42["status"] == "COMPLETE" and s42["public_score"] == 0.81
    assert s42["message"] == "folds 0-4" and s42["runs"] == ["runs/x", str(tmp_path / "y")]
    assert s42.get("private_score") is None
    assert merged[1]["private_score"] == 0.69
    assert all(json.loads(line)["kind"] == "submission" for line in path.read_text().splitlines())


@pytest.mark.parametrize("ref", [None, "", 0, "0"])
def test_a_submission_without_a_real_ref_is_refused(tmp_path, ref):
    # kaggle 2.2.4 reports a failed upload as ref 0: it must not enter the ledger as a submission.
    path = tmp_path / "ledger.jsonl"
    with pytest.raises(PodiumError, match="ledger.jsonl: cannot record a submission"):
        ledger.record_submission(path, ref=ref, public_score=0.5)
    assert ledger.read(path) == []
