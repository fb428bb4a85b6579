"""The "chaotic" tiny model of the generation tests: its 2-D weights redrawn from a seeded N(0, 0.1).

With its init weights the tiny model soon repeats one token or ends; redrawn, it keeps choosing
different tokens and rarely ends early, so budgets, stop strings and batching are exercised.
"""

from __future__ import annotations

import torch


def make_chaotic(model: torch.nn.Module, seed: int = 1234) -> torch.nn.Module:
    """Redraw every 2-D weight of `model` in place from N(0, 0.1) with generator seed `seed`; returns it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model
