"""Tools a model calls while it decodes: the ``calculator`` of GSM8K's calculator notes.

A tool watches the text a model generates. When the text holds a complete call (for the calculator, a note
opened up to its ``=``: ``<<48/2=``), decoding pauses, the tool runs, and its reply (``24>>``) is written into
the text as if the model had written it; the model then goes on from there. This is the calculator of Cobbe
et al. 2021, "Training Verifiers to Solve Math Word Problems" (arXiv 2110.14168), whose GSM8K solutions carry
the notes (``dca distill import --keep-calculator-notes`` keeps them, so a student learns to write them).
A call the tool cannot answer (a malformed expression, division by zero) writes nothing: the model goes on
alone, as it would without the tool.

:class:`ToolRunner` holds one decoding's state; :func:`dca.llm.tools.generate_with_tools` and
:func:`dca.llm.sampling.sample_parallel` drive it. Tools are named in ``AssistantConfig.tools`` and
``--tools`` (:data:`TOOLS`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from .errors import ConfigError, missing

__all__ = ["TOOLS", "Calculator", "Tool", "ToolCall", "ToolRunner", "evaluate_arithmetic", "get_tools",
           "strip_notes"]

MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 1e15  # results beyond this are refused (a model's note never needs them; they cost many tokens)
MAX_POWER_BITS = 64  # a power whose result would need more bits than this is refused before it is computed
_ALLOWED_CHARS = re.compile(r"[0-9.+\-*/%() \t]+")  # no letters: no names, attributes, calls or strings
_NOTE_OPEN = re.compile(r"<<([^<>=\n]*)=")  # a note written up to its '=' (GSM8K: <<48/2=24>>)
_NOTE = re.compile(r"<<[^<>\n]*>>")


@dataclass(frozen=True)
class ToolCall:
    """One call a model made while decoding.

    Attributes:
        tool: the tool's name (``calculator``).
        input: what the model asked (the expression).
        output: the reply written into the text, without the tool's closing marker; None when the tool could
            not answer and the model went on alone.
        error: why there is no output ("" when there is one).
    """

    tool: str
    input: str
    output: str | None
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.tool}: {self.input} = {self.output}" if self.output is not None else \
            f"{self.tool}: {self.input} (not evaluated: {self.error})"


class Tool(Protocol):
    """A tool: it finds a complete call in generated text and answers it.

    Attributes:
        name: the name in ``--tools``.
    """

    name: str

    def find(self, text: str, start: int) -> tuple[int, str] | None:
        """The first complete call in ``text`` at or after ``start``: (the index just past it, the call's
        input), or None."""
        ...

    def call(self, request: str) -> ToolCall:
        """Answer ``request`` (never raises: an unanswerable request gives ``output=None`` and an ``error``)."""
        ...

    def reply(self, call: ToolCall) -> str:
        """The text written after the call: the output and the tool's closing marker."""
        ...


