"""``dca distill star``: verified samples and rationalizations become the next training data; kill-safe stages."""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")

from conftest import ScriptedLLM
from test_distill_train import tiny, tiny_gguf  # noqa: F401  (the tiny Llama fixtures, shared)

from dca.errors import ConfigError
from dca.llm.base import Completion
from dca.star import StarConfig, hint_prompt, run_star

QUESTIONS = [("What is 6 x 7?", "42"), ("What is 5 + 5?", "10"), ("What is 9 - 3?", "6")]
# What the student writes, by the question it is asked (the hint changes the question).
SCRIPT = {
    "What is 6 x 7?": ["6*7 = 42\n\\boxed{42}", " 6*7 =  42\n\\boxed{42}", "7*6 = 42\n\\boxed{42}",
                       "6*7 = 41\n\\boxed{41}"],
    "What is 5 + 5?": ["5+5 = 11\n\\boxed{11}"],
    hint_prompt("What is 5 + 5?", "10"): ["The hint says 10.\n\\boxed{10}", "5+5 = 10\n\\boxed{10}"],
    "What is 9 - 3?": ["9-3 = 7\n\\boxed{7}"],
    hint_prompt("What is 9 - 3?", "6"): ["9-3 = 5\n\\boxed{5}"],
}


class Student(ScriptedLLM):
    """Samples the scripted solutions of the question in the prompt (cycled to n)."""

    def __init__(self, fail_after: int | None = None):
        super().__init__("x")
        self.fail_after = fail_after

    def sample(self, prompt, *, n, max_tokens, temperature=0.7, repeat_penalty=1.0, stop=(), seed=0, cancel=None):
        self.prompts.append(prompt)
        if self.fail_after is not None and len(self.prompts) > self.fail_after:
            raise KeyboardInterrupt  # a kill in the middle of the sampling
        question = max((q for q in SCRIPT if q in prompt), key=len)
        outs = SCRIPT[question]
        return [Completion(outs[i % len(outs)], 5, -1.0, "stop") for i in range(n)]


@pytest.fixture
def questions(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": f"work\n#### {a}"}) + "\n"
                         for i, (q, a) in enumerate(QUESTIONS)))
    return p


def star_config(tiny, tiny_gguf, questions, out, **kw):  # noqa: F811
    """Sampling scripted (sampler_for), training from the tiny HF model, each iteration exported as F16 (the type of
    the starting tiny GGUF, as --qtype must be)."""
    train = {"max_steps": 2, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "seq_len": 256, "batch_size": 2,
             "eval_fraction": 0.0, "save_every": 1, "lr": 1e-2}
    settings = {"base": str(tiny), "model": str(tiny_gguf), "samples": 4, "keep": 2, "qtype": "F16", "system_prompt": "Answer in \\boxed{}.",
                "train": train, **kw}
    return StarConfig(questions=questions, out_dir=out, **settings)


