"""Record readers: every container yields numbered rows, bad rows become errors, big files stream."""

from __future__ import annotations

import csv
import gzip
import json
import os
import stat
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instillm.data.io import RawRow, read_rows, source_name, source_stem
from instillm.errors import DataError

ROW = {"instruction": "Say hi.", "output": "Hi!"}


def write_lines(path: Path, lines: list[bytes]) -> Path:
    """Write raw lines (bytes) joined by newlines."""
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_jsonl_rows_are_numbered_by_physical_line(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "a.jsonl", [json.dumps(ROW).encode(), b"", b"  ", json.dumps({"x": 1}).encode()])
    rows = list(read_rows(p))
    assert [(r.line, r.record) for r in rows] == [(1, ROW), (4, {"x": 1})]  # blank lines are not rows
    assert rows[0].file == str(p) and rows[0].raw == json.dumps(ROW) and rows[0].error is None


def test_jsonl_bad_lines_are_errors_not_crashes(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "a.jsonl", [b'{"a": 1', b'\xff\xfe{"a": 1}', b"[1, 2]", b'"text"', b'{"ok": true}'])
    rows = list(read_rows(p))
    assert [(r.line, r.error.reason if r.error else None) for r in rows] == [
        (1, "malformed_json"),
        (2, "undecodable_bytes"),
        (3, "not_an_object"),
        (4, "not_an_object"),
        (5, None),
    ]
    assert rows[1].record is None and "\ufffd" in rows[1].raw
    assert rows[0].raw == '{"a": 1'


def test_jsonl_bom_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\r\n" + json.dumps(ROW).encode() + b"\r\n")
    assert [r.record for r in read_rows(p)] == [ROW, ROW]


def test_raw_is_truncated(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "a.jsonl", [b"{" + b"x" * 20_000])
    (row,) = read_rows(p)
    assert row.error.reason == "malformed_json" and len(row.raw) <= 10_001


