"""SFT data for ``dca distill train``: read the JSONL shapes, render the chat template, mask, split and pack.

Input shapes (one JSON object a line), detected line by line by key, in this order:

``trace``
    a dca trace (``id``, ``sample``, ``question``, ``answer``, ``thinking``...; :mod:`dca.distill.traces`),
    turned into messages by :func:`~dca.distill.traces.to_messages`: the thinking goes into the assistant
    turn between ``<think>`` tags.
``messages``
    ``{"messages": [{"role", "content"}, ...]}`` (OpenAI chat, TRL conversational, ``dca distill filter``'s
    output). An assistant turn's ``reasoning_content``/``reasoning``/``thinking`` field, when its content has
    no think block, is put in front of the content between think tags.
``sharegpt``
    ``{"conversations": [{"from": "system"|"human"|"gpt", "value"}, ...]}``.
``prompt-completion``
    ``{"prompt", "completion"}``: strings (the user turn and the assistant turn), or lists of messages
    (TRL's conversational prompt/completion).
``text``
    ``{"text"}``: raw text, no chat template; every token carries loss and the EOS token is appended.

Loss mask (assistant tokens only). The whole conversation is rendered once with the tokenizer's chat
template and tokenized once with character offsets. For each assistant turn ``i`` the template is
rendered twice more: the messages before it with ``add_generation_prompt=True`` (ending where the
assistant's text starts) and the messages up to and including it (ending after its end-of-turn marker).
The characters between the two renders, trailing whitespace removed, are the turn's span: its content
and its end-of-turn token (``<|im_end|>``, ``<|eot_id|>``...), not the newline a template writes after
it. A token carries its own id as label when its characters overlap a span, else -100. This needs no
``{% generation %}`` markers in the template (TRL's ``assistant_only_loss`` does). Templates that
re-render earlier turns differently (e.g. dropping their thinking, as Qwen3's does) break the
prefix property; a conversation with several assistant turns is then split into one example per
assistant turn, each with loss on its last turn only, so each turn is trained in the context the model
sees at inference. The first token of every example carries no label: nothing precedes it, and in a
packed row it must not be predicted from the previous example.

Packing: examples (truncated to ``seq_len`` tokens) are placed whole into rows of ``seq_len`` tokens,
first-fit decreasing by length. ``position_ids`` restart at 0 for every example and for the padding run
at a row's end; transformers (``masking_utils.find_packed_sequence_indices``) turns restarting
position ids, with no 2-D attention mask, into a block-diagonal causal mask for the eager and SDPA
attention implementations (and flash-attention's varlen path), so no token attends across examples:
a packed example's logits equal those of the example alone.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, LoaderError
from .traces import THINK_CLOSE, THINK_OPEN, BadLine, Trace, iter_jsonl, to_messages

__all__ = ["IGNORE", "SHAPES", "DataStats", "Encoded", "Example", "Row", "detect_shape", "encode_example",
           "load_examples", "pack", "split_examples"]

IGNORE = -100  # the label of a token that carries no loss (PyTorch cross_entropy's ignore_index)
SHAPES = ("trace", "messages", "sharegpt", "prompt-completion", "text")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
          "model": "assistant", "system": "system", "tool": "tool"}


@dataclass(frozen=True)
class Example:
    """One training example before tokenization.

    Attributes:
        messages: the chat turns (``role``, ``content``); None for a ``text`` example.
        text: the raw text of a ``text`` example, else None.
        group: the key that keeps related examples on one side of the eval split (a question's id, so
            several samples of one question are never split between train and eval).
        source: ``file:line`` it came from.
        shape: one of :data:`SHAPES`.
    """

    messages: tuple | None
    text: str | None
    group: str
    source: str
    shape: str


@dataclass
class Encoded:
    """A tokenized example: ``input_ids`` and ``labels`` of equal length (``IGNORE`` where no loss)."""

    input_ids: list[int]
    labels: list[int]
    source: str = ""
    truncated: bool = False

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class Row:
    """One training row: whole examples placed one after another, then padding.

    Attributes:
        input_ids, labels, position_ids: lists of ``length`` ints; ``labels`` is ``IGNORE`` on prompts and
            padding; ``position_ids`` restart at 0 for each example and for the padding run.
        lengths: the token count of each example in the row (padding not included).
    """

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens."""
        return sum(self.lengths)


