"""``dca distill rl``: GRPO through TRL on a tiny in-process model; rewards are the answer checker's verdicts."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

from test_distill_train import tiny, trace  # noqa: F401  (the tiny Llama fixture, shared)

from dca.distill.rl import RLConfig, correctness_rewards, format_rewards, run_rl
from dca.errors import ConfigError

SYSTEM = "Answer in \\boxed{}."


@pytest.fixture(scope="module")
def boxing(tiny, tmp_path_factory):  # noqa: F811
    """The tiny Llama fully fine-tuned to answer 'So the answer is \\boxed{72}.' or '...{73}.' to every question: its
    samples then split between the two, so a GRPO group holds right and wrong completions."""
    from dataclasses import replace

    from dca.distill.train import TrainConfig, train

    d = tmp_path_factory.mktemp("boxing")
    data = d / "traces.jsonl"
    rows = [replace(trace(i, thinking=""), answer=f"So the answer is \\boxed{{{72 + i % 2}}}.") for i in range(12)]
    data.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in rows))
    train(TrainConfig(data=[data], out_dir=d / "run", model=str(tiny), method="full", max_steps=80, lr=1e-2,
                      seq_len=128, batch_size=4, grad_accum=1, eval_fraction=0.0, system_prompt=SYSTEM,
                      gradient_checkpointing=False))
    return d / "run" / "model"


@pytest.fixture
def questions(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "question": trace(i).question, "gold": "72"}) + "\n"
                         for i in range(4)))
    return p


def rl_config(model, questions, out, **kw):
    settings = {"model": str(model), "method": "full", "samples": 4, "questions_per_step": 2, "max_tokens": 40,
                "max_steps": 2, "save_every": 1, "lr": 1e-3, "temperature": 0.5, "system_prompt": SYSTEM, **kw}
    return RLConfig(questions=questions, out_dir=out, **settings)


def test_the_rewards_are_the_checkers_verdicts():
    texts = ["48 + 24 = 72. So the answer is \\boxed{72}.", "So \\boxed{73}.", "It is 72.", ""]
    assert correctness_rewards(texts, ["72"] * 4) == [1.0, 0.0, 1.0, 0.0]  # the checker reads a bare last number too
    assert format_rewards(texts) == [1.0, 1.0, 0.0, 0.0]
    convo = [[{"role": "assistant", "content": t}] for t in texts]  # TRL's conversational completions
    assert correctness_rewards(convo, ["72"] * 4) == [1.0, 0.0, 1.0, 0.0]


def test_a_few_grpo_steps_change_the_weights_and_log_the_checkers_rewards(boxing, questions, tmp_path,
                                                                          monkeypatch):
    import dca.distill.rl as rl
    from dca.grading import extract_answer, is_equivalent
    from dca.quant import ExportConfig, export

    seen = []
    real = rl.correctness_rewards

    def recording(completions, gold):
        out = real(completions, gold)
        seen.append([(rl._text(c), g, r) for c, g, r in zip(completions, gold, out)])
        return out

    monkeypatch.setattr(rl, "correctness_rewards", recording)
    out = tmp_path / "rl"
    result = run_rl(rl_config(boxing, questions, out))
    assert result.steps == 2 and (out / "model" / "config.json").exists()
    # every reward is the checker's verdict on that completion against its question's gold
    assert len(seen) == 2 and all(len(step) == 8 for step in seen)  # 2 questions x 4 samples a step
    for step in seen:
        for text, gold, reward in step:
            answer = extract_answer(text)
            assert reward == float(answer is not None and is_equivalent(answer, gold))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row, step in zip(rows, seen):
        assert row["accuracy"] == pytest.approx(sum(r for _, _, r in step) / len(step), abs=1e-6)
        assert {"reward", "kl", "completion_length", "format", "tokens_per_s", "steps_per_s"} <= set(row)
    assert any(0 < sum(r for _, _, r in step[i:i + 4]) < 4 for step in seen for i in (0, 4)), \
        "no group had both right and wrong completions: nothing to learn from"
    # the policy moved
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(boxing).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert max((after[k].float() - before[k].float()).abs().max().item() for k in before) > 1e-5
    assert (out / "rewards.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["step"] == 2
    # it exports like a training run
    gguf = export(ExportConfig(source=out, qtype="F32", out=tmp_path / "rl.F32.gguf")).path
    assert gguf.stat().st_size > 0


def test_an_interrupted_run_resumes_from_its_checkpoint(boxing, questions, tmp_path):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:  # after checkpoint-1, before step 2 is logged or saved
                raise KeyboardInterrupt

    out = tmp_path / "rl"
    with pytest.raises(KeyboardInterrupt):
        run_rl(rl_config(boxing, questions, out, method="lora", lora_r=4, lr=1e-2), callbacks=[Kill()])
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    result = run_rl(rl_config(boxing, questions, out, method="lora", lora_r=4, lr=1e-2))
    assert result.steps == 2
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "adapter" / "adapter_config.json").exists()
    with pytest.raises(ConfigError, match="other settings.*lr"):
        run_rl(rl_config(boxing, questions, out, method="lora", lora_r=4, lr=1e-4))


def test_bad_settings_name_the_flag(questions, tmp_path):
    with pytest.raises(ConfigError, match="--samples"):
        RLConfig(questions=questions, out_dir=tmp_path / "x", samples=1)
    with pytest.raises(ConfigError, match="--method"):
        RLConfig(questions=questions, out_dir=tmp_path / "x", method="dpo")
