"""The "chaotic" tiny model of the generation tests (its 2-D weights redrawn from a seeded N(0, 0.1)),
and their reference: greedy `generate` one prompt at a time.

With its init weights the tiny model soon repeats one token or ends; redrawn, it keeps choosing
different tokens and rarely ends early, so budgets, stop strings and batching are exercised.
"""

from __future__ import annotations

import torch

from instillm.llm.generation import Generator


def make_chaotic(model: torch.nn.Module, seed: int = 1234) -> torch.nn.Module:
    """Redraw every 2-D weight of `model` in place from N(0, 0.1) with generator seed `seed`; returns it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def greedy_one_by_one(model, tok, prompts: list[str], n_new: int) -> list[list[int]]:
    """`model.generate(do_sample=False)` one prompt at a time, no padding: the new token ids of each."""
    eos = sorted(Generator(model, tok).end_ids)
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = tok(p, add_special_tokens=False, return_tensors="pt")
            seq = model.generate(
                **ids, do_sample=False, max_new_tokens=n_new, eos_token_id=eos, pad_token_id=tok.pad_token_id
            )
            out.append(seq[0, ids["input_ids"].shape[1] :].tolist())
    return out
