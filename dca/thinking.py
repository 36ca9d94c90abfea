"""The one parser of a model's thinking: where its reasoning ends and its answer begins.

Reasoning models write their rationale between think tags (``<think>...</think>``: DeepSeek-AI 2025,
"DeepSeek-R1"; Qwen3), and some chat templates open the block in the prompt, so the output holds only the
closing tag. Models without such tags get a plain-text scaffold ("Let's think step by step." ... "Final
answer:", as in s1, Muennighoff et al. 2025); the same parser splits it when given the scaffold's markers.
Trace import, teachers, the assistant's samples and answer grading all split with :func:`split_thinking`.
"""

from __future__ import annotations

from typing import NamedTuple

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
THINK_TAGS = (THINK_OPEN, THINK_CLOSE)


class ThinkSplit(NamedTuple):
    """A model output split at its think block (compares equal to the plain tuple of its fields).

    Attributes:
        thinking: the rationale, without tags, stripped ("" when there is none).
        answer: the text after the thinking, stripped; text written before an opening tag is kept at its start.
        closed: False when the thinking was cut off (an opening tag never closed, or output that began inside
            the thinking and never closed it, or untagged output stopped by the token limit).
    """

    thinking: str
    answer: str
    closed: bool


def split_thinking(text: str, *, tags: tuple[str, str] = THINK_TAGS, started: bool = False,
                   finish: str | None = None) -> ThinkSplit:
    """Split ``text`` into (thinking, answer, closed) at its think tags.

    The answer is what follows the last closing tag, so a model that thinks twice is graded on its last answer.

    - ``<think>A</think>B`` -> ``("A", "B", True)``; ``X<think>A</think>B`` -> ``("A", "X\\n\\nB", True)``.
    - ``A</think>B`` (the block was opened in the prompt) -> ``("A", "B", True)``.
    - ``X<think>A`` (never closed: truncated) -> ``("A", "X", False)``.
    - no tag: ``started`` False -> ``("", text, finish != "length")``, all answer; ``started`` True (the prompt
      opened the thinking and the model never closed it) -> ``(text, "", False)``.

    Args:
        text: the model's output.
        tags: the (opening, closing) markers; a scaffold's ``("Let's think step by step.", "Final answer:")``
            works the same way.
        started: the output began inside the thinking (the prompt ends with the opening tag).
        finish: the generation's finish reason; ``"length"`` marks untagged output as cut off.
    """
    open_tag, close_tag = tags
    end = text.rfind(close_tag)
    start = text.find(open_tag)
    if end != -1:
        if start != -1 and start < end:
            before, thinking = text[:start].strip(), text[start + len(open_tag):end]
        else:
            before, thinking = "", text[:end]
        answer = text[end + len(close_tag):].strip()
        return ThinkSplit(thinking.strip(), f"{before}\n\n{answer}".strip() if before else answer, True)
    if start != -1:
        return ThinkSplit(text[start + len(open_tag):].strip(), text[:start].strip(), False)
    if started:
        return ThinkSplit(text.strip(), "", False)
    return ThinkSplit("", text.strip(), finish != "length")


def strip_thinking(text: str) -> str:
    """What a grader reads of ``text``: the text after the last closing tag, ``""`` when the thinking was never
    closed (:func:`split_thinking`'s ``closed``: a truncated output has no answer), ``text`` when it has no tag.

    Unlike :func:`split_thinking`'s answer, text written before an opening tag is not kept: a final answer
    follows the thinking.
    """
    split = split_thinking(text)
    if not split.closed:
        return ""
    end = text.rfind(THINK_CLOSE)
    return text[end + len(THINK_CLOSE):].strip() if end != -1 else split.answer
