"""Pairwise win rates from AlpacaEval-format annotations, plain and length-controlled.

An annotation row compares `output_1` (the baseline, `generator_1`) with `output_2` (the model,
`generator_2`); `preference` is in [1, 2]: 1 = baseline better, 2 = model better, 1.5 = tie,
fractions are the judge's probability (weighted annotators). 0 also means a tie (AlpacaEval's
convention for identical outputs); rows without a preference are skipped.

- win rate = mean(preference - 1) · 100 with its standard error; discrete win rate =
  (wins + ties / 2) / n · 100. Both equal AlpacaEval's leaderboard values.
- Length-controlled win rate: per model, a logistic GLM of the preference on
  `tanh(delta_len / std(delta_len))`, an instruction-difficulty term and the model term, then the
  mean prediction at zero length difference. **Difference from the reference:** AlpacaEval reads
  instruction difficulty from a table fitted on its whole leaderboard (kept on a dataset hub);
  here difficulty is estimated from the annotation files given (several models on the same
  instructions): the logit of the mean baseline preference per instruction over those models.
  With one file there is no difficulty term. So our LC value is close to, not equal to, the
  leaderboard's; `instillm eval winrate` prints both when the leaderboard is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instillm.errors import DataError

EPS = 1e-3  # probability clip for logits of preferences


@dataclass(frozen=True)
class WinRate:
    """Win-rate statistics of one model against the baseline (percentages)."""

    model: str
    n: int
    win_rate: float
    standard_error: float
    discrete_win_rate: float
    n_wins: int
    n_wins_base: int
    n_draws: int
    lc_win_rate: float | None = None
    length_coefficient: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_annotations(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an AlpacaEval annotations JSON file (a list of objects)."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read annotations {path}: {e}") from e
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON list of annotations")
    need = {"instruction", "output_1", "output_2", "preference"}
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not need <= set(r):
            raise DataError(f"{path}: row {i + 1} lacks one of {sorted(need)}")
    return rows


def preferences(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Preference of the model in [0, 1] per row (0.5 = tie); rows without one are dropped."""
    p = [float(r["preference"]) for r in rows if r["preference"] not in (None, "")]
    arr = np.array(p, dtype=np.float64)
    arr[arr == 0] = 1.5  # AlpacaEval: 0 marks a tie
    return arr - 1.0


def win_rate(rows: Sequence[dict[str, Any]], model: str = "") -> WinRate:
    """Plain and discrete win rate (AlpacaEval's definitions) of one annotation set."""
    p = preferences(rows)
    n = len(p)
    if n == 0:
        raise DataError("no annotated preference in the rows")
    se = float(p.std(ddof=1) / math.sqrt(n)) * 100 if n > 1 else 0.0
    wins, base, draws = int((p > 0.5).sum()), int((p < 0.5).sum()), int((p == 0.5).sum())
    return WinRate(
        model or str(rows[0].get("generator_2", "")),
        n,
        float(p.mean()) * 100,
        se,
        (wins + draws / 2) / n * 100,
        wins,
        base,
        draws,
    )


def instruction_difficulty(annotation_sets: Sequence[Sequence[dict[str, Any]]]) -> dict[str, float]:
    """Per instruction: logit of the baseline's mean preference over every model given."""
    sums: dict[str, list[float]] = {}
    for rows in annotation_sets:
        for r in rows:
            if r["preference"] in (None, ""):
                continue
            p = float(r["preference"])
            sums.setdefault(r["instruction"], []).append(1.0 - (0.5 if p == 0 else p - 1.0))
    return {k: _logit(float(np.mean(v))) for k, v in sums.items()}


def _logit(p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return math.log(p / (1 - p))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Logistic regression with soft targets y in [0, 1] (Newton's method, ridge on non-intercepts)."""
    beta = np.zeros(x.shape[1])
    ridge = np.full(x.shape[1], l2)
    ridge[0] = 0.0
    for _ in range(iters):
        prob = 1 / (1 + np.exp(-(x @ beta)))
        grad = x.T @ (prob - y) + ridge * beta
        hess = (x * (prob * (1 - prob))[:, None]).T @ x + np.diag(ridge) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def length_controlled(rows: Sequence[dict[str, Any]], difficulty: dict[str, float] | None) -> tuple[float, float]:
    """(LC win rate in %, length coefficient): the GLM's mean prediction at zero length difference."""
    kept = [r for r in rows if r["preference"] not in (None, "")]
    y = preferences(kept)
    delta = np.array([len(str(r["output_2"])) - len(str(r["output_1"])) for r in kept], dtype=np.float64)
    std = delta.std() or 1.0
    cols = [np.ones(len(kept)), np.tanh(delta / std)]
    if difficulty:
        cols.append(np.array([difficulty.get(r["instruction"], 0.0) for r in kept]))
    x = np.stack(cols, axis=1)
    beta = fit_logistic(x, y)
    x0 = x.copy()
    x0[:, 1] = 0.0  # the same instructions, as if both outputs had the same length
    return float((1 / (1 + np.exp(-(x0 @ beta)))).mean() * 100), float(beta[1])


def win_rates(paths: Sequence[str | Path]) -> list[WinRate]:
    """Win rate, discrete win rate and LC win rate for each annotation file (difficulty shared)."""
    sets = [load_annotations(p) for p in paths]
    difficulty = instruction_difficulty(sets) if len(sets) > 1 else None
    out = []
    for rows in sets:
        plain = win_rate(rows)
        lc, coef = length_controlled(rows, difficulty)
        out.append(WinRate(**{**plain.to_dict(), "lc_win_rate": lc, "length_coefficient": coef}))
    return out
