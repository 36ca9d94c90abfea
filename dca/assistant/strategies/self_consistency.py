"""Self-consistency (Wang et al. 2022, "Self-Consistency Improves Chain of Thought Reasoning in Language
Models"): k completions sampled in parallel from one prompt evaluation, a vote over their final answers."""

from __future__ import annotations

from collections.abc import Generator

from ...errors import ConfigError
from ...llm import capable
from ...thinking import split_thinking
from ...voting import vote
from ..types import Sample, StreamChunk
from . import NO_PASSAGES, Generation, Outcome, register_strategy


@register_strategy("self_consistency")
class SelfConsistency:
    """Sample k = ``samples`` completions (thinking included) at ``sample_temperature``, extract each final
    answer (:func:`dca.grading.extract_answer`), vote (``vote``: majority or logprob), and answer with the most
    confident sample of the winning cluster, yielded whole."""

    def split(self, gen: Generation, completion: str) -> tuple[str, str]:
        """(thinking, answer) of a sampled completion, which began inside the thinking phase when there is one."""
        if not gen.thinking:
            return "", completion.strip()
        if gen.think_close not in completion:
            # a tagged model cut off before closing has no answer; a scaffolded one answered in its reasoning
            return (completion.strip(), "") if gen.llm.think_tags else ("", completion.strip())
        thinking, answer, _ = split_thinking(completion, tags=gen.think_tags, started=True)
        return thinking, answer

    def draw(self, gen: Generation) -> tuple[Sample, ...]:
        """The k samples, each with its extracted answer and tool calls."""
        from ...grading import extract_answer

        cfg = gen.config
        if not capable(gen.llm, "sample"):
            raise ConfigError(f"--samples {cfg.samples} needs a model that samples in parallel (a GGUF); "
                              f"{gen.llm.name} cannot")
        extra = {}
        if gen.tools:
            if not capable(gen.llm, "use_tools"):
                raise ConfigError(f"--tools with --samples {cfg.samples} needs a model that answers tool calls "
                                  f"while sampling (a GGUF); {gen.llm.name} cannot")
            extra["tools"] = gen.tools.tools
        completions = gen.llm.sample(gen.prompt, n=cfg.samples, max_tokens=gen.token_budget,
                                     temperature=cfg.sample_temperature, repeat_penalty=cfg.repeat_penalty,
                                     stop=NO_PASSAGES, seed=cfg.seed, cancel=gen.cancel, **extra)
        parts = [self.split(gen, c.text) for c in completions]
        return tuple(Sample(a, t, extract_answer(a) if a else None, c.mean_logprob, c.tokens, c.finish,
                            tuple(c.tool_calls)) for (t, a), c in zip(parts, completions))

    def choose(self, gen: Generation, samples: tuple[Sample, ...]) -> tuple[tuple[Sample, ...], tuple, int]:
        """(the samples, scored when the strategy scores them; the votes, best first; the index of the chosen
        sample): here the vote of ``--vote`` and the most confident sample of the winning cluster."""
        votes = vote([s.answer for s in samples], [s.mean_logprob for s in samples],
                     weighted=gen.config.vote == "logprob")
        return samples, votes, _best_in_cluster(samples, votes, key=lambda s: s.mean_logprob)

    def run(self, gen: Generation) -> Generator[StreamChunk, None, Outcome]:
        samples, votes, chosen = self.choose(gen, self.draw(gen))
        pick = samples[chosen]
        if pick.thinking:
            yield StreamChunk("thinking", text=pick.thinking)
        yield StreamChunk("answer", text=pick.text)
        return Outcome(text=pick.text.strip(), thinking=pick.thinking.strip(), samples=samples, votes=votes,
                       generated_tokens=sum(s.tokens for s in samples), streamed=False,
                       truncated=bool(pick.text.strip()) and pick.finish == "length", tool_calls=pick.tool_calls,
                       chosen=chosen)


def _best_in_cluster(samples, votes, *, key) -> int:
    """The index of the sample that ranks best by ``key`` among those in the winning cluster (all samples when
    none has an answer)."""
    from ...grading import is_equivalent

    pool = [i for i, s in enumerate(samples) if votes and s.answer is not None
            and is_equivalent(s.answer, votes[0].answer)] or list(range(len(samples)))
    return max(pool, key=lambda i: key(samples[i]))
