"""Verifiers (dca.assistant.verifier) and the search strategies they guide, on scripted models."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from dca.assistant import Assistant
from dca.assistant.verifier import OUTCOME_QUESTION, PROCESS_QUESTION, Verifier, split_steps, verifier_messages
from dca.errors import ConfigError, ModelError


def _scorer(scripted_llm, p_yes: dict[str, float]):
    """A scripted verifier model: P(Yes) is ``p_yes[answer]`` for the solution whose boxed answer it reads."""

    class ScoringLLM(scripted_llm):
        can_score = True

        def score(self, prompt, continuations, *, cancel=None):
            self.prompts.append(prompt)
            boxed = re.findall(r"\\boxed\{([^}]*)\}", prompt)
            p = p_yes.get(boxed[-1] if boxed else "", 0.5)
            logs = {"Yes": math.log(p), "No": math.log(1 - p)}
            return np.array([logs[c] for c in continuations]), 2

    return ScoringLLM("unused")


def _assistant(scripted_llm, sampled, p_yes, **settings):
    bot = Assistant(model=scripted_llm("x", sampled=sampled), think=False, **settings)
    bot.verifier = Verifier(_scorer(scripted_llm, p_yes))
    return bot


MAJORITY_WRONG = [("so \\boxed{41}", -0.1)] * 3 + [("so \\boxed{42}", -1.5)]


def test_verifier_scores_p_yes_over_yes_and_no(scripted_llm):
    model = _scorer(scripted_llm, {"42": 0.9, "41": 0.2})
    v = Verifier(model)
    scores = v.score("What is 6 x 7?", ["6*7 = \\boxed{42}", "\\boxed{41}"])
    assert scores.shape == (2,) and np.allclose(scores, [0.9, 0.2])
    assert OUTCOME_QUESTION in model.prompts[0] and "What is 6 x 7?" in model.prompts[0]
    steps = v.score_steps("q", ["a = 6*7", "\\boxed{42}"])
    assert np.allclose(steps, [0.5, 0.9]) and PROCESS_QUESTION in model.prompts[-1]
    assert v.tokens > 0


def test_best_of_n_picks_the_candidate_the_verifier_ranks_best(scripted_llm):
    bot = _assistant(scripted_llm, MAJORITY_WRONG, {"42": 0.9, "41": 0.2}, samples=4, strategy="best_of_n")
    answer = bot.ask("What is 6 x 7?")
    assert answer.text == "so \\boxed{42}" and answer.chosen == 3
    assert [s.score for s in answer.samples] == pytest.approx([0.2, 0.2, 0.2, 0.9])
    assert answer.votes[0].answer == "41"  # the votes stay the majority's: maj@k keeps its meaning
    # self-consistency on the same samples follows the majority
    assert Assistant(model=scripted_llm("x", sampled=MAJORITY_WRONG), think=False, samples=4).ask("q").text \
        == "so \\boxed{41}"


def test_weighted_vote_sums_scores_per_answer(scripted_llm):
    # one sample of 42 scored 0.9 against three of 41 scored 0.5 each: best-of-N takes 42, the vote 41 (1.5 > 0.9)
    p = {"42": 0.9, "41": 0.5}
    best = _assistant(scripted_llm, MAJORITY_WRONG, p, samples=4, strategy="best_of_n").ask("q")
    weighted = _assistant(scripted_llm, MAJORITY_WRONG, p, samples=4, strategy="weighted_vote").ask("q")
    assert best.text.endswith("{42}") and weighted.text.endswith("{41}")
    # and with 41 scored 0.2 (0.6 in all) the vote goes to 42
    low = _assistant(scripted_llm, MAJORITY_WRONG, {"42": 0.9, "41": 0.2}, samples=4, strategy="weighted_vote")
    assert low.ask("q").text.endswith("{42}")


def test_auto_strategy_with_a_verifier_is_the_weighted_vote(scripted_llm):
    from dca.assistant import AssistantConfig
    from dca.assistant.strategies import choose_strategy

    assert choose_strategy(AssistantConfig(samples=8, verifier="v.gguf"), False) == "weighted_vote"
    assert choose_strategy(AssistantConfig(samples=8), False) == "self_consistency"
    assert choose_strategy(AssistantConfig(verifier="v.gguf"), False) == "greedy"


def test_search_without_a_verifier_says_which_flag(scripted_llm):
    bot = Assistant(model=scripted_llm("x", sampled=MAJORITY_WRONG), think=False, samples=4, strategy="best_of_n")
    with pytest.raises(ConfigError, match="--verifier"):
        bot.ask("q")


def test_a_verifier_that_is_not_a_gguf_is_named(tmp_path):
    bogus = tmp_path / "verifier.gguf"
    bogus.write_text("not a model")
    with pytest.raises(ModelError, match=r"--verifier.*verifier\.gguf"):
        Verifier(bogus)
    with pytest.raises(ModelError, match="--verifier"):
        Verifier(tmp_path / "missing.gguf")


def test_a_verifier_must_score(scripted_llm):
    with pytest.raises(ConfigError, match="score continuations"):
        Verifier(scripted_llm("x"))


def test_verifier_messages_and_steps():
    msgs = verifier_messages("Q?", "step 1\n\nstep 2\n")
    assert msgs[0]["role"] == "user" and msgs[0]["content"].endswith(OUTCOME_QUESTION)
    assert split_steps("a\n\n b \n\\boxed{1}") == ["a", " b ", "\\boxed{1}"]


def test_eval_records_scores_and_choice(tmp_path, scripted_llm):
    import json

    from dca.eval import EvalConfig, run_eval

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "What is 6 x 7?", "answer": "#### 42"}) + "\n")
    bot = _assistant(scripted_llm, MAJORITY_WRONG, {"42": 0.9, "41": 0.2})
    report = run_eval(EvalConfig(task="gsm8k", data=data, out_dir=tmp_path / "run", samples=4,
                                 strategy="best_of_n"), bot)
    rec = json.loads((tmp_path / "run" / "predictions.jsonl").read_text())
    assert rec["chosen"] == 3 and rec["sample_scores"] == pytest.approx([0.2, 0.2, 0.2, 0.9])
    assert rec["correct"] is True and rec["scores"]["maj@4"] == 0
    assert report.metrics["accuracy"].value == 1.0


def test_beam_search_keeps_the_steps_the_process_verifier_ranks_best(scripted_llm):
    from dca.llm import Completion

    first = ["6*7 = 41", "I guess", "6 times 7 is 42", "6*7 = 42"]

    class StepSampler(scripted_llm):
        def sample(self, prompt, *, n, max_tokens, temperature=0.7, repeat_penalty=1.0, stop=(), seed=0,
                   cancel=None):
            self.sample_calls.append({"n": n, "prompt": prompt, "stop": stop})
            if prompt.endswith("<|assistant|>\n"):  # the first step
                return [Completion(s, 3, -1.0, "stop") for s in first][:n]
            answer = "42" if "42" in prompt.rsplit("<|assistant|>", 1)[1] else "41"
            return [Completion(f"so \\boxed{{{answer}}}", 3, -1.0, "stop"), Completion("\\boxed{40}", 2, -1, "stop")][:n]

    class StepScorer(scripted_llm):
        can_score = True

        def score(self, prompt, continuations, *, cancel=None):
            self.prompts.append(prompt)
            last = prompt.split("Solution:\n", 1)[1].split("\n\n")[0].strip().splitlines()[-1]
            p = {"6*7 = 42": 0.9, "6 times 7 is 42": 0.8, "I guess": 0.5, "6*7 = 41": 0.1,
                 "so \\boxed{42}": 0.95, "so \\boxed{41}": 0.3, "\\boxed{40}": 0.05}[last]
            return np.array([math.log(p) if c == "Yes" else math.log(1 - p) for c in continuations]), 2

    model, scorer = StepSampler("x"), StepScorer("x")
    bot = Assistant(model=model, think=False, strategy="beam_search", beam_width=2, expansions=4)
    bot.verifier = Verifier(scorer)
    answer = bot.ask("What is 6 x 7?")
    assert answer.text == "6*7 = 42\nso \\boxed{42}"
    assert [s.text for s in answer.samples] == ["6*7 = 42\nso \\boxed{42}", "6 times 7 is 42\nso \\boxed{42}"]
    assert answer.samples[answer.chosen].score == pytest.approx(0.95)
    # step 1 from the prompt, step 2 from each of the two kept partial solutions; steps end at a newline
    prompts = [c["prompt"].rsplit("<|assistant|>\n", 1)[1] for c in model.sample_calls]
    assert prompts == ["", "6*7 = 42\n", "6 times 7 is 42\n"] and model.sample_calls[0]["stop"] == ("\n",)
    assert all(PROCESS_QUESTION in p for p in scorer.prompts) and len(scorer.prompts) == 4 + 4
    assert answer.stats.generated_tokens == 4 * 3 + 2 * (3 + 2)


def test_beam_search_needs_a_verifier(scripted_llm):
    bot = Assistant(model=scripted_llm("x"), think=False, strategy="beam_search")
    with pytest.raises(ConfigError, match="beam_search needs a process verifier"):
        bot.ask("q")


def test_auroc_counts_pairs_ranked_right_and_ties_as_half():
    from dca.eval.stats import auroc

    assert auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [1, 0, 0]) == 0.5
    # positives 0.8 and 0.3 against negatives 0.5 and 0.3: pairs (0.8>0.5, 0.8>0.3, 0.3<0.5, 0.3=0.3) = 2.5 / 4
    assert auroc([0.8, 0.3, 0.5, 0.3], [1, 1, 0, 0]) == 0.625
    with pytest.raises(ValueError, match="positive and negative"):
        auroc([0.1, 0.2], [1, 1])


@pytest.mark.slow
def test_shared_prefix_scoring_matches_prompt_by_prompt_on_the_gguf():
    from conftest import bundled_gguf

    from dca.llm import load_llm

    llm = load_llm(bundled_gguf(), n_ctx=2048)
    question = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in all?"
    solutions = ["48/2 = 24\n48 + 24 = 72\n\\boxed{72}", "48 * 2 = 96\n\\boxed{96}", "\\boxed{72}"]
    prompts = [llm.render(verifier_messages(question, s)) for s in solutions]
    many, decoded = llm.score_many(prompts, ["Yes", "No"])
    one = np.array([llm.score(p, ["Yes", "No"])[0] for p in prompts])
    assert many.shape == (3, 2) and np.isfinite(many).all()
    # the same numbers up to llama.cpp's batch-split noise (0.31 nats at most here on this Q4_1 model); a wrong position
    # or row would move them by nats
    assert np.allclose(many, one, atol=0.5), (many, one)
    same, _ = llm.score_many([prompts[0]] * 3, ["Yes", "No"])
    assert (same == same[0]).all()
    # a prompt's scores do not depend on the other prompts scored with it, nor on their order
    pair, _ = llm.score_many([prompts[2], prompts[0]], ["Yes", "No"])
    assert (pair == many[[2, 0]]).all()
    # the question's prefix was decoded once, not three times
    assert decoded < sum(llm.count_tokens(p) for p in prompts)
    scores = Verifier(llm).score(question, solutions)
    assert np.allclose(scores, np.exp(many[:, 0]) / np.exp(many).sum(axis=1))


def test_default_score_many_counts_prompt_tokens_and_stops_on_cancel(scripted_llm):
    model = _scorer(scripted_llm, {"42": 0.9})
    scores, decoded = model.score_many(["a b c \\boxed{42}", "d e"], ["Yes", "No"])
    assert scores.shape == (2, 2) and np.isclose(math.exp(scores[0, 0]), 0.9)
    assert decoded == 2 * 2 + 4 + 2  # score()'s 2 a prompt, plus the prompts' own tokens
    stopped, _ = model.score_many(["x", "y"], ["Yes"], cancel=lambda: True)
    assert np.isneginf(stopped).all()


def test_rescoring_a_sampled_run_chooses_as_the_live_search_did(tmp_path, scripted_llm):
    import json

    from dca.eval import EvalConfig, compare_reports, read_predictions, rescore_run, run_eval

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"Item {i}: what is 6 x 7?", "answer": f"#### {g}"}) + "\n"
                            for i, g in enumerate([42, 41, 7])))
    p = {"42": 0.9, "41": 0.5}  # best-of-N takes the lone 42, the weighted vote the three 41s (1.5 > 0.9)
    live = run_eval(EvalConfig(task="gsm8k", data=data, out_dir=tmp_path / "live", samples=4,
                               strategy="weighted_vote"), _assistant(scripted_llm, MAJORITY_WRONG, p))
    sampled = run_eval(EvalConfig(task="gsm8k", data=data, out_dir=tmp_path / "sampled", samples=4),
                       Assistant(model=scripted_llm("x", sampled=MAJORITY_WRONG), think=False))
    assert "best_of_n@4" not in sampled.metrics
    scorer = _scorer(scripted_llm, p)
    again = rescore_run(tmp_path / "sampled", Verifier(scorer), tmp_path / "rescored")
    assert len(scorer.prompts) == 12  # each candidate judged once, nothing sampled
    values = {n: m.value for n, m in again.metrics.items()}
    assert values == {n: m.value for n, m in live.metrics.items()}
    assert values["accuracy"] == values["weighted_vote@4"] == values["maj@4"] == pytest.approx(1 / 3)
    assert values["best_of_n@4"] == pytest.approx(1 / 3) and values["pass@4"] == pytest.approx(2 / 3)
    for a, b in zip(read_predictions(tmp_path / "live" / "predictions.jsonl"),
                    read_predictions(tmp_path / "rescored" / "predictions.jsonl")):
        assert (a["scores"], a["chosen"], a["sample_scores"], a["output"]) == \
            (b["scores"], b["chosen"], b["sample_scores"], b["output"])
    assert [r["scores"]["best_of_n@4"] for r in read_predictions(tmp_path / "live" / "predictions.jsonl")] == [1, 0, 0]
    settings = json.loads((tmp_path / "rescored" / "config.json").read_text())["settings"]
    assert settings["assistant"]["strategy"] == "weighted_vote" and settings["rescored"]["run"].endswith("sampled")

    # best-of-N as the answer; an existing output directory is continued only when asked
    best = rescore_run(tmp_path / "sampled", Verifier(scorer), tmp_path / "best", strategy="best_of_n")
    assert best.metrics["accuracy"].value == best.metrics["best_of_n@4"].value
    with pytest.raises(ConfigError, match="--resume"):
        rescore_run(tmp_path / "sampled", Verifier(scorer), tmp_path / "best", strategy="best_of_n")
    calls = len(scorer.prompts)
    assert rescore_run(tmp_path / "sampled", Verifier(scorer), tmp_path / "best", strategy="best_of_n",
                       resume=True).comparable() == best.comparable()
    assert len(scorer.prompts) == calls

    # A's metric against another of B's, paired by item: maj@4 of the sampled run against best-of-N
    row = {r.name: r for r in compare_reports(tmp_path / "sampled", tmp_path / "best",
                                               pairs=[("maj@4", "best_of_n@4")]).rows}["maj@4 vs best_of_n@4"]
    assert (row.a, row.b, row.method) == (pytest.approx(1 / 3), pytest.approx(1 / 3), "paired bootstrap")
    with pytest.raises(ConfigError, match="run B has no metric 'pass@8'"):
        compare_reports(tmp_path / "sampled", tmp_path / "best", pairs=[("accuracy", "pass@8")])


def test_a_process_verifier_is_asked_about_each_whole_solution_live_and_rescored(tmp_path, scripted_llm):
    import json

    from dca.eval import EvalConfig, read_predictions, rescore_run, run_eval

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "What is 6 x 7?", "answer": "#### 42"}) + "\n")
    run_eval(EvalConfig(task="gsm8k", data=data, out_dir=tmp_path / "sampled", samples=4),
             Assistant(model=scripted_llm("x", sampled=MAJORITY_WRONG), think=False))
    outcome, process = _scorer(scripted_llm, {"41": 0.9, "42": 0.1}), _scorer(scripted_llm, {"41": 0.1, "42": 0.9})

    class ByQuestion(scripted_llm):  # the outcome question ranks 41 first, the process question 42
        can_score = True

        def score(self, prompt, continuations, *, cancel=None):
            self.prompts.append(prompt)
            return (process if PROCESS_QUESTION in prompt else outcome).score(prompt, continuations, cancel=cancel)

    model = ByQuestion("unused")
    prm = rescore_run(tmp_path / "sampled", Verifier(model), tmp_path / "prm", strategy="best_of_n", process=True)
    assert len(model.prompts) == 4 and all(PROCESS_QUESTION in q and OUTCOME_QUESTION not in q for q in model.prompts)
    assert all("\\boxed{4" in q.split("Solution:")[1] for q in model.prompts)  # each whole solution, its answer
    rec = read_predictions(tmp_path / "prm" / "predictions.jsonl")[0]
    assert rec["sample_scores"] == pytest.approx([0.1, 0.1, 0.1, 0.9]) and rec["chosen"] == 3
    assert prm.metrics["accuracy"].value == 1.0 and prm.metrics["maj@4"].value == 0.0
    settings = json.loads((tmp_path / "prm" / "config.json").read_text())["settings"]
    assert settings["assistant"]["process_verifier"] is True
    orm = rescore_run(tmp_path / "sampled", Verifier(model), tmp_path / "orm", strategy="best_of_n")
    assert orm.metrics["accuracy"].value == 0.0 and OUTCOME_QUESTION in model.prompts[-1]
    with pytest.raises(ConfigError, match="was run with other settings: --process-verifier"):  # outcome into PRM run
        rescore_run(tmp_path / "sampled", Verifier(model), tmp_path / "prm", strategy="best_of_n", resume=True)

    # the live search with --process-verifier asks the same question and chooses the same sample
    for flag, right in ((True, 1.0), (False, 0.0)):
        bot = Assistant(model=scripted_llm("x", sampled=MAJORITY_WRONG), think=False, process_verifier=flag)
        bot.verifier = Verifier(model)
        live = run_eval(EvalConfig(task="gsm8k", data=data, out_dir=tmp_path / f"live-{flag}", samples=4,
                                   strategy="best_of_n"), bot)
        assert live.metrics["accuracy"].value == right
        assert (PROCESS_QUESTION in model.prompts[-1]) is flag
    assert read_predictions(tmp_path / "live-True" / "predictions.jsonl")[0]["sample_scores"] == rec["sample_scores"]


def test_rescoring_needs_a_run_that_kept_its_candidates(tmp_path, scripted_llm):
    import json

    from dca.errors import LoaderError
    from dca.eval import EvalConfig, rescore_run, run_eval

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "What is 6 x 7?", "answer": "#### 42"}) + "\n")
    run_eval(EvalConfig(task="gsm8k", data=data, out_dir=tmp_path / "greedy"),
             Assistant(model=scripted_llm("so \\boxed{42}"), think=False))
    verifier = Verifier(_scorer(scripted_llm, {}))
    with pytest.raises(ConfigError, match=r"greedy/predictions\.jsonl: item 0 keeps no candidates"):
        rescore_run(tmp_path / "greedy", verifier, tmp_path / "out")
    with pytest.raises(LoaderError, match="not a dca eval run"):
        rescore_run(tmp_path / "nothing", verifier, tmp_path / "out")
    with pytest.raises(ConfigError, match="--strategy 'majority'"):
        rescore_run(tmp_path / "greedy", verifier, tmp_path / "out", strategy="majority")
