"""Fixtures for the training tests: rendered task data and fresh tiny models."""

from __future__ import annotations

import pytest

from tests.train.helpers import make_examples


@pytest.fixture(scope="session")
def rendered(tiny_tokenizer):
    """16 rendered examples of three tasks (different lengths), chatml template."""
    from instillm.data.render import RenderConfig, Renderer

    examples = make_examples(6, "reverse") + make_examples(5, "upper") + make_examples(5, "double")
    items, _ = Renderer(tiny_tokenizer, RenderConfig("chatml", 128)).render_many(examples)
    assert len(items) == 16
    return items


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """A fresh fp32 copy of the tiny model in train mode (no dropout in the tiny preset)."""
    from instillm.models.loading import load_model

    model = load_model(tiny_model_dir, dtype=__import__("torch").float32)
    model.train()
    return model