@dataclass
class DataStats:
    """What the data preparation did, recorded in the run manifest.

    Attributes:
        shapes: examples read per input shape.
        examples, train_examples, eval_examples: counts after the split (dropped examples excluded).
        truncated: examples cut to ``seq_len`` tokens; dropped: examples left with no labeled token.
        train_rows, eval_rows: rows after packing.
        train_tokens, train_label_tokens: real tokens and tokens carrying loss, per epoch.
        fill: real tokens / (rows x seq_len) of the training rows, in (0, 1].
        bad: unreadable input lines, with their line numbers.
    """

    shapes: dict = field(default_factory=dict)
    examples: int = 0
    train_examples: int = 0
    eval_examples: int = 0
    truncated: int = 0
    dropped: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    train_tokens: int = 0
    train_label_tokens: int = 0
    fill: float = 0.0
    bad: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["bad"] = [str(b) for b in self.bad]
        return d


def detect_shape(obj: dict) -> str | None:
    """The shape of one JSON object (see the module docstring), or None when none matches."""
    if isinstance(obj.get("question"), str) and isinstance(obj.get("answer"), str) and "sample" in obj:
        return "trace"
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "prompt" in obj and "completion" in obj:
        return "prompt-completion"
    if "text" in obj:
        return "text"
    return None


