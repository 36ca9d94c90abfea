"""Evaluation: scores and intervals, the run directory, resume after a kill, qa with and without a store, compare."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from conftest import SHARED_DATA, bundled_gguf
from typer.testing import CliRunner

from dca.assistant import Assistant, AssistantConfig, Stats
from dca.cli import app
from dca.errors import ConfigError, LoaderError
from dca.eval import (
    EvalConfig,
    compare_reports,
    load_items,
    newcombe_interval,
    paired_bootstrap,
    pass_at_k,
    run_eval,
    wilson_interval,
)
from dca.eval.report import TIMING_FIELDS
from dca.eval.tasks import QA_CLOSED_BOOK_PROMPT, QA_SYSTEM_PROMPT, score_answer
from dca.rag import Store

runner = CliRunner()
WRONG = {3, 7}  # items the scripted model gets wrong
FILES = {"config.json", "predictions.jsonl", "report.json", "report.md"}


def question_of(prompt: str) -> str:
    return re.findall(r"<\|user\|>\n(.*?)\n<\|assistant\|>", prompt, re.DOTALL)[-1]


def math_model(scripted_llm, wrong=WRONG):
    """Answers "Item i: what is i plus i?" with \\boxed{2i}, or \\boxed{2i+1} for the items in ``wrong``."""

    def respond(prompt):
        i = int(re.search(r"Item (\d+):", question_of(prompt)).group(1))
        return f"Add {i} and {i} step by step.\nThe answer is \\boxed{{{2 * i + (i in wrong)}}}"

    return scripted_llm(respond)


def write_gsm8k(path, n=10):
    path.write_text("".join(json.dumps({"question": f"Item {i}: what is {i} plus {i}?",
                                        "answer": f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}) + "\n"
                            for i in range(n)))
    return path


def evaluate(tmp_path, llm, name="run", data=None, progress=None, **kw):
    data = data or write_gsm8k(tmp_path / "gsm8k.jsonl")
    store = kw.pop("store", None)
    cfg = EvalConfig(task=kw.pop("task", "gsm8k"), data=data, out_dir=tmp_path / name, **kw)
    return run_eval(cfg, assistant=Assistant(llm, store), progress=progress)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


# -- statistics -------------------------------------------------------------------------------------------


def test_wilson_newcombe_pass_at_k_and_bootstrap_on_known_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # Newcombe 1998, table II example: 56/70 vs 48/80 -> difference 0.2, interval (0.0524, 0.3339)
    assert newcombe_interval(48, 80, 56, 70) == pytest.approx((0.0524, 0.3339), abs=5e-4)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)
    assert pass_at_k(5, 1, 5) == 1.0 and pass_at_k(5, 0, 5) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    d, lo, hi = paired_bootstrap([0, 0, 1, 1] * 10, [1, 1, 1, 1] * 10)
    assert d == 0.5 and 0 < lo <= d <= hi <= 1
    assert paired_bootstrap([0, 1] * 10, [1, 0] * 10) == paired_bootstrap([0, 1] * 10, [1, 0] * 10)  # fixed seed


# -- a run and its files ---------------------------------------------------------------------------------


def test_accuracy_interval_predictions_and_report_files(tmp_path, scripted_llm):
    llm = math_model(scripted_llm)
    report = evaluate(tmp_path, llm)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} == FILES
    acc = report.metrics["accuracy"]
    assert (acc.value, acc.n, acc.interval) == (0.8, 10, "wilson")
    assert (acc.low, acc.high) == pytest.approx((0.490, 0.943), abs=1e-3)
    assert list(report.metrics) == ["accuracy"] and report.items == 10 and report.samples == 1
    assert report.mean_answer_tokens > 0 and report.mean_thinking_tokens == 0

    preds = lines(out / "predictions.jsonl")
    assert [p["index"] for p in preds] == list(range(10))
    for i, p in enumerate(preds):
        assert p["question"] == f"Item {i}: what is {i} plus {i}?" and p["gold"] == str(2 * i)
        assert p["extracted"] == str(2 * i + (i in WRONG)) and p["correct"] is (i not in WRONG)
        assert p["scores"] == {"accuracy": int(i not in WRONG)}
        assert "\\boxed" in p["output"] and p["tokens"]["answer"] > 0 and p["id"] == f"line-{i + 1}"
    # every item was asked once, alone, with the step-by-step \boxed{} prompt
    assert len(llm.prompts) == 10 and all(p.count("<|user|>") == 1 and "\\boxed" in p for p in llm.prompts)

    saved = json.loads((out / "report.json").read_text())
    assert saved == report.to_dict() and saved["metrics"]["accuracy"]["value"] == 0.8
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["task"] == "gsm8k" and config["settings"]["assistant"]["history_turns"] == 0
    md = (out / "report.md").read_text()
    assert "| metric | value | 95% interval | n | interval |" in md
    assert "| accuracy | 80.0% | [49.0%, 94.3%] | 10 | wilson |" in md


def test_progress_callback_reports_running_accuracy(tmp_path, scripted_llm):
    calls = []
    evaluate(tmp_path, math_model(scripted_llm), progress=calls.append, limit=5)
    assert {(c.job, c.unit) for c in calls} == {("eval", "items")}
    assert (calls[0].done, calls[0].total, calls[0].metrics) == (0, 5, {})
    assert [(c.done, c.total) for c in calls[1:]] == [(i, 5) for i in range(1, 6)]
    assert calls[4].metrics["accuracy"] == pytest.approx(3 / 4)  # item 3 is wrong
    assert calls[5].metrics["accuracy"] == pytest.approx(4 / 5)


def test_malformed_lines_are_reported_by_number_and_skipped(tmp_path, scripted_llm):
    data = write_gsm8k(tmp_path / "gsm8k.jsonl", n=3)
    good = data.read_text().splitlines()
    data.write_text("\n".join([good[0], "not json {", '["a list"]', good[1], "", '{"question": "no answer"}',
                               '{"question": "q", "answer": "no final line"}', good[2]]) + "\n")
    items, skipped = load_items("gsm8k", data)
    assert [it.line for it in items] == [1, 4, 8] and [it.index for it in items] == [0, 1, 2]
    assert [s.line for s in skipped] == [2, 3, 6, 7]
    assert "JSON object" in skipped[1].reason and "####" in skipped[3].reason
    report = evaluate(tmp_path, math_model(scripted_llm, wrong=()), data=data)
    assert report.items == 3 and report.main.value == 1.0
    assert [s.line for s in report.skipped] == [2, 3, 6, 7]
    assert "- line 6: " in (tmp_path / "run" / "report.md").read_text()
    (tmp_path / "bad.jsonl").write_text("nope\n")
    with pytest.raises(LoaderError, match="no valid gsm8k item.*line 1"):
        load_items("gsm8k", tmp_path / "bad.jsonl")


def test_math_shape_gold_from_answer_or_boxed_solution(tmp_path):
    data = tmp_path / "math.jsonl"
    data.write_text(json.dumps({"problem": "p1", "solution": "so \\boxed{\\frac{1}{2}}", "answer": "\\frac{1}{2}",
                                "unique_id": "test/a.json"}) + "\n"
                    + json.dumps({"problem": "p2", "solution": "hence \\boxed{7}."}) + "\n")
    items, skipped = load_items("math", data)
    assert [(it.id, it.gold) for it in items] == [("test/a.json", "\\frac{1}{2}"), ("line-2", "7")] and not skipped


def test_config_validation_names_the_flag(tmp_path):
    data = write_gsm8k(tmp_path / "g.jsonl")
    for kw, flag in [({"task": "trivia"}, "--task"), ({"samples": 0}, "--samples"), ({"limit": 0}, "--limit"),
                     ({"effort": "max"}, "--effort"), ({"effort": "high", "samples": 4}, "--samples"),
                     ({"resume": True}, "--resume"),
                     ({"resume": True, "force": True, "out_dir": tmp_path}, "--force")]:
        with pytest.raises(ConfigError, match=flag):
            EvalConfig(**{"task": "gsm8k", "data": data, **kw})
    with pytest.raises(ConfigError, match="--data"):
        EvalConfig(task="gsm8k", data=tmp_path / "missing.jsonl")
    assert EvalConfig(task="math", data=data).out_dir.name.startswith("eval-math-")


# -- resume ------------------------------------------------------------------------------------------------


def interrupt_after(n):
    def progress(event):
        if event.done == n:
            raise KeyboardInterrupt

    return progress


def comparable(path):
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_FIELDS}


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in records]


@pytest.mark.parametrize("partial_line", [False, True])
def test_resume_continues_without_redoing_items_and_reports_the_same(tmp_path, scripted_llm, partial_line):
    full = evaluate(tmp_path, math_model(scripted_llm), name="full")
    first = math_model(scripted_llm)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path, first, name="cut", progress=interrupt_after(3))
    preds = tmp_path / "cut" / "predictions.jsonl"
    assert len(lines(preds)) == 3 and len(first.prompts) == 3 and not (tmp_path / "cut" / "report.json").exists()
    if partial_line:  # a kill in the middle of writing item 3's line
        with open(preds, "a") as f:
            f.write('{"index": 3, "id": "line-4", "quest')

    second = math_model(scripted_llm)
    resumed = evaluate(tmp_path, second, name="cut", resume=True)
    asked = [question_of(p) for p in second.prompts]
    assert asked == [f"Item {i}: what is {i} plus {i}?" for i in range(3, 10)]  # not items 0-2 again
    assert resumed.comparable() == full.comparable()
    assert comparable(tmp_path / "cut" / "report.json") == comparable(tmp_path / "full" / "report.json")
    assert (tmp_path / "cut" / "report.md").read_text().split("| tokens/s")[0] == \
        (tmp_path / "full" / "report.md").read_text().split("| tokens/s")[0]
    assert strip_timing(lines(preds)) == strip_timing(lines(tmp_path / "full" / "predictions.jsonl"))


def test_resume_refuses_other_settings_and_a_non_empty_dir_needs_resume_or_force(tmp_path, scripted_llm):
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path, math_model(scripted_llm), name="cut", progress=interrupt_after(2))
    llm = math_model(scripted_llm)
    with pytest.raises(ConfigError, match=r"--max-tokens was 256, now 100"):
        evaluate(tmp_path, llm, name="cut", resume=True, max_tokens=100)
    with pytest.raises(ConfigError, match=r"--limit was None, now 5"):
        evaluate(tmp_path, llm, name="cut", resume=True, limit=5)
    with pytest.raises(ConfigError, match="exists and is not empty; continue that run with --resume"):
        evaluate(tmp_path, llm, name="cut")
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(data.read_text().replace("Item 9", "Item  9"))
    with pytest.raises(ConfigError, match="content changed"):
        evaluate(tmp_path, llm, name="cut", data=data, resume=True)
    assert llm.prompts == []  # refused before asking anything
    report = evaluate(tmp_path, llm, name="cut", data=data, force=True, limit=4)
    assert report.items == 4 and len(lines(tmp_path / "cut" / "predictions.jsonl")) == 4


def test_resume_of_a_run_recorded_before_a_setting_existed_takes_its_default(tmp_path, scripted_llm):
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path, math_model(scripted_llm), name="cut", progress=interrupt_after(2))
    config = tmp_path / "cut" / "config.json"
    stored = json.loads(config.read_text())
    del stored["settings"]["assistant"]["quote"]  # a run made by a dca without --quote
    config.write_text(json.dumps(stored))
    assert evaluate(tmp_path, math_model(scripted_llm), name="cut", resume=True).items == 10
    stored["settings"]["assistant"]["quote"] = True  # a recorded value other than the new one still refuses
    config.write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="--quote was True, now False"):
        evaluate(tmp_path, math_model(scripted_llm), name="cut", resume=True)


def test_a_corrupt_middle_line_is_an_error_not_silently_dropped(tmp_path, scripted_llm):
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path, math_model(scripted_llm), name="cut", progress=interrupt_after(3))
    preds = tmp_path / "cut" / "predictions.jsonl"
    rows = preds.read_text().splitlines()
    preds.write_text("\n".join([rows[0], "garbage", rows[2]]) + "\n")
    with pytest.raises(LoaderError, match="line 2 is not a prediction record"):
        evaluate(tmp_path, math_model(scripted_llm), name="cut", resume=True)


# -- qa ------------------------------------------------------------------------------------------------------

CORPUS = [
    {"id": "zorblax_000", "title": "Zorblax river", "text": "The Zorblax river flows through the city of Quenton "
                                                            "and ends in the Amber sea."},
    {"id": "bread_000", "title": "Rye bread", "text": "To bake rye bread, knead the dough for ten minutes and let "
                                                      "it rise for one hour."},
    {"id": "vellum_000", "title": "Vellum probe", "text": "The probe Vellum reached the moon Tarsis after a flight "
                                                          "of nine years."},
]
QA = [
    ("q1", "Which city does the Zorblax river flow through?", ["Quenton", "the city of Quenton"], "zorblax_000"),
    ("q2", "How long do you knead the dough for rye bread?", ["ten minutes"], "bread_000"),
    ("q3", "Which moon did the probe Vellum reach?", ["Tarsis", "the moon Tarsis"], "vellum_000"),
    ("q4", "Where does the Zorblax river end?", ["the Amber sea"], "zorblax_000"),
]
# With passages the scripted model answers from them (q4 only partly); without, it guesses.
ANSWERS = {"q1": "Quenton [1].", "q2": "Answer: You knead the dough for ten minutes.", "q3": "the moon Tarsis",
           "q4": "Amber"}


def qa_model(scripted_llm):
    by_question = {q: ANSWERS[i] for i, q, _, _ in QA}

    def respond(prompt):
        question = question_of(prompt).split("Question: ")[-1]
        return by_question[question] if "<passage" in prompt else "I do not know"

    return scripted_llm(respond)


def test_qa_closed_book_and_with_a_store_with_recall(tmp_path, scripted_llm, embedder):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": q, "answers": a[:1], "answers_all": a,
                                        "gold_paragraph_id": g}) + "\n" for i, q, a, g in QA))
    closed_llm = qa_model(scripted_llm)
    closed = evaluate(tmp_path, closed_llm, name="closed", task="qa", data=data)
    assert list(closed.metrics) == ["em", "f1", "f1_full"] and closed.main.value == 0.0 and closed.metrics["f1"].value == 0.0
    assert all(QA_CLOSED_BOOK_PROMPT in p and "<passage" not in p for p in closed_llm.prompts)

    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    store = Store.create(tmp_path / "store", embedder)
    store.ingest([tmp_path / "corpus.jsonl"])
    rag_llm = qa_model(scripted_llm)
    cfg = EvalConfig(task="qa", data=data, out_dir=tmp_path / "rag", top_k=1)
    rag = run_eval(cfg, assistant=Assistant(rag_llm, store, config=AssistantConfig(min_similarity=-1.0)))
    assert all(QA_SYSTEM_PROMPT in p and "<passage" in p for p in rag_llm.prompts)
    assert list(rag.metrics) == ["em", "f1", "f1_full", "recall@1"]
    assert rag.metrics["recall@1"].value == 1.0 and rag.metrics["recall@1"].n == 4
    assert rag.main.value == 0.75  # q1, q2 (restatement removed) and q3 match; "Amber" does not
    assert rag.metrics["f1"].value == pytest.approx((1 + 1 + 1 + 2 / 3) / 4, abs=1e-6)  # "Amber" vs "Amber sea"
    # the whole answer line of q2, "You knead the dough for ten minutes": precision 2/6, recall 1
    assert rag.metrics["f1_full"].value == pytest.approx((1 + 0.5 + 1 + 2 / 3) / 4, abs=1e-6)
    assert rag.metrics["f1"].interval == "normal" and rag.metrics["f1"].low <= rag.metrics["f1"].value
    preds = lines(tmp_path / "rag" / "predictions.jsonl")
    assert [p["retrieved"] for p in preds] == [[g] for _, _, _, g in QA]
    assert preds[0]["extracted"] == "Quenton" and preds[0]["gold"] == ["Quenton", "the city of Quenton"]
    assert preds[1]["extracted"] == "ten minutes"
    assert json.loads((tmp_path / "rag" / "config.json").read_text())["settings"]["store"] == str(tmp_path / "store")



def test_quote_mode_records_the_scored_tokens_as_the_compute_spent(tmp_path, scripted_llm, embedder):
    import numpy as np

    class Quoter(scripted_llm):
        can_score = True

        def score(self, prompt, continuations, *, cancel=None):
            self.prompts.append(prompt)
            scores = np.array([-1.5 if c == "nine years" else -9.0 for c in continuations])
            return scores, 123  # 123 tokens decoded to score the candidate spans

    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"id": "q", "question": "How long was the flight of the probe Vellum?",
                                "answers": ["nine years"], "gold_paragraph_id": "vellum_000"}) + "\n")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    store = Store.create(tmp_path / "store", embedder)
    store.ingest([tmp_path / "corpus.jsonl"])
    cfg = EvalConfig(task="qa", data=data, out_dir=tmp_path / "run", top_k=1)
    report = run_eval(cfg, assistant=Assistant(Quoter(), store, config=AssistantConfig(min_similarity=-1.0, quote=True)))
    (pred,) = lines(tmp_path / "run" / "predictions.jsonl")
    assert pred["output"] == "nine years [1]" and pred["scores"]["em"] == 1
    assert pred["tokens"]["generated"] == 123 and report.mean_generated_tokens == 123
    assert report.settings["assistant"]["quote"] is True

@pytest.mark.parametrize("output, question, expected", [
    ("The NFL team that represented the AFC at Super Bowl 50 was the Denver Broncos.",
     "Which NFL team represented the AFC at Super Bowl 50?", "Denver Broncos"),
    ("The stadium was Levi's Stadium", "What stadium did it take place in?", "Levi's"),  # gold words in the question
    ("The Broncos won Super Bowl 50 [1]. They beat the Panthers.", "Who won Super Bowl 50?", "Broncos"),
    ("<think>the passage says so</think>Answer: Denver Broncos", "Which team won?", "Denver Broncos"),
    ("Super Bowl 50", "What was Super Bowl 50?", "Super Bowl 50"),  # nothing new: the line is kept whole
    ("It was in 2016, in Santa Clara", "", "It was in 2016, in Santa Clara"),  # no question: no removal
    ("\n\n  \n", "Who?", ""),
])
def test_qa_prediction_removes_the_restated_question(output, question, expected):
    from dca.eval.tasks import qa_prediction

    assert qa_prediction(output, question) == expected


# -- k samples -----------------------------------------------------------------------------------------------


def test_maj_at_k_and_pass_at_k_from_samples_and_votes(tmp_path):
    from dca.eval.tasks import Item

    item = Item(0, "a", 1, "q", "4")
    samples = tuple(SimpleNamespace(text=f"\\boxed{{{a}}}", answer=a, tokens=3) for a in ["4", "5", "4.0", "7", "9"])
    answer = SimpleNamespace(text="so \\boxed{4}", thinking="", stats=Stats(), samples=samples,
                             votes=(SimpleNamespace(answer="4", count=2, weight=2.0),))
    scored = score_answer("gsm8k", item, answer, 5)
    assert scored["scores"] == {"accuracy": 1, "maj@5": 1, "pass@1": 0.4, "pass@5": 1.0}
    assert [s["correct"] for s in scored["samples"]] == [True, False, True, False, False] and scored["voted"] == "4"
    # no votes from the assistant: the most frequent sample answer, by equivalence
    answer = SimpleNamespace(text="\\boxed{5}", samples=samples[1:], votes=())
    assert score_answer("gsm8k", item, answer, 4)["scores"] == {"accuracy": 0, "maj@4": 0, "pass@1": 0.25, "pass@4": 1.0}
    # an answer without samples counts as one sample
    assert score_answer("gsm8k", item, SimpleNamespace(text="\\boxed{4}", samples=(), votes=()), 3)["scores"] == \
        {"accuracy": 1, "maj@3": 1, "pass@1": 1.0, "pass@3": 1.0}


def sampling_model(scripted_llm, right_per_item):
    """A scripted model whose ``sample`` gives, for item i, ``right_per_item[i]`` right answers then wrong ones."""
    from dca.llm import Completion

    class Sampler(scripted_llm):
        temperatures = []

        def sample(self, prompt, *, n, max_tokens, temperature=0.7, repeat_penalty=1.0, stop=(), seed=0, cancel=None):
            self.prompts.append(prompt)
            self.temperatures.append(temperature)
            i = int(re.search(r"Item (\d+):", question_of(prompt)).group(1))
            texts = [f"So \\boxed{{{2 * i + (j >= right_per_item[i])}}}" for j in range(n)]
            return [Completion(t, len(t.split()), -0.1 * j, "stop") for j, t in enumerate(texts)]

    return Sampler()


def test_samples_through_the_assistant_give_maj_and_pass_at_k(tmp_path, scripted_llm):
    llm = sampling_model(scripted_llm, [0, 1, 2, 3])
    report = evaluate(tmp_path, llm, samples=3, limit=4)
    assert report.samples == 3 and len(llm.prompts) == 4
    assert {n: m.value for n, m in report.metrics.items()} == \
        {"accuracy": 0.5, "maj@3": 0.5, "pass@1": pytest.approx(0.5), "pass@3": 0.75}
    assert report.metrics["pass@1"].interval == "normal" and report.metrics["pass@3"].interval == "wilson"
    preds = lines(tmp_path / "run" / "predictions.jsonl")
    assert [[s["correct"] for s in p["samples"]] for p in preds][1] == [True, False, False]
    # the candidates are kept for a verifier to judge later (dca eval rescore)
    assert [(s["text"], s["tokens"], s["mean_logprob"], s["finish"]) for s in preds[1]["samples"]] == \
        [("So \\boxed{2}", 2, 0.0, "stop"), ("So \\boxed{3}", 2, -0.1, "stop"), ("So \\boxed{3}", 2, -0.2, "stop")]
    assert [p["voted"] for p in preds] == ["1", "3", "4", "6"]
    assert all(p["tokens"]["generated"] == 6 for p in preds)  # 3 samples of 2 words
    # an effort preset sets k itself
    medium = evaluate(tmp_path, sampling_model(scripted_llm, [4, 0]), name="medium", effort="medium", limit=2)
    assert medium.samples == 4 and list(medium.metrics) == ["accuracy", "maj@4", "pass@1", "pass@4"]
    assert medium.settings["effort"] == "medium"


def test_sample_temperature_reaches_the_sampler_and_a_resume_under_another_is_refused(tmp_path, scripted_llm):
    llm = sampling_model(scripted_llm, [1, 2, 3])
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path, llm, samples=3, limit=3, sample_temperature=0.3, progress=interrupt_after(2))
    assert llm.temperatures == [0.3, 0.3]
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["settings"]["assistant"]["sample_temperature"] == 0.3
    with pytest.raises(ConfigError, match=r"--sample-temperature was 0.3, now 0.7"):
        evaluate(tmp_path, llm, samples=3, limit=3, resume=True)
    with pytest.raises(ConfigError, match=r"--sample-temperature must be > 0"):
        evaluate(tmp_path, llm, name="zero", samples=3, sample_temperature=0.0)
    report = evaluate(tmp_path, llm, samples=3, limit=3, sample_temperature=0.3, resume=True)
    assert report.items == 3 and llm.temperatures == [0.3, 0.3, 0.3]


# -- compare -------------------------------------------------------------------------------------------------


def test_compare_paired_bootstrap_significant_and_not(tmp_path, scripted_llm):
    data = write_gsm8k(tmp_path / "g.jsonl", n=40)
    weak = evaluate(tmp_path, math_model(scripted_llm, wrong=set(range(0, 40, 2))), name="weak", data=data)
    strong = evaluate(tmp_path, math_model(scripted_llm, wrong={1, 3}), name="strong", data=data)
    same = evaluate(tmp_path, math_model(scripted_llm, wrong={1, 5}), name="same", data=data)
    assert (weak.main.value, strong.main.value, same.main.value) == (0.5, 0.95, 0.95)

    c = compare_reports(tmp_path / "weak" / "report.json", tmp_path / "strong" / "report.json")
    row = c.rows[0]
    assert (row.name, row.method, c.paired_items) == ("accuracy", "paired bootstrap", 40)
    assert row.diff == pytest.approx(0.45) and row.significant and 0 < row.low < 0.45 < row.high
    c = compare_reports(tmp_path / "strong", tmp_path / "same")  # one item swapped: no difference
    assert c.rows[0].diff == 0.0 and not c.rows[0].significant and c.rows[0].low < 0 < c.rows[0].high
    assert {r.name for r in c.rows} >= {"mean_answer_tokens", "wall_s"}
    assert not any("settings" in n for n in c.notes)  # the same harness

    report = json.loads((tmp_path / "same" / "report.json").read_text())
    report["settings"]["assistant"]["repeat_penalty"] = 1.3
    report["settings"]["model"] = "/some/where/student.Q4_K_M.gguf"
    del report["settings"]["assistant"]["quote"]  # a run made before the setting existed
    (tmp_path / "same" / "report.json").write_text(json.dumps(report))
    note = next(n for n in compare_reports(tmp_path / "strong", tmp_path / "same").notes if "settings" in n)
    assert note.startswith("settings that differ: assistant.quote (only in A: False), assistant.repeat_penalty (")
    assert "vs 1.3)" in note and "student.Q4_K_M.gguf')" in note and "data" not in note

    # a partial run (the first 10 items, as while B is still running): both sides over the items paired
    part = evaluate(tmp_path, math_model(scripted_llm, wrong=set(range(0, 10, 2))), name="part", data=data, limit=10)
    c = compare_reports(tmp_path / "strong", tmp_path / "part")
    assert part.main.value == 0.5 and c.paired_items == 10 and "paired over the 10 items both runs scored" in c.notes
    assert (c.rows[0].a, c.rows[0].b) == (0.8, 0.5)  # strong is wrong on items 1 and 3 of the first 10, 0.95 on 40
    assert c.rows[0].diff == pytest.approx(c.rows[0].b - c.rows[0].a) and c.rows[0].significant is False

    # a run still going or interrupted (no report.json yet): compared over the items it has finished
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path, math_model(scripted_llm, wrong={0}), name="going", data=data, progress=interrupt_after(6))
    assert not (tmp_path / "going" / "report.json").exists()
    c = compare_reports(tmp_path / "strong", tmp_path / "going")
    assert c.paired_items == 6 and (c.rows[0].a, c.rows[0].b) == (pytest.approx(4 / 6), pytest.approx(5 / 6))
    assert any("is unfinished (no report.json): its 6 finished items" in n for n in c.notes)
    with pytest.raises(LoaderError, match="no finished item yet"):
        (tmp_path / "going" / "predictions.jsonl").write_text("")
        compare_reports(tmp_path / "strong", tmp_path / "going")

    (tmp_path / "weak" / "predictions.jsonl").unlink()  # unpaired fallback
    c = compare_reports(tmp_path / "weak" / "report.json", tmp_path / "strong" / "report.json")
    assert c.rows[0].method == "newcombe" and c.rows[0].significant and c.paired_items == 0
    assert c.rows[0].low == pytest.approx(newcombe_interval(20, 40, 38, 40)[0])
    assert any("unpaired" in n for n in c.notes)


# -- command line --------------------------------------------------------------------------------------------


def test_cli_eval_help_lists_the_options():
    result = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for word in ["--task", "--data", "--limit", "--model", "--store-dir", "--effort", "--samples", "--out-dir",
                 "--resume", "--force", "compare", "gsm8k | math | qa"]:
        assert word in result.output, word
    assert "eval" in runner.invoke(app, ["--help"]).output


def test_cli_eval_runs_prints_skipped_lines_and_refuses_a_used_dir(tmp_path, scripted_llm, monkeypatch):
    import dca.assistant

    real = dca.assistant.Assistant
    monkeypatch.setattr(dca.assistant, "Assistant",
                        lambda model=None, store=None, config=None, chat_template=None: real(math_model(scripted_llm), store, config=config))
    data = write_gsm8k(tmp_path / "g.jsonl", n=5)
    data.write_text(data.read_text() + "oops\n")
    args = ["eval", "--task", "gsm8k", "--data", str(data), "-o", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "line 6" in result.output and "accuracy" in result.output and "80.0%" in result.output
    assert {p.name for p in (tmp_path / "run").iterdir()} == FILES
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--resume" in result.output
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0 and "80.0%" in result.output
    result = runner.invoke(app, ["eval", "--task", "gsm8k"])
    assert result.exit_code == 2 and "--data are required" in result.output


def test_cli_eval_interrupted_says_how_to_resume(tmp_path, scripted_llm, monkeypatch):
    import dca.assistant

    def respond(prompt):
        if "Item 2:" in prompt:
            raise KeyboardInterrupt  # Ctrl-C during the third item
        return "\\boxed{0}"

    real = dca.assistant.Assistant
    monkeypatch.setattr(dca.assistant, "Assistant",
                        lambda model=None, store=None, config=None, chat_template=None: real(scripted_llm(respond), store, config=config))
    out_dir = tmp_path / "run"
    result = runner.invoke(app, ["eval", "--task", "gsm8k", "--data", str(write_gsm8k(tmp_path / "g.jsonl")),
                                 "-o", str(out_dir)])
    assert result.exit_code == 130 and f"--resume -o {out_dir}" in result.output.replace("\n", "")
    assert len(lines(out_dir / "predictions.jsonl")) == 2


def test_cli_eval_compare_prints_the_difference(tmp_path, scripted_llm):
    data = write_gsm8k(tmp_path / "g.jsonl", n=20)
    evaluate(tmp_path, math_model(scripted_llm, wrong=set(range(10))), name="a", data=data)
    evaluate(tmp_path, math_model(scripted_llm, wrong=()), name="b", data=data)
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "a" / "report.json"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "accuracy" in line)
    assert "50.0%" in row and "100.0%" in row and "+50.0%" in row and "yes" in row and "paired bootstrap" in row
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "not a dca eval report" in result.output
    # one metric of A against another of B, as JSON
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--pair",
                                 "accuracy:accuracy", "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)["rows"]}
    assert (rows["accuracy vs accuracy"]["a"], rows["accuracy vs accuracy"]["b"]) == (0.5, 1.0)
    for bad, says in [("accuracy", "expected A_METRIC:B_METRIC"), ("accuracy:maj@8", "run B has no metric 'maj@8'")]:
        result = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--pair", bad])
        assert result.exit_code in (1, 2) and says in " ".join(result.output.split()), result.output
    # a greedy run has no candidates for a verifier to rescore
    result = runner.invoke(app, ["eval", "rescore", str(tmp_path / "a"), "--verifier", "v.gguf", "-o",
                                 str(tmp_path / "r")])
    assert result.exit_code == 1 and "item 0 keeps no candidates" in " ".join(result.output.split())


# -- the bundled model ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_gsm8k_items_with_the_bundled_gguf(tmp_path):
    from dca.llm import LlamaCppLLM

    source = SHARED_DATA / "gsm8k_test.jsonl"
    if not source.exists():
        pytest.skip(f"{source} is not there")
    llm = LlamaCppLLM(bundled_gguf(), n_ctx=2048)
    try:
        report = evaluate(tmp_path, llm, data=source, limit=3)
    finally:
        llm.close()
    preds = lines(tmp_path / "run" / "predictions.jsonl")
    assert report.items == 3 and len(preds) == 3 and 0.0 <= report.main.value <= 1.0
    assert [p["gold"] for p in preds] == ["18", "3", "70000"]
    assert all(p["tokens"]["answer"] > 0 and p["output"] for p in preds) and report.tokens_per_s > 0
