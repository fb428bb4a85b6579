"""The journal under hostile conditions: two writers, any string in a record, damaged run state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from instillm.errors import ConfigError, DataError
from instillm.synth.pipeline import ITEMS, STATE, Journal

REPO = Path(__file__).resolve().parents[2]

_HOLD = textwrap.dedent("""
    import sys
    from instillm.synth.pipeline import Journal
    j = Journal(sys.argv[1], {"v": 1})
    j.commit([{"i": len(j.records)}], n=len(j.records) + 1)
    print("open", flush=True)
    sys.stdin.read()
""")


def test_a_second_writer_on_a_run_dir_fails_at_once_and_loses_nothing(tmp_path):
    run = tmp_path / "run"
    Journal(run, {"v": 1}).commit([{"i": 0}, {"i": 1}], n=2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ConfigError, match=rf"{run.name} is in use by another process"):
            Journal(run, {"v": 1})
    finally:
        holder.send_signal(signal.SIGKILL)  # the OS drops its lock: no stale lock after a crash
        holder.wait(timeout=30)
    again = Journal(run, {"v": 1})
    assert again.records == [{"i": 0}, {"i": 1}, {"i": 2}] and again.state == {"n": 3}


def test_journals_of_one_process_share_the_lock_until_closed(tmp_path):
    a = Journal(tmp_path / "run", {})
    b = Journal(tmp_path / "run", {})  # the same process may reopen (e.g. to read the records)
    a.close()
    b.commit([{"i": 0}])
    b.close()
    b.close()  # twice is fine
    assert Journal(tmp_path / "run", {}).records == [{"i": 0}]


STRANGE = [
    "lone \ud800 high",
    "lone \udfff low",
    "pair 😀",
    "line\u2028sep\u2029par",
    "nel\x85",
    "nul\x00",
    "cr\r",
    "lf\n",
    "vt\x0b ff\x0c fs\x1c gs\x1d rs\x1e",
    "bom\ufeff",
    "del\x7f",
    "",
    "\\u0000 literally",
]


def test_records_round_trip_any_string(tmp_path):
    j = Journal(tmp_path / "run", {"s": STRANGE})
    j.commit([{"text": s, STRANGE[0]: s} for s in STRANGE], step=1)
    j.commit([{"text": "after"}], step=2)
    assert j.records[: len(STRANGE)] == [{"text": s, STRANGE[0]: s} for s in STRANGE]
    again = Journal(tmp_path / "run", {"s": STRANGE})
    assert again.records == j.records and again.state == {"step": 2}


def test_journals_written_by_older_versions_still_read(tmp_path):
    """Before: records as UTF-8 with surrogates passed through (`surrogatepass`)."""
    run = tmp_path / "run"
    Journal(run, {}).commit([])
    items = b"".join(
        (json.dumps({"t": s}, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")
        for s in ["plain", "lone \ud800", "é"]
    )
    (run / ITEMS).write_bytes(items)
    state = json.loads((run / STATE).read_text())
    (run / STATE).write_text(json.dumps({**state, "committed_bytes": len(items)}))
    assert [r["t"] for r in Journal(run, {}).records] == ["plain", "lone \ud800", "é"]


@pytest.mark.parametrize(
    "body",
    [
        {"version": 1, "fingerprint": {}, "state": {}},  # no committed_bytes
        {"version": 1, "fingerprint": {}, "committed_bytes": "12", "state": {}},
        {"version": 1, "fingerprint": {}, "committed_bytes": -1, "state": {}},
        {"version": 1, "fingerprint": {}, "committed_bytes": 0, "state": [1]},
        [1, 2],
    ],
)
def test_a_damaged_state_file_is_an_error_naming_it_and_the_fix(tmp_path, body):
    run = tmp_path / "run"
    Journal(run, {}).commit([{"i": 0}])
    (run / STATE).write_text(json.dumps(body))
    with pytest.raises(DataError, match=rf"{STATE}: .*delete {run}"):
        Journal(run, {})
    (run / STATE).write_text("{not json")
    with pytest.raises(DataError, match=rf"{STATE}: unreadable run state.*delete {run}"):
        Journal(run, {})


def test_a_damaged_committed_record_is_an_error_naming_the_line(tmp_path):
    run = tmp_path / "run"
    Journal(run, {}).commit([{"i": 0}, {"i": 1}])
    raw = (run / ITEMS).read_bytes()
    (run / ITEMS).write_bytes(raw.replace(b'{"i": 1}', b'{"i": 1]'))
    with pytest.raises(DataError, match=rf"{ITEMS}:2: .*delete {run}"):
        Journal(run, {})


def test_a_missing_items_file_or_a_record_that_is_not_an_object_is_an_error(tmp_path):
    run = tmp_path / "run"
    Journal(run, {}).commit([{"i": 0}])
    (run / ITEMS).write_bytes(b"[1]\n")
    state = json.loads((run / STATE).read_text())
    (run / STATE).write_text(json.dumps({**state, "committed_bytes": 4}))
    with pytest.raises(DataError, match=rf"{ITEMS}:1: damaged committed record \(\[1\]\)"):
        Journal(run, {})
    (run / ITEMS).unlink()
    with pytest.raises(DataError, match=rf"{ITEMS}: shorter than its committed length 4; delete {run}"):
        Journal(run, {})
