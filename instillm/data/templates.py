"""Built-in chat templates for models that ship without one.

Each is a Jinja chat template in Hugging Face's format, so it is saved into the tokenizer
(`tokenizer.chat_template`) and inference renders exactly what training rendered. Assistant
content is wrapped in `{% generation %}` markers so tools that read them (e.g. TRL's
assistant-only loss) agree with instillm's own masks.

- `chatml`: `<|im_start|>role\\ncontent<|im_end|>\\n`; assistant turns end with `<|im_end|>`.
- `alpaca`: the Stanford Alpaca prompt, with and without `### Input:` (a user message with an
  `input` key), the fixed preamble replaced by a system message when there is one;
  assistant turns end with the tokenizer's EOS. A newline follows `### Response:`, as in
  the Alpaca inference scripts.
Newlines that follow a block tag are written as `{{ '\\n' }}` because Hugging Face renders
chat templates with `trim_blocks`, which drops a newline right after `{% ... %}`.

- `plain`: prompt/completion: texts concatenated, completion followed by EOS; a system
  message is followed by a blank line.
"""

from __future__ import annotations

from pathlib import Path

from instillm.errors import ConfigError

_BOS = "{% if bos_token %}{{ bos_token }}{% endif %}"

CHATML = (
    _BOS + "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request."
)

ALPACA = (
    _BOS + "{% set has_system = messages and messages[0]['role'] == 'system' %}"
    "{% if has_system %}{{ messages[0]['content'] }}{{ '\\n\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first or (loop.index0 == 1 and has_system) %}"
    "{% if not has_system %}"
    "{% if message.get('input') %}" + ALPACA_PREAMBLE_INPUT + "{% else %}" + ALPACA_PREAMBLE + "{% endif %}"
    "{{ '\\n\\n' }}{% endif %}{% endif %}"
    "### Instruction:\n{{ message['content'] }}\n\n"
    "{% if message.get('input') %}### Input:\n{{ message['input'] }}\n\n{% endif %}"
    "### Response:\n"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}{{ '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
)

PLAIN = (
    _BOS + "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% elif message['role'] == 'system' %}{{ message['content'] }}{{ '\\n\\n' }}"
    "{% else %}{{ message['content'] }}"
    "{% endif %}"
    "{% endfor %}"
)

BUILTIN_TEMPLATES: dict[str, str] = {"chatml": CHATML, "alpaca": ALPACA, "plain": PLAIN}
TEMPLATE_CHOICES = ("auto", "tokenizer", *BUILTIN_TEMPLATES)

# Strings that chat templates use to end a turn; the last trained token of every assistant
# turn must be one of these (or the tokenizer's EOS), otherwise the model never learns to stop.
END_OF_TURN_STRINGS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")


def tokenizer_template_name(source: str) -> str:
    """The built-in name of a tokenizer's saved template (training saved it), else "tokenizer"."""
    return next((name for name, text in BUILTIN_TEMPLATES.items() if text == source), "tokenizer")


def resolve_template(name: str, tokenizer_template: str | None) -> tuple[str, str]:
    """Return (name, jinja source) for a template setting: auto | tokenizer | builtin | file."""
    if name == "auto":
        if tokenizer_template:
            return tokenizer_template_name(tokenizer_template), tokenizer_template
        return "chatml", CHATML
    if name == "tokenizer":
        if not tokenizer_template:
            raise ConfigError(
                "template: the tokenizer has no chat template; set template to one of "
                f"{sorted(BUILTIN_TEMPLATES)} or a .jinja file"
            )
        return tokenizer_template_name(tokenizer_template), tokenizer_template
    if name in BUILTIN_TEMPLATES:
        return name, BUILTIN_TEMPLATES[name]
    path = Path(name)
    if path.suffix in {".jinja", ".j2", ".txt"} and path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    raise ConfigError(f"template: {name!r} is not one of {list(TEMPLATE_CHOICES)} nor an existing .jinja file")
