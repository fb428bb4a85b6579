"""The app: binding and auth, the CLI, and every API endpoint through gradio_client against a running `instillm ui`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
from gradio_client import Client  # noqa: E402

from instillm.errors import ConfigError  # noqa: E402
from instillm.ui import app  # noqa: E402


def test_loopback_by_default_and_a_warning_without_auth_elsewhere():
    assert app.is_loopback("127.0.0.1") and app.is_loopback("localhost") and app.is_loopback("::1")
    assert not app.is_loopback("0.0.0.0") and not app.is_loopback("192.168.1.4") and not app.is_loopback("example.org")
    assert app.bind_warning("127.0.0.1", None) is None and app.bind_warning("0.0.0.0", ("u", "p")) is None
    assert "--auth" in app.bind_warning("0.0.0.0", None)
    assert app.parse_auth("me:pa:ss") == ("me", "pa:ss") and app.parse_auth(None) is None
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        app.parse_auth("nopassword")


def test_importing_the_cli_does_not_import_gradio():
    code = "import sys, instillm.cli; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_ui_command_is_registered():
    from typer.testing import CliRunner

    from instillm.cli import app as cli

    result = CliRunner().invoke(cli, ["ui", "--help"])
    assert result.exit_code == 0 and "--auth" in result.output and "--port" in result.output


def test_auth_is_asked_for(tmp_path):
    from tests.ui.conftest import free_port

    demo, url = app.launch(app.UIOptions(workdir=tmp_path), port=free_port(), auth=("me", "pw"), block=False)
    try:
        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises its own error types for a refused login
            Client(url, verbose=False)
        assert Client(url, auth=("me", "pw"), verbose=False).view_api(print_info=False, return_format="dict")
    finally:
        demo.close()


def test_filter_widgets_become_a_row_filter():
    flt = app.row_filter("upper", "(any)", "(any)", "flagged", " 10 ", "", "abc", "keep")
    assert (flt.task, flt.flag, flt.min_length, flt.max_length, flt.text, flt.review) == (
        "upper",
        "flagged",
        10,
        None,
        "abc",
        "keep",
    )
    with pytest.raises(ConfigError, match="whole number"):
        app.bound("ten")


def test_the_timer_redraws_only_when_metrics_jsonl_changed(tiny_run):
    import gradio as gr

    skip = (gr.skip(),) * 10
    assert app.tick(None, True, None) == skip  # nothing open: no update
    first = app.tick(str(tiny_run), True, None)
    stamp, progress, loss = first[0], first[1], first[2]
    assert progress.startswith("step 4 of 4") and set(loss["metric"]) == {"loss", "eval_loss"}
    assert app.tick(str(tiny_run), True, stamp) == skip and app.tick(str(tiny_run), False, None) == skip
    assert len(first) == 10 and list(first[6]["split"]) == list(app.run_tables(str(tiny_run))[0]["split"])


@pytest.fixture(scope="module")
def client(ui_server) -> Client:
    return Client(ui_server.url, verbose=False)


def rows_of(table: dict) -> list[list]:
    return table["data"]


def test_the_data_tab_through_the_api(client, ui_server, tmp_path):
    out = client.predict(str(ui_server.data), str(ui_server.model), "auto", 64, "drop", api_name="/open_data")
    summary, _task, _category, _source, _counts, _flag, flagged, _reasons, _reason, _rejects, counts, *_ = out
    assert "15 rows" in summary and "3 row(s) flagged" in summary and counts.startswith("keep: 0")
    assert {(r[0], r[1]) for r in rows_of(flagged)} == {
        ("duplicate_prompt", 13),
        ("prompt_too_long", 14),
        ("no_trained_token", 15),
    }
    table, info, page = client.predict(
        "upper", "(any)", "(any)", "(any)", None, None, "", "(any)", 1, 25, api_name="/rows"
    )
    assert [r[0] for r in rows_of(table)] == list(range(7, 13)) and info.startswith("6 of 15 rows") and page == 1
    view, response = client.predict(1, api_name="/row")
    assert '<span class="tok t" title="token 17 · id ' in view and response == "cba"
    filters = ["(any)"] * 4 + [None, None, "", "(any)", 1, 25]
    client.predict(13, *filters, api_name="/drop_row")
    counts, table, *_ = client.predict(2, "GOD", *filters, api_name="/edit_row")
    assert counts == "keep: 0, drop: 1, edit: 1; not reviewed: 13" and rows_of(table)[1][-1] == "edit"
    status = client.predict(str(tmp_path / "curated.jsonl"), True, api_name="/save_review")
    rows = [json.loads(x) for x in (tmp_path / "curated.jsonl").read_text().splitlines()]
    assert "wrote" in status and len(rows) == 14 and rows[1]["meta"]["review"]["decision"] == "edit"
    card = client.predict("", api_name="/card")
    assert "Data card" in card and "no eval set given" in card  # no run opened in this session yet


def test_the_card_through_the_api_checks_the_open_runs_eval_splits(ui_server):
    client = Client(ui_server.url, verbose=False)  # a session of its own
    client.predict(str(ui_server.data), str(ui_server.model), "auto", 64, "drop", api_name="/open_data")
    client.predict(str(ui_server.run), api_name="/open_run")
    card = client.predict("", api_name="/card")
    assert "Eval sets checked: heldout_instances (" in card and "0 row(s) overlap." in card


def test_the_runs_tab_through_the_api(client, ui_server, tmp_path):
    config, progress, loss, lr, tps, plan, splits, *_ = client.predict(str(ui_server.run), api_name="/open_run")
    assert "name: ui-tiny" in config and progress.startswith("step 4 of 4")
    assert {row[2] for row in loss["data"]} == {"loss", "eval_loss"} and len(lr["data"]) == 4 and len(tps["data"]) == 4
    assert "total_steps: 4" in plan and len(rows_of(splits)) == 3
    table, _split, _task = client.predict("after", "(any)", "(any)", api_name="/failures")
    assert rows_of(table) and all(r[-1].startswith("correct 0") for r in rows_of(table))
    status = client.predict("after", "(any)", "(any)", str(tmp_path / "failures.jsonl"), api_name="/export_failures")
    assert f"wrote {len(rows_of(table))} failure(s)" in status
    assert len((tmp_path / "failures.jsonl").read_text().splitlines()) == len(rows_of(table))


def test_the_chat_tab_through_the_api(client, ui_server):
    side = ["local", str(ui_server.model), "", ""]
    job = client.submit(*side, *side, "", "Reverse the word abc", 12, 0.0, 1.0, 0, "auto", api_name="/chat")
    a, b, prompt_a, prompt_b = job.result(timeout=120)
    assert a and a == b and prompt_a == prompt_b and "Reverse the word abc" in prompt_a  # same model, greedy
    assert len(job.outputs()) > 2  # streamed, not one answer at the end


def test_the_chat_tab_streams_an_endpoint_through_the_api(client, ui_server, tiny_server):
    local = ["local", str(ui_server.model), "", ""]
    endpoint = ["endpoint", tiny_server.model, tiny_server.base_url, ""]
    job = client.submit(*local, *endpoint, "", "Reverse the word abc", 12, 0.0, 1.0, 0, "auto", api_name="/chat")
    a, b, _, shown_b = job.result(timeout=120)
    assert a and a.strip() == b.strip() and "own saved template" in shown_b  # same model, greedy
    assert len({out[1] for out in job.outputs()} - {""}) > 1  # B's answer grew in pieces, not whole at the end


def test_a_missing_path_is_one_clear_error(tmp_path):
    from typer.testing import CliRunner

    from instillm.cli import app as cli

    missing = str(tmp_path / "nope.jsonl")
    result = CliRunner().invoke(cli, ["ui", missing, "--port", "1"])
    assert result.exit_code != 0 and "no such file or folder" in result.output and "nope.jsonl" in result.output
    assert "Traceback" not in result.output
