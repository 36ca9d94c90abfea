"""Search guided by a verifier over k samples: best-of-N and verifier-weighted voting.

Both draw k samples as self-consistency does (one prompt evaluation, parallel llama.cpp sequences, tools
answered inside each) and score each whole sample with the verifier (``--verifier``;
:class:`dca.assistant.verifier.Verifier`, P(Yes) to "Is this solution correct?", or with ``--process-verifier`` to
"Are the steps so far correct?" after the sample's last step):

``best_of_n``
    the sample the verifier scores highest (Cobbe et al. 2021; Lightman et al. 2023).
``weighted_vote``
    samples clustered by equivalent final answer, each cluster weighted by the sum of its samples' scores; the
    best-scored sample of the heaviest cluster (Li et al. 2023 "Making Large Language Models Better Reasoners
    with Step-Aware Verifier"; the weighted best-of-N of Hugging Face's search-and-learn).

The votes an :class:`~dca.assistant.Answer` carries stay the plain majority vote, so ``maj@k`` in ``dca eval``
keeps its meaning; the strategy's choice is the answer (``accuracy``), and the scores are on each sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ...errors import ConfigError
from ...voting import Vote, vote
from ..types import Sample
from . import Generation, register_strategy
from .self_consistency import SelfConsistency, _best_in_cluster


def _scored(gen: Generation, samples: tuple[Sample, ...]) -> tuple[Sample, ...]:
    if gen.verifier is None:
        raise ConfigError(f"--strategy {gen.config.strategy if gen.config.strategy != 'auto' else 'best_of_n'} "
                          "needs a verifier: give --verifier GGUF (trained with dca distill verifier)")
    from ..verifier import solution_text

    texts = [solution_text(s.thinking, s.text) for s in samples]
    scores = gen.verifier.score(gen.question, texts, process=gen.config.process_verifier, cancel=gen.cancel)
    return tuple(replace(s, score=float(p)) for s, p in zip(samples, scores))


@register_strategy("best_of_n")
class BestOfN(SelfConsistency):
    """Answer with the sample the verifier scores highest (ties: the first)."""

    def choose(self, gen: Generation, samples: tuple[Sample, ...]) -> tuple[tuple[Sample, ...], tuple, int]:
        samples = _scored(gen, samples)
        votes = vote([s.answer for s in samples], [s.mean_logprob for s in samples])
        return samples, votes, best_of_n_choice(samples)


@register_strategy("weighted_vote")
class WeightedVote(SelfConsistency):
    """Answer with the best-scored sample of the cluster whose verifier scores sum highest."""

    def choose(self, gen: Generation, samples: tuple[Sample, ...]) -> tuple[tuple[Sample, ...], tuple, int]:
        samples = _scored(gen, samples)
        votes = vote([s.answer for s in samples], [s.mean_logprob for s in samples])
        return samples, votes, weighted_vote_choice(samples)


def best_of_n_choice(samples: Sequence[Sample]) -> int:
    """The index of the sample with the highest verifier score (ties: the first); unscored samples rank last."""
    return max(range(len(samples)), key=lambda i: (-1.0 if samples[i].score is None else samples[i].score, -i))


def weighted_vote_choice(samples: Sequence[Sample]) -> int:
    """The index of the best-scored sample of the cluster of equivalent answers whose scores sum highest."""
    return _best_in_cluster(samples, weighted_votes(samples), key=lambda s: s.score or 0.0)


#: The choices among scored samples, by strategy name: what ``dca eval`` reports as ``NAME@k`` for a run whose
#: samples a verifier scored, whichever strategy answered, and what ``dca eval rescore`` chooses by.
VERIFIER_CHOICES: dict[str, Callable[[Sequence[Sample]], int]] = {
    "best_of_n": best_of_n_choice, "weighted_vote": weighted_vote_choice}


def weighted_votes(samples: Sequence[Sample]) -> tuple[Vote, ...]:
    """Clusters of equivalent answers weighted by the sum of their samples' verifier scores, heaviest first
    (``Vote.weight`` is that sum); samples without an answer do not vote."""
    import math

    # dca.voting sums exp(confidence): give it log(score) so that the sums are of the scores themselves
    logs = [math.log(max(s.score or 0.0, 1e-300)) for s in samples]
    return vote([s.answer for s in samples], logs, weighted=True)
