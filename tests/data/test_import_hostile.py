"""Hostile input to import_files: loops, duplicates, deep nesting, corrupt archives, outputs over inputs,
non-finite numbers, clashing ids, signals and permissions. Each test reproduces one reported failure."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instillm.cli import app
from instillm.data.formats import FORMATS, MAX_TREE_DEPTH, RowContext
from instillm.data.importer import MAX_META_DEPTH, ImportSummary, import_files, import_mt_bench, read_examples
from instillm.data.io import read_rows
from instillm.errors import DataError, RowError

GOOD = {"instruction": "Say hi.", "output": "Hi!"}
CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
DEEP_LINE = "[" * 200_000 + "]" * 200_000
REPO = Path(__file__).resolve().parents[2]


def lines(path: Path) -> list[dict]:
    """The JSON lines of a file, parsed strictly (NaN / Infinity are not JSON)."""
    return [json.loads(x, parse_constant=_no_constant) for x in path.read_text(encoding="utf-8").splitlines()]


def _no_constant(token: str) -> None:
    raise AssertionError(f"invalid JSON constant {token} written")


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSONL: str written as a line, anything else as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def flat(mid: str, parent: str | None, role: str, tree: str = "T", text: str = "") -> dict:
    """A flat OpenAssistant message row."""
    return {"message_id": mid, "parent_id": parent, "message_tree_id": tree, "role": role, "text": text or mid}


def accounted(summary: ImportSummary) -> None:
    """Every row read is kept or rejected, and the files say the same as the summary."""
    assert summary.rows_read == summary.rows_imported + summary.rows_rejected
    assert len(lines(summary.output)) == summary.examples_written
    assert len(lines(summary.rejects_path)) == summary.rows_rejected + len(summary.empty_files)


def rejects(summary: ImportSummary) -> list[tuple[int, str]]:
    """(line, reason) of every reject."""
    return [(r["line"], r["reason"]) for r in lines(summary.rejects_path)]


# ---------------------------------------------------------------- 1. loops and depth in OpenAssistant trees


@pytest.mark.timeout(20)
def test_flat_oasst_message_that_is_its_own_parent_is_a_cycle(tmp_path: Path) -> None:
    rows = [
        flat("s", None, "prompter"),
        flat("s", "s", "assistant"),
        flat("t", None, "prompter", "t"),
        flat("u", "t", "assistant", "t"),
    ]
    summary = import_files([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out.jsonl")
    accounted(summary)
    assert sorted(rejects(summary)) == [(1, "no_response"), (2, "cycle")]
    assert [r["meta"]["message_ids"] for r in lines(summary.output)] == [["t", "u"]]


@pytest.mark.timeout(20)
def test_flat_oasst_loop_detached_from_the_root_is_a_cycle(tmp_path: Path) -> None:
    rows = [
        flat("r", None, "prompter"),
        flat("a", "r", "assistant"),
        flat("x", "y", "prompter"),
        flat("y", "x", "assistant"),
        flat("o", "gone", "assistant"),
    ]
    summary = import_files([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out.jsonl")
    accounted(summary)
    assert sorted(rejects(summary)) == [(3, "cycle"), (4, "cycle"), (5, "orphan_message")]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("all_paths", [False, True])
def test_nested_oasst_structure_that_loops_is_a_cycle(all_paths: bool) -> None:
    answer = {"message_id": "a", "role": "assistant", "text": "yo", "replies": []}
    root = {"message_id": "r", "parent_id": None, "role": "prompter", "text": "hi", "replies": [answer]}
    answer["replies"].append(root)  # not possible from JSON text, but nothing may loop on it
    with pytest.raises(RowError) as e:
        FORMATS["oasst"](root, RowContext.for_file("f.jsonl", all_paths).at(1))
    assert e.value.reason == "cycle"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("all_paths", [False, True])
def test_flat_oasst_chain_deeper_than_the_bound_is_too_deep(tmp_path: Path, all_paths: bool) -> None:
    n = MAX_TREE_DEPTH + 10
    rows = [flat("m0", None, "prompter")]
    rows += [flat(f"m{i}", f"m{i - 1}", "assistant" if i % 2 else "prompter") for i in range(1, n)]
    rows += [flat("t", None, "prompter", "t"), flat("u", "t", "assistant", "t")]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = import_files([src], tmp_path / "out.jsonl", all_paths=all_paths)
    accounted(summary)
    assert summary.rejects_by_reason == {"too_deep": n} and summary.rows_imported == 2


# ---------------------------------------------------------------- 2. duplicated flat message ids


def test_flat_oasst_duplicate_message_id_is_rejected_not_lost(tmp_path: Path) -> None:
    rows = [
        flat("a", None, "prompter"),
        flat("b", "a", "assistant", text="first reply"),
        flat("b", "a", "assistant", text="second reply"),
    ]
    summary = import_files([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out.jsonl")
    accounted(summary)
    assert summary.rows_imported == 2 and rejects(summary) == [(3, "duplicate_id")]
    (reject,) = lines(summary.rejects_path)
    assert "second reply" in reject["raw"] and "line 2" in reject["detail"]
    assert lines(summary.output)[0]["messages"][1]["content"] == "first reply"


# ---------------------------------------------------------------- 3. one bad line, corrupt archives


def test_deeply_nested_line_is_one_reject(tmp_path: Path) -> None:
    summary = import_files([write_jsonl(tmp_path / "in.jsonl", [GOOD, DEEP_LINE, GOOD])], tmp_path / "out.jsonl")
    accounted(summary)
    assert [r["id"] for r in lines(summary.output)] == ["in-1", "in-3"]
    assert rejects(summary) == [(2, "too_deep")]


def test_deeply_nested_line_in_canonical_file_is_a_data_error(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}, DEEP_LINE])
    with pytest.raises(DataError, match=r"c\.jsonl:2: too_deep"):
        list(read_examples(src))


def test_huge_integer_is_one_reject_not_a_file_error(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD, '{"instruction": "x", "output": "y", "n": ' + "9" * 5000 + "}"])
    summary = import_files([src], tmp_path / "out.jsonl")
    accounted(summary)
    assert rejects(summary) == [(2, "malformed_json")]


def corrupt_gzip(path: Path, variant: str, n: int = 30) -> Path:
    """A .jsonl.gz whose first n lines are good and whose rest is damaged in one of three ways."""
    good = gzip.compress("".join(json.dumps({**GOOD, "output": f"Hi {i}!"}) + "\n" for i in range(n)).encode())
    second = bytearray(gzip.compress(b'{"instruction": "a", "output": "b"}\n' * 10))
    if variant == "bad_block":
        second[10] = 0x07  # a deflate block of the reserved type 3: zlib.error
    data = {
        "bad_block": good + second,
        "truncated": good + second[: len(second) // 2],
        "not_gzip": b"this is not gzip data\n",
    }[variant]
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "variant,cause,where",
    [
        ("bad_block", zlib.error, "after line 30"),
        ("truncated", EOFError, "after line 30"),
        ("not_gzip", gzip.BadGzipFile, "at its start"),
    ],
)
def test_corrupt_gzip_is_one_line_data_error_naming_file_and_last_good_line(
    tmp_path: Path, variant: str, cause: type, where: str
) -> None:
    src = corrupt_gzip(tmp_path / "bad.jsonl.gz", variant)
    with pytest.raises(DataError) as e:
        import_files([src], tmp_path / "out.jsonl")
    assert isinstance(e.value.__cause__, cause)
    message = str(e.value)
    assert "\n" not in message and str(src) in message and where in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl.gz"]  # no output, no temp file


# ---------------------------------------------------------------- 4. outputs over inputs


def test_output_over_an_input_is_refused_before_reading(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    before = src.read_bytes()
    for out in (src, tmp_path / "." / "a.jsonl", Path(os.path.relpath(src))):
        with pytest.raises(DataError, match=r"output .*a\.jsonl would overwrite input .*a\.jsonl"):
            import_files([src], out)
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_rejects_file_over_an_input_is_refused(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "b.rejects.jsonl", [GOOD, "{bad"])
    before = src.read_bytes()
    with pytest.raises(DataError, match=r"rejects file .*b\.rejects\.jsonl .*would overwrite input"):
        import_files([src], tmp_path / "b.jsonl")
    assert src.read_bytes() == before and not (tmp_path / "b.jsonl").exists()


def test_output_through_a_symlink_or_hard_link_is_refused(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    (tmp_path / "link.jsonl").symlink_to(src)
    os.link(src, tmp_path / "hard.jsonl")
    for out in ("link.jsonl", "hard.jsonl"):
        with pytest.raises(DataError, match="would overwrite input"):
            import_files([src], tmp_path / out)
    with pytest.raises(DataError, match="would overwrite input"):
        import_files([tmp_path / "link.jsonl"], src)
    assert json.loads(src.read_text()) == GOOD


def test_same_input_spelled_twice_is_refused(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    (tmp_path / "link.jsonl").symlink_to(src)
    with pytest.raises(DataError, match="more than once"):
        import_files([src, tmp_path / "." / "a.jsonl"], tmp_path / "out.jsonl")
    with pytest.raises(DataError, match="more than once"):
        import_files([src, tmp_path / "link.jsonl"], tmp_path / "out.jsonl")


def test_output_inside_an_input_directory_is_refused(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list([GOOD]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="would overwrite input"):
        import_files([tmp_path / "ds"], tmp_path / "ds" / "out.jsonl")


def test_mt_bench_output_over_an_input_is_refused(tmp_path: Path) -> None:
    q = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "turns": ["Hi?"]}])
    a = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "choices": [{"turns": ["Hello."]}]}])
    for out in (q, a):
        with pytest.raises(DataError, match="would overwrite input"):
            import_mt_bench(q, a, output=out)
    assert len(import_mt_bench(q, a, output=tmp_path / "mt.jsonl")) == 1


# ---------------------------------------------------------------- 5. invalid JSON out, clashing ids


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_constant_is_rejected(tmp_path: Path, token: str) -> None:
    bad = f'{{"messages": {json.dumps(CHAT)}, "score": {token}}}'
    summary = import_files([write_jsonl(tmp_path / "in.jsonl", [{"messages": CHAT}, bad])], tmp_path / "out.jsonl")
    accounted(summary)  # `lines` parses strictly: no NaN was written
    assert rejects(summary) == [(2, "not_finite")]


def test_overflowing_number_that_reaches_the_output_is_rejected(tmp_path: Path) -> None:
    bad = f'{{"messages": {json.dumps(CHAT)}, "meta": {{"score": 1e999}}}}'
    summary = import_files([write_jsonl(tmp_path / "in.jsonl", [{"messages": CHAT}, bad])], tmp_path / "out.jsonl")
    accounted(summary)
    assert rejects(summary) == [(2, "not_finite")]


def test_non_finite_number_in_a_json_document_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('[{"messages": %s}, {"messages": %s, "score": NaN}]' % ((json.dumps(CHAT),) * 2))
    summary = import_files([tmp_path / "in.json"], tmp_path / "out.jsonl")
    accounted(summary)
    assert rejects(summary) == [(2, "not_finite")]


def test_non_finite_number_in_parquet_is_rejected(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"messages": CHAT, "score": 1.0}, {"messages": CHAT, "score": float("nan")}]),
        tmp_path / "in.parquet",
    )
    summary = import_files([tmp_path / "in.parquet"], tmp_path / "out.jsonl")
    accounted(summary)
    assert rejects(summary) == [(2, "not_finite")] and lines(summary.output)[0]["meta"] == {"score": 1.0}


def test_meta_nested_too_deeply_to_read_back_is_rejected(tmp_path: Path) -> None:
    deep = '{"a": ' * (MAX_META_DEPTH + 1) + "1" + "}" * (MAX_META_DEPTH + 1)
    ok = '{"a": ' * (MAX_META_DEPTH - 1) + "1" + "}" * (MAX_META_DEPTH - 1)
    rows = [f'{{"messages": {json.dumps(CHAT)}, "meta": {ok}}}', f'{{"messages": {json.dumps(CHAT)}, "meta": {deep}}}']
    summary = import_files([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out.jsonl")
    accounted(summary)
    assert rejects(summary) == [(2, "too_deep")]


def test_json_document_nested_too_deeply_is_a_one_line_data_error(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text(DEEP_LINE)
    with pytest.raises(DataError, match=r"cannot read .*in\.json: the document nests .* too deeply") as e:
        import_files([tmp_path / "in.json"], tmp_path / "out.jsonl")
    assert "\n" not in str(e.value)


def test_unicode_line_separators_are_escaped_in_outputs(tmp_path: Path) -> None:
    text = "one\u2028two\u2029three\x85four"
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": text, "output": text}, {"instruction": text}])
    summary = import_files([src], tmp_path / "out.jsonl")
    for path in (summary.output, summary.rejects_path):
        assert len(path.read_text(encoding="utf-8").splitlines()) == 1, path
    assert lines(summary.output)[0]["messages"][1]["content"] == text


def test_same_file_name_in_two_folders_gives_distinct_ids(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a" / "data.jsonl", [GOOD])
    b = write_jsonl(tmp_path / "b" / "data.jsonl", [GOOD])
    c = write_jsonl(tmp_path / "c" / "other.jsonl", [GOOD])
    out = lines(import_files([a, b, c], tmp_path / "out.jsonl").output)
    assert [r["id"] for r in out] == ["a/data-1", "b/data-1", "other-1"]
    assert [r["task"] for r in out] == ["data", "data", "other"]


def test_same_stem_in_one_folder_gives_distinct_ids(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "data.jsonl", [GOOD])
    (tmp_path / "data.json").write_text(json.dumps([GOOD]))
    b = write_jsonl(tmp_path / "b" / "data.jsonl", [GOOD])
    out = import_files([a, tmp_path / "data.json", b], tmp_path / "out.jsonl").output
    here = tmp_path.name  # only the suffix tells the first two apart, so their folder is named too
    assert [r["id"] for r in lines(out)] == [f"{here}/data.jsonl-1", f"{here}/data.json-1", "b/data.jsonl-1"]


def test_canonical_rows_sharing_an_id_keep_the_first(tmp_path: Path) -> None:
    row = {"id": "x", "source": "s", "task": "t", "category": "", "messages": CHAT, "meta": {}}
    one = write_jsonl(tmp_path / "one.jsonl", [row, {**row, "meta": {"second": True}}, {**row, "id": "y"}])
    two = write_jsonl(tmp_path / "two.jsonl", [{**row, "id": "y"}, {**row, "id": "two-3"}, {"messages": CHAT, "k": 1}])
    summary = import_files([one, two], tmp_path / "out.jsonl")
    accounted(summary)
    out = lines(summary.output)
    assert [r["id"] for r in out] == ["x", "y", "two-3"] and out[0] == row  # line 3's own id would be two-3
    assert [(Path(r["file"]).name, r["line"], r["reason"]) for r in lines(summary.rejects_path)] == [
        ("one.jsonl", 2, "duplicate_id"),
        ("two.jsonl", 1, "duplicate_id"),
        ("two.jsonl", 3, "duplicate_id"),
    ]


# ---------------------------------------------------------------- atomic outputs: permissions and signals


def test_outputs_get_the_users_umask(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD, "{bad"])
    old = os.umask(0o027)
    try:
        summary = import_files([src], tmp_path / "out.jsonl")
        import_mt_bench(
            write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "turns": ["Hi?"]}]),
            write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "choices": [{"turns": ["Yo."]}]}]),
            output=tmp_path / "mt.jsonl",
        )
    finally:
        os.umask(old)
    for path in (summary.output, summary.rejects_path, tmp_path / "mt.jsonl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


SIGTERM_SCRIPT = """
import os, signal, sys
from instillm.data.importer import import_files
import_files([sys.argv[1]], sys.argv[2], progress=lambda n: os.kill(os.getpid(), signal.SIGTERM))
"""


def test_sigterm_while_writing_leaves_no_temp_file(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD] * 5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_SCRIPT, str(src), str(tmp_path / "out.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"], done.stderr


def test_sigterm_handler_is_restored_after_import(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    import_files([write_jsonl(tmp_path / "in.jsonl", [GOOD])], tmp_path / "out.jsonl")
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------- the CLI: one line, no traceback


runner = CliRunner()


def cli_import(*args: str):
    """`instillm data import ARGS` with a wide console, so one message stays on one line."""
    return runner.invoke(app, ["data", "import", *args], env={"COLUMNS": "100000", "TERM": "xterm"})


def assert_one_line_failure(res, *needles: str) -> None:
    """A non-zero exit with a single error line and no traceback."""
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("error:") and all(n in line for n in needles), line


@pytest.mark.parametrize("variant", ["bad_block", "truncated", "not_gzip"])
def test_cli_corrupt_gzip_fails_in_one_line(tmp_path: Path, variant: str) -> None:
    src = corrupt_gzip(tmp_path / "bad.jsonl.gz", variant)
    assert_one_line_failure(cli_import(str(src), "-o", str(tmp_path / "out.jsonl")), str(src), "cannot read")


def test_cli_deeply_nested_line_is_rejected_and_the_import_goes_on(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD, DEEP_LINE])
    res = cli_import(str(src), "-o", str(tmp_path / "out.jsonl"))
    assert res.exit_code == 0, res.output
    assert "too_deep: 1" in res.stdout and "wrote 1 example(s)" in res.stdout


def test_cli_output_over_input_fails_in_one_line(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    before = src.read_bytes()
    assert_one_line_failure(cli_import(str(src), "-o", str(src)), "would overwrite input")
    rej = write_jsonl(tmp_path / "b.rejects.jsonl", [GOOD])
    assert_one_line_failure(cli_import(str(rej), "-o", str(tmp_path / "b.jsonl")), "would overwrite input")
    assert src.read_bytes() == before and json.loads(rej.read_text()) == GOOD


def test_read_rows_reports_last_good_line(tmp_path: Path) -> None:
    src = corrupt_gzip(tmp_path / "bad.jsonl.gz", "bad_block", n=5)
    rows = []
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz after line 5: "):
        rows.extend(read_rows(src))
    assert [r.line for r in rows] == [1, 2, 3, 4, 5]