def test_an_iteration_trains_on_verified_samples_and_rationales_never_on_the_hint(tiny, tiny_gguf, questions,  # noqa: F811
                                                                                  tmp_path):
    from transformers import AutoTokenizer

    from dca.distill.data import encode_example, load_examples

    out = tmp_path / "star"
    student = Student()
    report = run_star(star_config(tiny, tiny_gguf, questions, out), sampler_for=lambda path: student)
    it = report.iterations[-1]
    assert (it.questions, it.samples, it.correct, it.solved) == (3, 12, 3, 1)
    assert (it.rationalized, it.rationales_kept, it.kept) == (2, 1, 3)
    d = out / "iter-1"
    sft = [json.loads(x) for x in (d / "sft.jsonl").read_text().splitlines()]
    # q0: two distinct right samples (the second differs only by whitespace from the first, and the wrong one is
    # out); q1: the rationale that does not mention the hint; q2: nothing verified
    assert [(t["id"], t["answer"], t["meta"]["source"]) for t in sft] == [
        ("q0", "6*7 = 42\n\\boxed{42}", "sample"), ("q0", "7*6 = 42\n\\boxed{42}", "sample"),
        ("q1", "5+5 = 10\n\\boxed{10}", "rationalization")]
    assert [t["question"] for t in sft] == ["What is 6 x 7?", "What is 6 x 7?", "What is 5 + 5?"]
    rationales = [json.loads(x) for x in (d / "rationales.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rationales] == ["q1", "q2"]
    assert [s["mentions_hint"] for s in rationales[0]["samples"]] == [True, False]
    assert sum("Hint: the answer is" in p for p in student.prompts) == 2  # the hint was asked, twice
    # what the model is trained on: the rendered training text holds no hint
    tok = AutoTokenizer.from_pretrained(tiny)
    examples = load_examples([d / "sft.jsonl"], [], system="sys")
    texts = [tok.decode(e.input_ids) for ex in examples for e in encode_example(tok, ex, 256)]
    assert len(texts) == 3 and all("Hint" not in t and "hint" not in t for t in texts)
    assert "5+5 = 10" in texts[2] and "What is 5 + 5?" in texts[2]
    # trained and exported like any run
    assert (d / "train" / "adapter" / "adapter_config.json").exists() and (d / "model.F16.gguf").stat().st_size > 0
    assert "2 steps" in it.train
    saved = json.loads((d / "report.json").read_text())
    assert saved["kept"] == 3 and saved["pass_at_k"] == pytest.approx(1 / 3) and saved["trained_from"] == str(tiny)
    assert json.loads((out / "star.json").read_text())["iterations"][0]["kept"] == 3


def _files(out) -> dict[str, str]:
    names = ["samples.jsonl", "rationales.jsonl", "sft.jsonl", "model.F16.gguf", "train/adapter/adapter_model.safetensors"]
    return {n: hashlib.sha256((out / "iter-1" / n).read_bytes()).hexdigest() for n in names}


class Interrupt:
    """A progress callback that raises KeyboardInterrupt at the first event of ``job`` with ``done >= done``."""

    def __init__(self, job: str, done: int = 0):
        self.job, self.done, self.fired = job, done, False

    def __call__(self, event):
        if not self.fired and event.job == self.job and (event.done or 0) >= self.done:
            self.fired = True
            raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["sample", "rationalize", "train-start", "train-mid", "export"])
def test_killed_at_each_stage_the_same_command_gives_the_same_files(tiny, tiny_gguf, questions, tmp_path, where):  # noqa: F811
    whole = tmp_path / "whole"
    run_star(star_config(tiny, tiny_gguf, questions, whole), sampler_for=lambda path: Student())
    expected = _files(whole)

    out = tmp_path / "killed"
    if where in ("sample", "rationalize"):
        fail_after = 1 if where == "sample" else 4  # 3 questions sampled, then the first rationalization
        with pytest.raises(KeyboardInterrupt):
            run_star(star_config(tiny, tiny_gguf, questions, out), sampler_for=lambda path: Student(fail_after))
    else:
        job, done = {"train-start": ("train", 0), "train-mid": ("train", 1), "export": ("export", 0)}[where]
        stop = Interrupt(job, done)
        try:
            run_star(star_config(tiny, tiny_gguf, questions, out), sampler_for=lambda path: Student(), progress=stop)
        except KeyboardInterrupt:
            pass
        assert stop.fired
    assert not (out / "iter-1" / "report.json").exists()
    student = Student()
    report = run_star(star_config(tiny, tiny_gguf, questions, out), sampler_for=lambda path: student)
    assert _files(out) == expected
    assert report.iterations[-1].kept == 3
    if where not in ("sample", "rationalize"):
        assert student.prompts == []  # the samples and rationales on disk were not drawn again


def test_a_rerun_under_other_settings_is_refused_but_more_iterations_continue(tiny, tiny_gguf, questions, tmp_path):  # noqa: F811
    out = tmp_path / "star"
    run_star(star_config(tiny, tiny_gguf, questions, out), sampler_for=lambda path: Student())
    with pytest.raises(ConfigError, match="other settings.*samples"):
        run_star(star_config(tiny, tiny_gguf, questions, out, samples=2), sampler_for=lambda path: Student())
    seen = []
    report = run_star(star_config(tiny, tiny_gguf, questions, out, iterations=2),
                      sampler_for=lambda path: seen.append(path) or Student())
    assert [it.iteration for it in report.iterations] == [1, 2]
    assert seen == [str(out / "iter-1" / "model.F16.gguf")]  # iteration 1 was done; 2 samples 1's model
    assert json.loads((out / "iter-2" / "report.json").read_text())["trained_from"] == str(tiny)  # from the base


def test_bad_settings_are_refused_with_the_flag(tiny, tiny_gguf, questions, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="--keep"):
        star_config(tiny, tiny_gguf, questions, tmp_path / "s", keep=0)
    with pytest.raises(ConfigError, match="set by the loop"):
        StarConfig(questions=questions, out_dir=tmp_path / "s", train={"data": ["x"]})
    with pytest.raises(ConfigError, match="--eval-data"):
        StarConfig(questions=questions, out_dir=tmp_path / "s", eval_data=tmp_path / "missing.jsonl")


def test_each_iteration_is_evaluated_against_the_one_before(tiny, tiny_gguf, questions, tmp_path):  # noqa: F811
    pytest.importorskip("llama_cpp")
    out = tmp_path / "star"
    report = run_star(star_config(tiny, tiny_gguf, questions, out, eval_data=questions, eval_limit=2,
                                  max_tokens=8), sampler_for=lambda path: Student())
    zero, one = report.iterations
    assert (zero.iteration, one.iteration) == (0, 1)
    for d in ("iter-0/eval", "iter-1/eval"):  # the starting model, then iteration 1's, on the same questions
        rep = json.loads((out / d / "report.json").read_text())
        assert rep["items"] == 2 and rep["metrics"]["accuracy"]["n"] == 2
        assert len((out / d / "predictions.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "iter-1" / "eval" / "config.json").read_text())["settings"]["model"].endswith(
        "iter-1/model.F16.gguf")
    assert one.accuracy is not None and one.diff == pytest.approx(one.accuracy - zero.accuracy)
    assert one.low <= one.diff <= one.high
    assert one.verdict == ("no measurable difference" if one.low <= 0 <= one.high else
                           "better" if one.diff > 0 else "worse")
    table = json.loads((out / "star.json").read_text())["iterations"]
    assert [r["iteration"] for r in table] == [0, 1] and table[1]["verdict"] == one.verdict
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_the_command_samples_the_gguf_and_says_when_nothing_was_verified(tiny, tiny_gguf, questions,  # noqa: F811
                                                                         tmp_path):
    pytest.importorskip("llama_cpp")
    from typer.testing import CliRunner

    from dca.cli import app

    out = tmp_path / "star"
    args = ["distill", "star", str(questions), "-o", str(out), "-m", str(tiny_gguf), "--base", str(tiny),
            "--samples", "2", "--hint-samples", "1", "--max-tokens", "8", "--qtype", "F16", "--max-steps", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "nothing to train on" in " ".join(result.output.split())
    rows = [json.loads(x) for x in (out / "iter-1" / "samples.jsonl").read_text().splitlines()]
    assert [len(r["samples"]) for r in rows] == [2, 2, 2]  # a random model's samples, all checked and wrong
    assert not any(s["correct"] for r in rows for s in r["samples"])
    assert len((out / "iter-1" / "rationales.jsonl").read_text().splitlines()) == 3
    refused = CliRunner().invoke(app, [*args[:-2], "--keep", "0"])
    assert refused.exit_code != 0 and "--keep" in refused.output


def test_iterations_are_quantized_as_the_starting_model(tiny, tiny_gguf, questions, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="--qtype Q8_0 differs from the type of -m/--model \\(F16\\)"):
        run_star(star_config(tiny, tiny_gguf, questions, tmp_path / "s", qtype="Q8_0"), sampler_for=lambda p: Student())
    assert not (tmp_path / "s").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="lora"):  # a training setting is checked before hours of sampling
        run_star(star_config(tiny, tiny_gguf, questions, tmp_path / "s", train={"lora_r": 0}),
                 sampler_for=lambda p: Student())
    assert not (tmp_path / "s").exists()


def test_samples_of_a_changed_model_are_drawn_again(tiny, tiny_gguf, questions, tmp_path):  # noqa: F811
    import shutil

    start = tmp_path / "start.F16.gguf"
    shutil.copy(tiny_gguf, start)
    out = tmp_path / "star"
    run_star(star_config(tiny, tiny_gguf, questions, out, model=str(start)), sampler_for=lambda p: Student())
    student = Student()
    run_star(star_config(tiny, tiny_gguf, questions, out, model=str(start)), sampler_for=lambda p: student)
    assert student.prompts == []  # same model: nothing drawn again
    start.write_bytes(start.read_bytes()[:-1] + b"\x00" if start.read_bytes()[-1:] != b"\x00" else
                      start.read_bytes()[:-1] + b"\x01")  # the model iteration 1 samples from changed
    run_star(star_config(tiny, tiny_gguf, questions, out, model=str(start)), sampler_for=lambda p: student)
    assert len(student.prompts) == 3 + 2  # the 3 questions sampled again, then the 2 rationalizations
