"""Win rates: leaderboard conformance and recovery of a planted length effect."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from instillm.errors import DataError
from instillm.evaluate.winrate import fit_logistic, length_controlled, win_rate, win_rates


def test_win_rate_equals_official_leaderboard(shared_data):
    folder = shared_data / "alpaca_eval"
    with open(folder / "leaderboard_alpaca_eval_2.csv", newline="") as f:
        board = {row[""]: row for row in csv.DictReader(f)}
    files = sorted(folder.glob("*_annotations_weighted_gpt4_turbo.json"))
    checked = 0
    for r in win_rates(files):
        if r.model not in board:
            continue  # text_davinci_003 is not on the AlpacaEval 2 leaderboard file
        ref = board[r.model]
        assert abs(r.win_rate - float(ref["win_rate"])) < 0.1
        assert abs(r.discrete_win_rate - float(ref["discrete_win_rate"])) < 0.1
        assert (r.n_wins, r.n_wins_base, r.n_draws) == (
            int(ref["n_wins"]),
            int(ref["n_wins_base"]),
            int(ref["n_draws"]),
        )
        assert r.standard_error == pytest.approx(float(ref["standard_error"]), abs=1e-6)
        assert 0 < r.lc_win_rate < 100
        checked += 1
    assert checked == 2


def synthetic(theta: float, phi: float, n: int = 4000, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base_len = int(rng.integers(200, 2000))
        model_len = int(rng.integers(200, 2000))
        rows.append((f"q{i}", "b" * base_len, "m" * model_len))
    delta = np.array([len(m) - len(b) for _, b, m in rows], dtype=float)
    x = np.tanh(delta / delta.std())
    p = 1 / (1 + np.exp(-(theta + phi * x)))
    return [
        {"instruction": q, "output_1": b, "output_2": m, "preference": 1 + float(pi)} for (q, b, m), pi in zip(rows, p)
    ]


def test_lc_fit_recovers_a_known_length_effect():
    rows = synthetic(theta=-1.0, phi=2.0)
    lc, coef = length_controlled(rows, difficulty=None)
    assert coef == pytest.approx(2.0, abs=0.05)
    assert lc == pytest.approx(100 / (1 + np.exp(1.0)), abs=0.3)  # the model term alone
    # The plain win rate is moved by length; the LC value is not.
    assert abs(win_rate(rows).win_rate - lc) > 1.0


def test_logistic_fit_matches_known_coefficients():
    rng = np.random.default_rng(1)
    x = np.stack([np.ones(5000), rng.normal(size=5000)], axis=1)
    y = 1 / (1 + np.exp(-(x @ np.array([0.5, -1.5]))))
    assert fit_logistic(x, y, l2=0.0) == pytest.approx([0.5, -1.5], abs=1e-6)


def test_bad_annotation_files(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(DataError, match="lacks"):
        win_rates([bad])
