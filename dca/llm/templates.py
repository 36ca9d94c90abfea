"""Chat templates a user can name (``--chat-template gemma|chatml|FILE``), and plain completion prompting for a
model whose GGUF carries no template (a base model).

A GGUF's own ``tokenizer.chat_template`` always comes first. Without one, dca never guesses: it prompts the model
as text to continue (:func:`completion_prompt`) and says so, unless the user names a template. The named templates
follow the formats their model families publish (Gemma: ``<start_of_turn>user ... <end_of_turn>``, the system
message prepended to the first user turn, the assistant's role written ``model``; ChatML: ``<|im_start|>ROLE ...
<|im_end|>``, as SmolLM2 and Qwen use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] | trim + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ prefix if loop.first else '' }}{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE, "gemma": GEMMA_TEMPLATE}
# the end-of-turn marker of each named template: a stop string, for models whose vocabulary lacks it as a token
END_OF_TURN = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>"}
# completion prompting: each turn a "Question:"/"Answer:" pair; generation stops where the model starts a new one
COMPLETION_STOPS = ("\nQuestion:", "\n\nQuestion")


@dataclass(frozen=True)
class ChatTemplate:
    """The template a model is prompted with.

    Attributes:
        source: ``gguf`` (the model's own), ``named`` (``--chat-template NAME``), ``file`` (``--chat-template
            FILE``) or ``completion`` (none: plain text continuation, :func:`completion_prompt`).
        template: the Jinja text; "" for ``completion``.
        name: the template's name or file; "" for the others.
        stops: stop strings that end a turn in this format.
    """

    source: str
    template: str = ""
    name: str = ""
    stops: tuple[str, ...] = ()

    def describe(self) -> str:
        return {"gguf": "the GGUF's chat template", "named": f"the {self.name} chat template",
                "file": f"the chat template of {self.name}", "completion": "plain completion prompting"}[self.source]


def resolve_template(spec: str | Path | None, gguf_template: str | None) -> ChatTemplate:
    """The template for ``--chat-template`` ``spec`` (a name of :data:`NAMED_TEMPLATES` or a Jinja file), else the
    GGUF's ``gguf_template``, else completion prompting.

    Raises:
        ConfigError: ``spec`` is neither a known name nor a readable file (the message names ``--chat-template``).
    """
    if spec is not None and str(spec) in NAMED_TEMPLATES:
        name = str(spec)
        return ChatTemplate("named", NAMED_TEMPLATES[name], name, (END_OF_TURN[name],))
    if spec is not None:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"--chat-template {spec}: neither a template name ({', '.join(NAMED_TEMPLATES)}) nor a "
                              "file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--chat-template {path}: cannot read it as UTF-8 text ({e})") from e
        if not text.strip():
            raise ConfigError(f"--chat-template {path}: the file is empty")
        return ChatTemplate("file", text, str(path))
    if gguf_template:
        return ChatTemplate("gguf", gguf_template)
    return ChatTemplate("completion", stops=COMPLETION_STOPS)


def completion_prompt(messages: Sequence[dict]) -> str:
    """The conversation as text for a base model to continue: the system message, then each exchange as
    ``Question: ...`` / ``Answer: ...``, ending with ``Answer:`` for the model to complete. The stop strings
    :data:`COMPLETION_STOPS` end the answer where the model would begin another question."""
    parts, system = [], [m["content"].strip() for m in messages if m["role"] == "system"]
    if system:
        parts.append("\n\n".join(system) + "\n\n")
    for m in messages:
        if m["role"] == "user":
            parts.append(f"Question: {m['content'].strip()}\n")
        elif m["role"] == "assistant":
            parts.append(f"Answer: {m['content'].strip()}\n\n")
    return "".join(parts) + "Answer:"
