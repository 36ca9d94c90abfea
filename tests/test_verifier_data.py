"""``dca distill verifier``: a student's samples labelled by the checker, outcome and step examples, resume."""

from __future__ import annotations

import json

import pytest

from dca.distill.verifier import VerifierDataConfig, make_verifier_data
from dca.errors import ConfigError

QUESTIONS = [("What is 6 x 7?", "42"), ("What is 5 + 5?", "10"), ("What is 9 - 3?", "6")]


@pytest.fixture
def questions(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": f"work\n#### {a}"}) + "\n"
                         for i, (q, a) in enumerate(QUESTIONS)))
    return p


def _student(scripted_llm):
    """Two samples a question: one right for the first question only ('\\boxed{42}'), one wrong."""
    return scripted_llm("x", sampled=[("6*7 = 42\n\\boxed{42}", -0.5), ("6*7 = 41\n\\boxed{41}", -0.7)])


def _rows(out):
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_samples_are_labelled_by_the_checker_and_become_yes_no_examples(tmp_path, questions, scripted_llm):
    out = tmp_path / "vd"
    student = _student(scripted_llm)
    report = make_verifier_data(VerifierDataConfig(questions, out, samples=2), llm=student)
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert [[s["correct"] for s in r["samples"]] for r in rows] == [[True, False], [False, False], [False, False]]
    assert (report.questions, report.samples, report.correct, report.solved) == (3, 6, 1, 1)
    assert report.pass_at_k == pytest.approx(1 / 3)
    orm = [json.loads(x) for x in (out / "orm.jsonl").read_text().splitlines()]
    assert len(orm) == 6 == report.orm_examples
    first = orm[0]["messages"]
    assert "What is 6 x 7?" in first[0]["content"] and "\\boxed{42}" in first[0]["content"]
    assert [o["messages"][-1]["content"] for o in orm] == ["Yes", "No", "No", "No", "No", "No"]
    assert [o["label"] for o in orm] == [1, 0, 0, 0, 0, 0]
    assert student.sample_calls[0]["n"] == 2
    assert "grade-school math" in student.prompts[0]  # sampled under the student's GSM8K system prompt
    assert json.loads((out / "report.json").read_text())["pass_at_k"] == pytest.approx(1 / 3)


def test_an_interrupted_run_resumes_without_duplicate_samples(tmp_path, questions, scripted_llm):
    out = tmp_path / "vd"
    calls = {"n": 0}

    def stop_after_one():
        return calls["n"] >= 1

    student = _student(scripted_llm)
    original = student.sample

    def counting(*a, **k):
        calls["n"] += 1
        return original(*a, **k)

    student.sample = counting
    cfg = VerifierDataConfig(questions, out, samples=2)
    make_verifier_data(cfg, llm=student, cancel=stop_after_one)
    assert [r["id"] for r in _rows(out)] == ["q0"]
    with open(out / "samples.jsonl", "a") as f:  # what kill -9 leaves: half a line
        f.write('{"id": "q1", "question": "What is 5')
    again = _student(scripted_llm)
    report = make_verifier_data(cfg, llm=again)
    assert [r["id"] for r in _rows(out)] == ["q0", "q1", "q2"]  # each question once
    assert len(again.sample_calls) == 2 and report.skipped == 1
    # done: the same command again samples nothing
    third = _student(scripted_llm)
    make_verifier_data(cfg, llm=third)
    assert third.sample_calls == [] and len(_rows(out)) == 3


def test_other_settings_are_refused_and_force_starts_over(tmp_path, questions, scripted_llm):
    out = tmp_path / "vd"
    make_verifier_data(VerifierDataConfig(questions, out, samples=2, limit=1), llm=_student(scripted_llm))
    with pytest.raises(ConfigError, match="other settings.*samples"):
        make_verifier_data(VerifierDataConfig(questions, out, samples=4, limit=1), llm=_student(scripted_llm))
    make_verifier_data(VerifierDataConfig(questions, out, samples=4, limit=1, force=True), llm=_student(scripted_llm))
    assert len(_rows(out)[0]["samples"]) == 4


def test_steps_are_labelled_by_rollouts_up_to_the_first_bad_one(tmp_path, questions, scripted_llm):
    wrong = "6*7 = 42\n42 - 1 = 41\nso\n\\boxed{41}"

    class Student(scripted_llm):
        def sample(self, prompt, *, n, max_tokens, temperature=0.7, repeat_penalty=1.0, stop=(), seed=0,
                   cancel=None):
            from dca.llm import Completion

            self.sample_calls.append({"n": n, "prompt": prompt})
            if prompt.endswith("<|assistant|>\n"):  # the question itself: one right, one wrong sample
                return [Completion("6*7 = 42\n\\boxed{42}", 5, -0.5, "stop"), Completion(wrong, 9, -0.6, "stop")][:n]
            # a rollout: it reaches 42 only from a prefix without the slip
            text = "\\boxed{41}" if "42 - 1" in prompt else "\\boxed{42}"
            return [Completion(text, 3, -0.1, "stop")] * n

    student = Student("x")
    out = tmp_path / "vd"
    report = make_verifier_data(VerifierDataConfig(questions, out, samples=2, limit=1, process=True, rollouts=3),
                                llm=student)
    right, bad = _rows(out)[0]["samples"]
    assert right["steps"] == [1, 1]  # a right sample's steps are good without rollouts
    assert bad["steps"] == [1, 0, 0, 0]  # the slip is the first bad step; after it all are bad
    rollout_calls = [c for c in student.sample_calls if not c["prompt"].endswith("<|assistant|>\n")]
    assert [c["n"] for c in rollout_calls] == [3, 3] and report.rollouts == 6
    prm = [json.loads(x) for x in (out / "prm.jsonl").read_text().splitlines()]
    assert [p["label"] for p in prm] == [1, 1, 0, 0, 0]  # the shared first step '6*7 = 42' once
    assert "steps so far" in prm[0]["messages"][0]["content"]


def test_questions_without_gold_are_refused(tmp_path, scripted_llm):
    from dca.errors import LoaderError

    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"question": "Why?"}) + "\n")
    with pytest.raises(LoaderError, match="no question with a gold answer"):
        make_verifier_data(VerifierDataConfig(p, tmp_path / "vd"), llm=_student(scripted_llm))


def test_max_wrong_caps_the_no_examples_without_sampling_again(tmp_path, questions, scripted_llm):
    out = tmp_path / "vd"
    wrongs = [(f"6*7 = {x}\n\\boxed{{{x}}}", -0.5) for x in (40, 41, 43, 44)]
    student = scripted_llm("x", sampled=[("6*7 = 42\n\\boxed{42}", -0.4), *wrongs])
    make_verifier_data(VerifierDataConfig(questions, out, samples=5, limit=1), llm=student)
    assert len((out / "orm.jsonl").read_text().splitlines()) == 5
    again = scripted_llm("x", sampled=[("unused", -1.0)])
    report = make_verifier_data(VerifierDataConfig(questions, out, samples=5, limit=1, max_wrong=2), llm=again)
    labels = [json.loads(x)["label"] for x in (out / "orm.jsonl").read_text().splitlines()]
    assert labels == [1, 0, 0] and report.orm_examples == 3 and again.sample_calls == []
