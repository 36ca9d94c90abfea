"""Grading: the one answer checker shared by evaluation, trace filtering and self-consistency voting.

Three steps: drop the model's think block (:func:`dca.thinking.strip_thinking`), pull out the final answer
(:func:`extract_answer`), and compare it with the gold answer (:func:`is_equivalent`).

Sources:
    * GSM8K (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"): reference solutions
      end in ``#### N``.
    * MATH (Hendrycks et al. 2021, "Measuring Mathematical Problem Solving With the MATH Dataset") and
      the PRM800K grader (Lightman et al. 2023, "Let's Verify Step by Step"): the answer is the last
      ``\\boxed{...}``; the number normalisation here (``\\!``, ``\\$``, ``\\%``, ``^\\circ``, unit
      text, ``x = 5`` read as ``5``) follows their ``_strip_string`` / ``normalize_answer``.
    * math-verify (Hugging Face, https://github.com/huggingface/Math-Verify): symbolic equivalence of
      LaTeX answers; used as a library, never re-implemented here.
    * SQuAD v1.1 evaluation script (Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine
      Comprehension of Text"): :func:`normalize_text`, :func:`exact_match`, :func:`token_f1`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

from .thinking import strip_thinking

__all__ = ["exact_match", "extract_answer", "is_equivalent", "normalize_text", "token_f1"]

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_PHRASE = re.compile(
    r"(?:\bthe\s+(?:final\s+)?answer\s+is\b|\bfinal\s+answer\s*(?:is\b|:)|\banswer\s*:)[\s:*]*((?:[^\n.]|\.(?!\s|$))*)",
    re.IGNORECASE,
)
_LAST_NUMBER = re.compile(r"(?<![\w.])-?(?:\d+(?:\.\d+)?/\d+(?:\.\d+)?|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.\d+|\d+)")
_NUM = r"-?(?:\d+(?:\.\d+)?|\.\d+)"
_FRAC_ARG = r"(?:\{\s*(" + _NUM + r")\s*\}|(\d))"
_LATEX_FRAC = re.compile(r"(-?)\\[dt]?frac\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)
_SLASH_FRAC = re.compile(r"(" + _NUM + r")\s*/\s*(" + _NUM + r")")
_TEXT_CMD = re.compile(r"\\(?:text|textrm|textbf|textit|mbox|mathrm|mathbf)\s*\{([^{}]*)\}(\^\{?\d\}?)?")
_UNIT_WORDS = re.compile(r"(?:\s+(?!pi\b)[A-Za-z]{2,}\.?)+(?:\^\{?\d\}?)?")
_ASSIGNMENT = re.compile(r"[A-Za-z][A-Za-z0-9_]?\s*=\s*([^=]+)")
_TEXTY = re.compile(r"\(?[A-Za-z]\)?|[\w\s.,'\"!?:;&]*[A-Za-z]{2}[\w\s.,'\"!?:;&]*")


def _balanced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == "{"`` and the index after it, or None."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def _last_boxed(text: str) -> str | None:
    found, pos = None, 0
    while (m := _BOXED.search(text, pos)) is not None:
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            group = _balanced(text, i)
            if group is None:  # unclosed (truncated output): nothing after it can be complete either
                break
            found, pos = group
        elif i > m.end():  # "\boxed 5": the argument runs to the next space or "$"
            arg = re.match(r"[^\s$]+", text[i:])
            found, pos = (arg.group(0), i + arg.end()) if arg else (found, i)
        else:
            pos = m.end()
    return found


def _clean(answer: str) -> str:
    """Strip surrounding whitespace, markdown bold, ``$`` wrappers and a trailing period."""
    s = answer.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip("*").strip()
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1].rstrip()
        if s.startswith("$") and not s.endswith("\\$"):
            s = s.strip("$").strip()
        if s == before:
            break
    return s


def extract_answer(text: str) -> str | None:
    """Extract the final answer from a model output or a reference solution.

    Applied to :func:`strip_thinking` of ``text``; the first rule that finds something wins:

    1. the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces kept: ``\\boxed{\\frac{1}{2}}`` gives
       ``\\frac{1}{2}``; ``\\boxed 5`` gives ``5``), the MATH convention (Hendrycks et al. 2021);
    2. the rest of the line after the last ``#### `` (GSM8K, Cobbe et al. 2021);
    3. the last "The answer is ...", "The final answer is ...", "Final answer: ..." or "Answer: ..."
       (any case), up to the end of its sentence or line; of a worked expression, the value after its last
       ``=`` (or ``≈``), without a clause after a comma ("is 24 x 5 = 100, which is the total": ``100``);
    4. the last number in the text (``-3``, ``1,234``, ``2.5``, ``3/4``).

    Returns:
        The answer with surrounding whitespace, ``**``, ``$`` and a trailing period stripped, or None
        when nothing is found (including a truncated, unclosed think block).
    """
    text = strip_thinking(text)
    boxed = _last_boxed(text)
    if boxed is not None and _clean(boxed):
        return _clean(boxed)
    for m in reversed(list(_GSM8K.finditer(text))):
        if _clean(m.group(1)):
            return _clean(m.group(1))
    for m in reversed(list(_ANSWER_PHRASE.finditer(text))):
        if _clean(m.group(1)):  # the phrase runs to the end of its sentence or line
            return _phrase_value(_clean(m.group(1)))
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _phrase_value(phrase: str) -> str:
    """The value an answer phrase states: after the last ``=`` or ``≈`` of a worked expression, before a clause
    that follows a comma after a number ("The answer is 24 x 5 = 100, which is the total" gives ``100``)."""
    tail = re.split(r"\s*(?:=|≈|\\approx)\s*", phrase)[-1]
    head = re.split(r",\s+(?=[^\W\d_])", tail)[0]
    if re.search(r"\d", head):  # a number, then words: "Paris, France" stays whole
        tail = head
    return _clean(tail) or phrase


def _unwrap_text(s: str, drop_units: bool) -> str:
    """Replace ``\\text{...}``-style wrappers by their content (by nothing for unit text, if asked)."""

    def repl(m: re.Match) -> str:
        inner = m.group(1)
        if drop_units and not re.search(r"\d", inner):
            return " "  # "5\text{ cm}^2" -> "5"
        return inner + (m.group(2) or "")

    return _TEXT_CMD.sub(repl, s)


def _to_number(s: str) -> float | None:
    """Read ``s`` as a plain number after Hendrycks-style normalisation, or None if it is not one."""
    s = re.sub(r",\\!\s*", ",", s.strip().replace("\\left", "").replace("\\right", ""))  # "11,\! 111"
    for junk in ("\\$", "$", "\\%", "%", "\\!", "^{\\circ}", "^\\circ", "\\circ", "\\,"):
        s = s.replace(junk, "")
    s = _unwrap_text(s.replace("{,}", ","), drop_units=True).strip()
    if (m := _ASSIGNMENT.fullmatch(s)) is not None:  # "x = 5" reads as 5 (Hendrycks' _strip_string)
        s = m.group(1).strip()
    s = s.rstrip(".").strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    num_or_frac = rf"(?:{_NUM}|{_LATEX_FRAC.pattern}|{_SLASH_FRAC.pattern}|-?\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?)"
    if (m := re.fullmatch(rf"({num_or_frac})({_UNIT_WORDS.pattern})?", s)) is not None:
        s = m.group(1).strip()  # "18 dollars", "5 cm" -> the number
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(_NUM, s):
        return float(s)
    if (m := _LATEX_FRAC.fullmatch(s)) is not None:
        num, den = float(m.group(2) or m.group(3)), float(m.group(4) or m.group(5))
        sign = -1.0 if m.group(1) else 1.0
    elif (m := _SLASH_FRAC.fullmatch(s)) is not None:
        num, den, sign = float(m.group(1)), float(m.group(2)), 1.0
    else:
        return None
    return sign * num / den if den != 0 else None


def _texty(s: str) -> bool:
    """True for a choice letter ``(C)`` or words without math operators ("the Denver Broncos")."""
    return bool(_TEXTY.fullmatch(re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", s.strip())))


def _math_verify_equal(prediction: str, gold: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError as e:
        from dca.errors import missing

        raise missing("math-verify", "eval") from e

    def wrap(s: str) -> str:
        return s if re.search(r"(?<!\\)\$|\\\(|\\\[", s) else f"${s}$"

    try:  # no timeouts: math-verify's are SIGALRM-based and fail outside the main thread
        gold_parsed = parse(wrap(gold), parsing_timeout=None)
        pred_parsed = parse(wrap(prediction), parsing_timeout=None)
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - odd input makes sympy raise almost anything; it is "not equal"
        return False


def is_equivalent(prediction: str | None, gold: str) -> bool:
    """Decide whether a predicted answer matches the gold answer.

    Identical strings are equal; otherwise, in order, the first step that decides:

    a. Numbers: after removing ``$``/``\\$``, ``%``/``\\%``, ``\\!``, degree marks, thousands commas,
       unit words or ``\\text{ cm}`` after a number, and an assignment to a variable of one or two
       characters in front, so ``"x = 5" == "5"`` (the MATH / PRM800K normalisation; math-verify
       agrees), two numbers (ints, decimals, ``a/b``, ``\\frac{a}{b}``, ``\\dfrac12``) are equal within
       relative tolerance 1e-6: ``"1,000" == "1000"``, ``"18 dollars" == "18"``,
       ``"0.5" == "\\frac{1}{2}"``, but ``"0.333" != "1/3"``. Two numbers that differ decide False.
    b. Answers that are words (``"the Denver Broncos"``, ``"\\text{(C)}"``) are equal when their SQuAD
       normalisation (:func:`normalize_text`, after unwrapping ``\\text{}``) is. They skip math-verify,
       which reads a word as a product of symbols (so ``"ab" == "ba"`` there).
    c. Anything else goes to math-verify (symbolic equivalence of LaTeX, each side wrapped in ``$``):
       ``"\\sqrt{2}/2" == "\\frac{\\sqrt{2}}{2}"``, ``"x^2+2x+1" == "(x+1)^2"``, ``"[1,2]" != "(1,2)"``.
       A parse or comparison error counts as not equal. It runs without a timeout (math-verify's
       timeouts use SIGALRM, which fails outside the main thread), so a pathological answer can be slow.

    Args:
        prediction: the extracted answer (from :func:`extract_answer`); None is never equivalent.
        gold: the reference answer.

    Raises:
        MissingDependencyError: step c is needed and math-verify is not installed
            (``pip install 'dca[eval]'``).
    """
    if prediction is None:
        return False
    pred, ref = prediction.strip(), gold.strip()
    if pred == ref:
        return True
    pred_num, ref_num = _to_number(pred), _to_number(ref)
    if pred_num is not None and ref_num is not None:
        return math.isclose(pred_num, ref_num, rel_tol=1e-6, abs_tol=1e-12)
    pred_text, ref_text = _unwrap_text(pred, drop_units=False), _unwrap_text(ref, drop_units=False)
    if _texty(pred_text) and _texty(ref_text):
        return normalize_text(pred_text) == normalize_text(ref_text)
    return _math_verify_equal(pred, ref)


def normalize_text(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, and collapse whitespace.

    The ``normalize_answer`` of the SQuAD v1.1 evaluation script (Rajpurkar et al. 2016).
    """
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _check_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str) or len(golds) == 0:
        raise ValueError(f"golds must be a non-empty sequence of answer strings, got {golds!r}")


def exact_match(prediction: str | None, golds: Sequence[str]) -> bool:
    """SQuAD v1.1 exact match: the normalised prediction equals some normalised gold answer.

    Raises:
        ValueError: ``golds`` is empty or a bare string.
    """
    _check_golds(golds)
    if prediction is None:
        return False
    return any(normalize_text(prediction) == normalize_text(g) for g in golds)


def token_f1(prediction: str | None, golds: Sequence[str]) -> float:
    """SQuAD v1.1 token F1 against the best-matching gold answer.

    Returns:
        The harmonic mean of token precision and recall after :func:`normalize_text`, in [0, 1];
        0.0 for a None prediction or no shared tokens.

    Raises:
        ValueError: ``golds`` is empty or a bare string.
    """
    _check_golds(golds)
    if prediction is None:
        return 0.0
    pred_tokens = normalize_text(prediction).split()

    def f1(gold: str) -> float:
        gold_tokens = normalize_text(gold).split()
        same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if same == 0:
            return 0.0
        precision, recall = same / len(pred_tokens), same / len(gold_tokens)
        return 2 * precision * recall / (precision + recall)

    return max(f1(g) for g in golds)
