"""Models: build tiny Llama models from scratch, load models and tokenizers."""

from instillm.models.factory import PRESETS, ModelPreset, init_model
from instillm.models.loading import count_parameters, load_model, load_tokenizer

__all__ = ["PRESETS", "ModelPreset", "count_parameters", "init_model", "load_model", "load_tokenizer"]