def test_gzip_variants(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(json.dumps(ROW).encode() + b"\n")
    with gzip.open(tmp_path / "b.json.gz", "wt") as f:
        json.dump([ROW, ROW], f)
    assert [r.record for r in read_rows(tmp_path / "a.jsonl.gz")] == [ROW]
    assert [(r.line, r.record) for r in read_rows(tmp_path / "b.json.gz")] == [(1, ROW), (2, ROW)]


def test_truncated_gzip_is_a_data_error(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(json.dumps({"i": i, "pad": "x" * 50}).encode() + b"\n" for i in range(2000)))
    (tmp_path / "a.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="a.jsonl.gz"):
        list(read_rows(tmp_path / "a.jsonl.gz"))


def test_json_array_object_and_jsonl_in_disguise(tmp_path: Path) -> None:
    (tmp_path / "arr.json").write_text(json.dumps([ROW, 5]))
    (tmp_path / "obj.json").write_text(json.dumps({"version": 1, "data": [ROW]}))
    (tmp_path / "lines.json").write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n")
    arr = list(read_rows(tmp_path / "arr.json"))
    assert [(r.line, r.error.reason if r.error else None) for r in arr] == [(1, None), (2, "not_an_object")]
    assert [r.record for r in read_rows(tmp_path / "obj.json")] == [ROW]
    assert [r.line for r in read_rows(tmp_path / "lines.json")] == [1, 2]


def test_empty_json_documents_hold_no_rows(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_text("\n")
    (tmp_path / "list.json").write_text("[]")
    assert list(read_rows(tmp_path / "empty.json")) == [] == list(read_rows(tmp_path / "list.json"))


def test_malformed_json_document_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('[{"a": 1},')
    with pytest.raises(DataError, match="malformed JSON in .*bad.json"):
        list(read_rows(tmp_path / "bad.json"))


def test_csv_lines_multiline_fields_and_bad_rows(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_bytes(b'instruction,output\nSay hi.,Hi!\n"Two\nlines",ok\nonly\nx,y,extra\nbad \xff,z\n')
    rows = list(read_rows(p))
    assert [r.line for r in rows] == [2, 3, 5, 6, 7]
    assert rows[0].record == ROW
    assert rows[1].record == {"instruction": "Two\nlines", "output": "ok"}
    assert rows[2].record == {"instruction": "only"}  # the missing column is absent, not None
    assert rows[3].error.reason == "malformed_csv"
    assert rows[4].error.reason == "undecodable_bytes"


def test_parquet_rows(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist([ROW] * 2500), tmp_path / "a.parquet", row_group_size=1000)
    rows = list(read_rows(tmp_path / "a.parquet"))
    assert len(rows) == 2500 and rows[-1].line == 2500 and rows[0].record == ROW
    assert json.loads(rows[0].raw) == ROW


def test_saved_dataset_directory(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list([ROW, {**ROW, "output": "Hello"}]).save_to_disk(str(tmp_path / "ds"))
    rows = list(read_rows(tmp_path / "ds"))
    assert [(r.line, r.record["output"]) for r in rows] == [(1, "Hi!"), (2, "Hello")]
    datasets.DatasetDict({"train": datasets.Dataset.from_list([ROW])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="split"):
        read_rows(tmp_path / "dd")
    assert [r.record for r in read_rows(tmp_path / "dd" / "train")] == [ROW]


def test_unreadable_sources(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="not a saved dataset"):
        read_rows(tmp_path / "plain")
    with pytest.raises(DataError, match="unsupported file type"):
        read_rows(tmp_path / "a.txt")
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no such file"):
        read_rows("data/missing.jsonl")  # looks like org/name, but is a file name


def test_hub_ids_route_to_streaming_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(repo: str, split: str, streaming: bool):
        calls.append((repo, split, streaming))
        return iter([ROW])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert [r.record for r in read_rows("tatsu-lab/alpaca")] == [ROW]
    list(read_rows("org/name:test"))
    assert calls == [("tatsu-lab/alpaca", "train", True), ("org/name", "test", True)]
    assert source_name("org/name:test") == "org/name:test" and source_stem("org/name:test") == "name"


def test_hub_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="no network"):
        list(read_rows("org/name"))


def test_source_stem() -> None:
    assert source_stem("/x/anthropic_hh.jsonl.gz") == "anthropic_hh"
    assert source_stem("a/b/ag_news_classify.jsonl") == "ag_news_classify"
    assert source_stem("data.parquet") == "data"


def _peak_bytes(rows) -> tuple[int, int]:
    """(rows seen, peak traced bytes) while iterating rows."""
    tracemalloc.start()
    try:
        n = sum(1 for _ in rows)
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def big_rows() -> list[dict]:
    """~6 MB of rows: far more than the streaming readers may hold at once."""
    return [{"instruction": f"row {i}", "output": "x" * 300} for i in range(20_000)]


def test_jsonl_streams_in_constant_memory(tmp_path: Path, big_rows: list[dict]) -> None:
    p = tmp_path / "big.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in big_rows))
    n, peak = _peak_bytes(read_rows(p))
    assert n == 20_000 and peak < 1_000_000, peak


def test_csv_streams_in_constant_memory(tmp_path: Path, big_rows: list[dict]) -> None:
    p = tmp_path / "big.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "output"])
        w.writeheader()
        w.writerows(big_rows)
    n, peak = _peak_bytes(read_rows(p))
    assert n == 20_000 and peak < 1_000_000, peak


def test_parquet_streams_in_batches(tmp_path: Path, big_rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(big_rows), tmp_path / "big.parquet", row_group_size=2000)
    n, peak = _peak_bytes(read_rows(tmp_path / "big.parquet"))
    assert n == 20_000 and peak < 3_000_000, peak


def test_rawrow_is_frozen() -> None:
    row = RawRow("f", 1, {}, "{}")
    with pytest.raises(AttributeError):
        row.line = 2  # type: ignore[misc]


def test_temp_files_and_dirs_beside_a_target_are_hidden_fresh_and_user_permissioned(tmp_path):
    from instillm.data.io import temp_beside, temp_dir_beside

    target = tmp_path / "out.jsonl"
    old = os.umask(0o027)
    try:
        f, d = temp_beside(target), temp_dir_beside(target)
    finally:
        os.umask(old)
    assert f.parent == d.parent == tmp_path and f.name.startswith(".out.jsonl.") and d.name.startswith(".out.jsonl.")
    assert f.is_file() and d.is_dir() and f != d and temp_dir_beside(target) != d
    assert stat.S_IMODE(f.stat().st_mode) == 0o640 and stat.S_IMODE(d.stat().st_mode) == 0o750
