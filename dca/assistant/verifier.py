"""Verifiers (reward models) that judge a solution: a generative verifier scored by P(Yes).

A verifier is a chat model fine-tuned to answer a fixed question about a solution with ``Yes`` or ``No`` (the
generative verifier of Zhang et al. 2024, "Generative Verifiers: Reward Modeling as Next-Token Prediction",
arXiv 2408.15240), so that it trains with dca's SFT code, exports to GGUF and runs in llama.cpp like any dca
model. Its score is P(Yes) / (P(Yes) + P(No)), each the probability of that word as the whole answer
(:meth:`dca.llm.LLM.score`).

An *outcome* verifier (ORM) sees the whole solution; a *process* verifier (PRM, Lightman et al. 2023, "Let's
Verify Step by Step") sees the solution up to a step (a line) and judges the steps so far. Both use
:func:`verifier_messages`, the one prompt that training data (:mod:`dca.distill.verifier`) and scoring share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelError
from ..llm import LLM, capable, check_llm, load_llm

__all__ = ["OUTCOME_QUESTION", "PROCESS_QUESTION", "Verifier", "solution_text", "split_steps", "step_prefixes",
           "verifier_messages"]

OUTCOME_QUESTION = "Is this solution correct? Answer Yes or No."
PROCESS_QUESTION = "Are the steps so far correct? Answer Yes or No."
YES, NO = "Yes", "No"


def verifier_messages(question: str, solution: str, *, process: bool = False) -> list[dict]:
    """The chat messages a verifier reads: the question, the solution (or its steps so far), and the fixed
    question it answers with ``Yes`` or ``No``."""
    ask = PROCESS_QUESTION if process else OUTCOME_QUESTION
    return [{"role": "user", "content": f"Question: {question.strip()}\n\nSolution:\n{solution.strip()}\n\n{ask}"}]


def split_steps(solution: str) -> list[str]:
    """The steps of a solution: its non-blank lines, in order (the step unit of PRM800K and Math-Shepherd for
    line-by-line solutions)."""
    return [line for line in solution.splitlines() if line.strip()]


def step_prefixes(solution: str) -> list[str]:
    """The solution as written up to the end of each step (:func:`split_steps`), blank lines kept: what a
    rollout continues from and what a process verifier judges."""
    out, pos = [], 0
    for line in solution.splitlines(keepends=True):
        pos += len(line)
        if line.strip():
            out.append(solution[:pos].rstrip("\n"))
    return out


def solution_text(thinking: str, answer: str) -> str:
    """The text a verifier judges for a sample: its thinking (when any) and its answer, the same in training data
    (:mod:`dca.distill.verifier`) and in scoring (:mod:`dca.assistant.strategies.verifier_search`)."""
    return f"{thinking.strip()}\n\n{answer.strip()}".strip()


class Verifier:
    """A generative verifier on a model that can score continuations.

    Args:
        model: an :class:`~dca.llm.LLM` with ``can_score``, or a GGUF path / model name to load.
        n_ctx: context window when the model is loaded here.

    Raises:
        ModelError: the file is missing or not a loadable GGUF (the message names it and ``--verifier``).
        ConfigError: the model cannot score continuations.
    """

    def __init__(self, model: LLM | str | Path, *, n_ctx: int = 4096):
        if isinstance(model, (str, Path)):
            try:
                model = load_llm(model, n_ctx=n_ctx)
            except ModelError as e:
                raise ModelError(f"--verifier: {e}") from e
        self.llm = check_llm(model)
        if not capable(self.llm, "score"):
            raise ConfigError(f"--verifier {self.llm.name}: a verifier must score continuations (a GGUF model)")
        self.name = self.llm.name
        self.tokens = 0  # tokens decoded for scoring (prompts included), over the verifier's life

    def _p_yes(self, conversations: list[list[dict]], cancel: Callable[[], bool] | None) -> np.ndarray:
        """P(Yes) / (P(Yes) + P(No)) for each conversation, scored together (:meth:`LLM.score_many` when the
        model has it: the solutions of one question share its prefix)."""
        if not conversations:
            return np.zeros(0)
        prompts = [self.llm.render(m) for m in conversations]
        many = getattr(self.llm, "score_many", None)
        if many is not None:
            logp, decoded = many(prompts, [YES, NO], cancel=cancel)
        else:  # a model implementing the protocol by shape only
            pairs = [self.llm.score(p, [YES, NO], cancel=cancel) for p in prompts]
            logp = np.array([s for s, _ in pairs], dtype=np.float64).reshape(len(prompts), 2)
            decoded = sum(n for _, n in pairs) + sum(self.llm.count_tokens(p) for p in prompts)
        self.tokens += decoded
        a, b = logp[:, 0], logp[:, 1]
        m = np.maximum(a, b)
        with np.errstate(invalid="ignore"):
            p = np.exp(a - m) / (np.exp(a - m) + np.exp(b - m))
        return np.where(np.isfinite(m), p, 0.0).astype(np.float64)

    def score(self, question: str, solutions: Sequence[str], *, process: bool = False,
              cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """Outcome scores: P(Yes) for each whole solution, a float64 array of shape (len(solutions),) in [0, 1].
        With ``process`` (a process verifier), P(Yes) that its steps so far are correct, judged after its last
        step (:meth:`score_partial`)."""
        return self._p_yes([verifier_messages(question, s, process=process) for s in solutions], cancel)

    def score_partial(self, question: str, partials: Sequence[str], *,
                      cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """Process scores of partial solutions: P(Yes) that each one's steps so far are correct; shape
        (len(partials),)."""
        return self.score(question, partials, process=True, cancel=cancel)

    def score_steps(self, question: str, steps: Sequence[str], *,
                    cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """Process scores: P(Yes) after each step, judged on the steps up to it; shape (len(steps),)."""
        return self.score_partial(question, ["\n".join(steps[:i + 1]) for i in range(len(steps))], cancel=cancel)

    def close(self) -> None:
        self.llm.close()
