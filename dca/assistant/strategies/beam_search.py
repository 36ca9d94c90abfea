"""Step-level beam search guided by a process verifier (PRM).

A solution grows one step (a line) at a time: each of the ``beam_width`` partial solutions is extended by
``expansions`` sampled next steps (parallel llama.cpp sequences sharing the partial solution's prompt, tools
answered inside each), every extension is scored by the process verifier on the steps so far (P(Yes) to "Are
the steps so far correct?"; :meth:`dca.assistant.verifier.Verifier.score_partial`), and the
``beam_width`` best partial and finished solutions are kept. A solution is finished when its step writes the
final answer (``\\boxed{}``), the model ends its turn, or the token budget is spent; the search ends when every
kept solution is finished or after ``max_steps`` steps, and answers with the finished solution scored best.

This is the PRM-guided beam search of Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally can be More
Effective than Scaling Model Parameters" (arXiv 2408.03314), as implemented in Hugging Face's search-and-learn;
the step unit is the newline, as in PRM800K and Math-Shepherd.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace

from ...errors import ConfigError
from ...llm import capable
from ..types import Sample, StreamChunk
from . import Generation, Outcome, register_strategy

MAX_STEPS = 24  # steps before every kept solution is taken as finished


@dataclass(frozen=True)
class _Beam:
    text: str  # the solution so far, steps joined by newlines
    score: float  # the PRM's score of its last step
    tokens: int  # tokens generated for it
    done: bool
    tool_calls: tuple = ()


def _finished(step: str, completion, tokens: int, budget: int) -> bool:
    """A solution ends with its step when the step writes the final answer, the model ended its turn (EOS), a
    limit cut it, or the budget is spent; a blank line (a paragraph break) does not end it."""
    return "\\boxed" in step or completion.eos or completion.finish != "stop" or tokens >= budget


@register_strategy("beam_search")
class BeamSearch:
    """Beam search over steps with a process verifier (``--verifier``), ``beam_width`` x ``expansions``."""

    def run(self, gen: Generation) -> Generator[StreamChunk, None, Outcome]:
        from ...grading import extract_answer
        from ...voting import vote

        cfg = gen.config
        if gen.verifier is None:
            raise ConfigError("--strategy beam_search needs a process verifier: give --verifier GGUF (trained on "
                              "the prm.jsonl of dca distill verifier --process)")
        if not capable(gen.llm, "sample"):
            raise ConfigError(f"--strategy beam_search samples steps in parallel: {gen.llm.name} cannot (a GGUF can)")
        extra = {}
        if gen.tools:
            if not capable(gen.llm, "use_tools"):
                raise ConfigError(f"--tools with --strategy beam_search needs a GGUF model; {gen.llm.name} is not")
            extra["tools"] = gen.tools.tools
        budget = gen.token_budget
        beams = [_Beam("", 0.0, 0, False)]
        generated = 0
        for depth in range(MAX_STEPS):
            if all(b.done for b in beams) or gen.cancel():
                break
            new: list[_Beam] = []
            for i, b in enumerate(beams):
                if b.done:
                    continue
                outs = gen.llm.sample(gen.prompt + b.text, n=cfg.expansions, max_tokens=max(1, budget - b.tokens),
                                      temperature=cfg.sample_temperature, repeat_penalty=cfg.repeat_penalty,
                                      stop=("\n",), seed=cfg.seed + 7919 * depth + i, cancel=gen.cancel, **extra)
                seen = set()
                for c in outs:
                    generated += c.tokens
                    step = c.text.strip("\n")
                    if step in seen:  # the same step twice: one candidate
                        continue
                    seen.add(step)
                    tokens = b.tokens + c.tokens  # the newline that stopped it is among c.tokens
                    new.append(_Beam(b.text + step + "\n", 0.0, tokens, _finished(step, c, tokens, budget),
                                     b.tool_calls + tuple(c.tool_calls)))
            scores = gen.verifier.score_partial(gen.question, [c.text for c in new], cancel=gen.cancel)
            new = [replace(c, score=float(s)) for c, s in zip(new, scores)]
            candidates = sorted([b for b in beams if b.done] + new, key=lambda c: c.score, reverse=True)
            beams = candidates[:cfg.beam_width] or beams
        finished = [b for b in beams if b.done] or beams
        best = max(finished, key=lambda b: b.score)
        samples = tuple(Sample(b.text.strip(), "", extract_answer(b.text) if b.text.strip() else None, 0.0, b.tokens,
                               "stop" if b.done else "length", b.tool_calls, b.score) for b in beams)
        chosen = beams.index(best)
        votes = vote([s.answer for s in samples])
        yield StreamChunk("answer", text=best.text.strip())
        return Outcome(text=best.text.strip(), samples=samples, votes=votes, generated_tokens=generated,
                       streamed=False, truncated=not best.done, tool_calls=best.tool_calls, chosen=chosen)