def _content(value: object, what: str) -> str:
    if isinstance(value, list):  # OpenAI content parts: keep the text ones
        value = "".join(p.get("text", "") for p in value if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


def _turns(turns: object, key: str, role_key: str, text_key: str) -> list[dict]:
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise ValueError(f'"{key}" must be a non-empty list of objects')
    out = []
    for turn in turns:
        role = _ROLES.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise ValueError(f'unknown {role_key} {turn.get(role_key)!r} (expected one of {", ".join(_ROLES)})')
        content = _content(turn.get(text_key), f'a turn\'s "{text_key}"')
        reasoning = turn.get("reasoning_content") or turn.get("reasoning") or turn.get("thinking")
        if role == "assistant" and isinstance(reasoning, str) and reasoning.strip() and THINK_OPEN not in content:
            content = f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{content.strip()}"
        out.append({"role": role, "content": content})
    return out


def _to_example(obj: dict, shape: str, source: str, system: str | None) -> Example:
    text = None
    if shape == "trace":
        trace = Trace.from_dict(obj)
        return Example(tuple(to_messages(trace, system=system)), None, trace.id, source, shape)
    if shape == "messages":
        messages = _turns(obj["messages"], "messages", "role", "content")
    elif shape == "sharegpt":
        messages = _turns(obj["conversations"], "conversations", "from", "value")
    elif shape == "prompt-completion":
        p, c = obj["prompt"], obj["completion"]
        prompt = _turns(p, "prompt", "role", "content") if isinstance(p, list) else \
            [{"role": "user", "content": _content(p, '"prompt"')}]
        completion = _turns(c, "completion", "role", "content") if isinstance(c, list) else \
            [{"role": "assistant", "content": _content(c, '"completion"')}]
        messages = prompt + completion
    else:
        text = _content(obj["text"], '"text"')
        if not text.strip():
            raise ValueError('"text" is empty')
        messages = None
    if messages is not None:
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("no assistant turn to train on")
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
    group = obj.get("id")
    group = str(group) if isinstance(group, (str, int)) and not isinstance(group, bool) else source
    return Example(tuple(messages) if messages is not None else None, text, group, source, shape)


def load_examples(paths: Sequence[str | Path], bad: list[BadLine], *, system: str | None = None) -> list[Example]:
    """Read every example of ``paths``, detecting each line's shape by key (module docstring).

    Args:
        paths: JSONL files.
        bad: receives the lines that are not examples (not JSON, no known shape, no assistant turn), with
            their line numbers; they are skipped.
        system: a system turn put in front of chat examples that have none; None adds none.

    Returns:
        The examples, in file then line order.

    Raises:
        LoaderError: a file cannot be read, or holds no example at all.
    """
    examples = []
    for path in paths:
        n = 0
        for number, obj in iter_jsonl(path, bad):
            shape = detect_shape(obj)
            if shape is None:
                hint = ("; convert question/answer files first with: dca distill import" if "question" in obj
                        or "problem" in obj else "")
                bad.append(BadLine(str(path), number, "no known shape: expected a dca trace, messages, conversations, "
                                                      f"prompt/completion or text{hint}"))
                continue
            try:
                examples.append(_to_example(obj, shape, f"{Path(path).name}:{number}", system))
                n += 1
            except (ValueError, TypeError) as e:
                bad.append(BadLine(str(path), number, f"{shape}: {e}"))
        if n == 0:
            first = next((f" ({b})" for b in bad if b.path == str(path)), "")
            raise LoaderError(path, f"no training example in it{first}")
    return examples


def split_examples(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out about ``eval_fraction`` of the examples for the eval loss, whole groups at a time.

    Groups (question ids) are shuffled with ``random.Random(seed)``; the first ``ceil(fraction x groups)``
    go to eval (at least one when ``eval_fraction > 0`` and there are two or more groups).

    Returns:
        (train, eval), each in input order.
    """
    groups = list(dict.fromkeys(e.group for e in examples))
    if eval_fraction <= 0 or len(groups) < 2:
        return list(examples), []
    random.Random(seed).shuffle(groups)
    n_eval = min(len(groups) - 1, max(1, math.ceil(eval_fraction * len(groups))))
    held = set(groups[:n_eval])
    return [e for e in examples if e.group not in held], [e for e in examples if e.group in held]


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def _assistant_spans(tokenizer, messages: Sequence[dict], *, last_only: bool = False
                     ) -> tuple[str, list[tuple[int, int]]] | None:
    """(full text, character spans of the assistant turns, or of the last one), or None when the template is
    not prefix-stable."""
    full = _render(tokenizer, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or (last_only and i != len(messages) - 1):
            continue
        prefix = _render(tokenizer, messages[:i], True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(prefix)):
            return None
        span = upto[len(prefix):].rstrip()
        spans.append((len(prefix), len(prefix) + len(span)))
    return full, spans


def _encode_text(tokenizer, text: str, spans: list[tuple[int, int]] | None, max_len: int, source: str) -> Encoded:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if spans is None:
        labels = list(ids)
    else:
        # a token is labeled when its characters overlap a span (an empty-offset token: when it sits inside one)
        labels = [t if any((b < end and start < e) or (b == e and start <= b < end) for start, end in spans)
                  else IGNORE for t, (b, e) in zip(ids, offsets)]
    truncated = len(ids) > max_len
    ids, labels = ids[:max_len], labels[:max_len]
    if labels:
        labels[0] = IGNORE
    return Encoded(ids, labels, source, truncated)


def encode_example(tokenizer, example: Example, max_len: int) -> list[Encoded]:
    """Tokenize one example and label its assistant tokens (the rules are in the module docstring).

    Args:
        tokenizer: a fast (offset-giving) Hugging Face tokenizer with a chat template for chat examples.
        example: the example.
        max_len: most tokens kept (the end is cut off; :attr:`Encoded.truncated` says so).

    Returns:
        One encoding; several when a multi-turn conversation must be split (a prefix-unstable template).

    Raises:
        ConfigError: the tokenizer has no chat template for a chat example, or the template renders the last
            assistant turn so that its text cannot be located (the message names ``--chat-template``).
    """
    if example.messages is None:
        text = example.text + (tokenizer.eos_token or "")
        return [_encode_text(tokenizer, text, None, max_len, example.source)]
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the tokenizer of -m/--model has no chat template; give one with --chat-template FILE "
                          "(a Jinja template), or train on text-shaped data")
    messages = example.messages
    found = _assistant_spans(tokenizer, messages)
    if found is not None:
        full, spans = found
        return [_encode_text(tokenizer, full, spans, max_len, example.source)]
    out = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        found = _assistant_spans(tokenizer, messages[: i + 1], last_only=True)
        if found is None:
            raise ConfigError(f"{example.source}: the chat template renders the assistant turn so that its text "
                              "cannot be located (it does not extend the rendered prompt); give another template "
                              "with --chat-template FILE")
        full, spans = found
        out.append(_encode_text(tokenizer, full, spans, max_len, example.source))
    return out


def pack(encoded: list[Encoded], seq_len: int, pad_id: int, *, packing: bool = True) -> list[Row]:
    """Place examples whole into rows of at most ``seq_len`` tokens (module docstring).

    Args:
        encoded: examples of at most ``seq_len`` tokens each.
        seq_len: the row length in tokens.
        pad_id: the token id of padding (any id: padding carries no label and attends only to padding).
        packing: False puts one example per row (rows then have the example's length, unpadded).

    Returns:
        Rows, packed rows padded to ``seq_len``; the order is by decreasing length of the first example
        (callers shuffle).
    """
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i].input_ids), i))
    rows: list[Row] = []
    free: list[int] = []  # free tokens per row
    for i in order:
        e = encoded[i]
        n = len(e.input_ids)
        if packing:
            j = next((k for k, f in enumerate(free) if f >= n), None)
        else:
            j = None
        if j is None:
            rows.append(Row())
            free.append(seq_len)
            j = len(rows) - 1
        row = rows[j]
        row.input_ids += e.input_ids
        row.labels += e.labels
        row.position_ids += list(range(n))
        row.lengths.append(n)
        free[j] -= n
    if packing:
        for row, f in zip(rows, free):
            row.input_ids += [pad_id] * f
            row.labels += [IGNORE] * f
            row.position_ids += list(range(f))
    return rows


def row_stats(rows: list[Row], seq_len: int) -> tuple[int, int, float]:
    """(real tokens, tokens carrying loss, fill = real tokens / (rows x seq_len)) of ``rows``."""
    tokens = sum(r.tokens for r in rows)
    labels = sum(1 for r in rows for x in r.labels if x != IGNORE)
    return tokens, labels, tokens / (len(rows) * seq_len) if rows else 0.0


def prepare(tokenizer, train: list[Example], held: list[Example], *, seq_len: int, packing: bool,
            stats: DataStats) -> tuple[list[Row], list[Row]]:
    """Encode and pack the train and eval examples; fills ``stats``.

    Raises:
        ConfigError: as :func:`encode_example`; or no training example has a labeled token left.
        LoaderError: never (reading is done by :func:`load_examples`).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    sides = []
    for examples in (train, held):
        kept = []
        for ex in examples:
            for enc in encode_example(tokenizer, ex, seq_len):
                stats.truncated += enc.truncated
                if enc.n_labels == 0:
                    stats.dropped += 1
                else:
                    kept.append(enc)
        sides.append(kept)
    if not sides[0]:
        raise ConfigError(f"no training example has a token to learn from within --seq-len {seq_len} "
                          f"({stats.dropped} dropped); raise --seq-len or check the data's assistant turns")
    train_rows = pack(sides[0], seq_len, pad_id, packing=packing)
    eval_rows = pack(sides[1], seq_len, pad_id, packing=packing)
    stats.shapes = dict(Counter(e.shape for e in train + held))
    stats.examples, stats.train_examples, stats.eval_examples = (len(sides[0]) + len(sides[1]), len(sides[0]),
                                                                 len(sides[1]))
    stats.train_rows, stats.eval_rows = len(train_rows), len(eval_rows)
    stats.train_tokens, stats.train_label_tokens, stats.fill = row_stats(train_rows, seq_len)
    stats.fill = round(stats.fill, 4)
    return train_rows, eval_rows