def _format_number(value: float | int) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def evaluate_arithmetic(expression: str) -> str:
    """The value of an arithmetic expression as GSM8K's notes write it (``"48/2"`` -> ``"24"``, ``"12/60"`` ->
    ``"0.2"``; at most six decimals).

    Numbers, ``+ - * / // % **``, unary signs and parentheses only, evaluated by simpleeval (a well-kept safe
    evaluator; never Python's ``eval``) with a power that refuses, before computing it, any result beyond 2**64
    in magnitude (``9**9**9`` and ``999999**999999`` return at once).

    Raises:
        ValueError: anything else (names, attributes, calls, strings, comparisons), a syntax error, division
            by zero, a non-finite result or one beyond 1e15 in magnitude, or an expression over 200 characters;
            the message says which.
        MissingDependencyError: simpleeval is not installed.
    """
    import ast
    import operator

    text = expression.strip()
    if not text:
        raise ValueError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    if not _ALLOWED_CHARS.fullmatch(text):
        raise ValueError("only numbers, + - * / % ** and parentheses are allowed")
    try:
        import simpleeval
    except ImportError as e:  # pragma: no cover - an install without the chat extra
        raise missing("simpleeval", "chat") from e
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _bounded_power,
           ast.USub: operator.neg, ast.UAdd: operator.pos}
    evaluator = simpleeval.SimpleEval(operators=ops, functions={}, names={})
    try:
        value = evaluator.eval(text)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except (simpleeval.NumberTooHigh, OverflowError):
        raise ValueError("number too large") from None
    except (SyntaxError, simpleeval.InvalidExpression, TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"not an arithmetic expression ({type(e).__name__})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    if abs(value) > MAX_MAGNITUDE or not math.isfinite(value):  # an int compares exactly, never overflows here
        raise ValueError("number too large")
    return _format_number(value)


def _bounded_power(base, exponent):
    """``base ** exponent``, refused (OverflowError) when the result would exceed 2**MAX_POWER_BITS in
    magnitude: estimated from the operands, so nothing huge is ever computed."""
    if abs(exponent) * math.log2(max(abs(base), 2)) > MAX_POWER_BITS and abs(base) != 1:
        raise OverflowError("power too large")
    if isinstance(base, (int, float)) and base < 0 and not float(exponent).is_integer():
        raise ValueError("fractional power of a negative number")
    return base ** exponent


class Calculator:
    """The ``calculator`` tool: a note ``<<EXPR=`` gets ``RESULT>>`` (GSM8K's calculator notes, Cobbe et al.
    2021); the expression is evaluated by :func:`evaluate_arithmetic`."""

    name = "calculator"

    def find(self, text: str, start: int) -> tuple[int, str] | None:
        m = _NOTE_OPEN.search(text, start)
        return (m.end(), m.group(1)) if m else None

    def call(self, request: str) -> ToolCall:
        try:
            return ToolCall(self.name, request.strip(), evaluate_arithmetic(request))
        except (ValueError, ArithmeticError, TypeError, RecursionError, MemoryError) as e:
            # whatever the expression, the model goes on alone: a tool call never ends a generation
            return ToolCall(self.name, request.strip(), None, str(e) or type(e).__name__)

    def reply(self, call: ToolCall) -> str:
        return f"{call.output}>>"


TOOLS: dict[str, type] = {"calculator": Calculator}


def get_tools(names: Sequence[str]) -> tuple[Tool, ...]:
    """New instances of the tools named (``--tools``).

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise ConfigError(f"--tools: unknown tool {', '.join(map(repr, unknown))}; known: {', '.join(TOOLS)}")
    return tuple(TOOLS[n]() for n in names)


class ToolRunner:
    """The tool calls of one decoding: feed it the text generated so far after each piece.

    Args:
        tools: the tools that watch the text.
        max_calls: most calls answered; later ones are left to the model.
    """

    def __init__(self, tools: Sequence[Tool], max_calls: int = 64):
        self.tools = tuple(tools)
        self.max_calls = max_calls
        self.calls: list[ToolCall] = []
        self._scan = 0  # text before this index holds no pending call

    def __bool__(self) -> bool:
        return bool(self.tools)

    def begin(self) -> None:
        """Start watching a new text (a new decoding phase: thinking, answer, a budget-forcing continuation);
        the calls made so far are kept."""
        self._scan = 0

    def retract(self) -> None:
        """Forget the last call: the decoder could not write its reply (the text it was found in had moved on)."""
        if self.calls:
            self.calls.pop()

    def step(self, text: str) -> tuple[int, str] | None:
        """Look for a complete call in the new part of ``text`` (the whole text generated so far).

        Returns:
            (cut, insert): keep ``text[:cut]`` (what follows the call in the same piece is dropped) and append
            ``insert`` (the tool's reply), then decode on; None when there is nothing to do (no call, or a
            call the tool could not answer, which is recorded and left to the model).
        """
        while len(self.calls) < self.max_calls:
            found = [(hit, tool) for tool in self.tools if (hit := tool.find(text, self._scan)) is not None]
            if not found:
                return None
            (cut, request), tool = min(found, key=lambda x: x[0][0])
            call = tool.call(request)
            self.calls.append(call)
            if call.output is None:  # left to the model; look on past it
                self._scan = cut
                continue
            insert = tool.reply(call)
            self._scan = cut + len(insert)
            return cut, insert
        return None


def strip_notes(text: str) -> str:
    """``text`` without calculator notes (``48/2 = <<48/2=24>>24`` -> ``48/2 = 24``)."""
    return _NOTE.sub("", text)
