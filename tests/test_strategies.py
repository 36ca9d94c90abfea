"""Test-time strategies: a new one is a class plus one registration, and runs through Assistant and dca eval."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dca.assistant import Assistant, AssistantConfig, Outcome, StreamChunk, register_strategy
from dca.assistant.strategies import STRATEGIES, choose_strategy, unregister_strategy
from dca.errors import ConfigError


class Shout:
    """A trivial strategy: the greedy answer in capitals, decoded once without thinking."""

    def run(self, gen):
        said = []
        for chunk in gen.stream(gen.prompt, kind="answer", max_tokens=gen.config.max_tokens, stop=(), sink=said):
            yield StreamChunk("answer", text=chunk.text.upper())
        return Outcome(text="".join(said).upper(), generated_tokens=len(said))


@pytest.fixture
def shout():
    register_strategy("shout")(Shout)
    yield "shout"
    unregister_strategy("shout")


def test_a_registered_strategy_runs_through_the_assistant(shout, scripted_llm):
    llm = scripted_llm("the answer is 42")
    answer = Assistant(llm, None, strategy=shout).ask("What is six times seven?")
    assert answer.text == "THE ANSWER IS 42" and answer.strategy == "shout"
    assert answer.stats.generated_tokens == 4 and answer.stats.answer_tokens == 4
    chunks = list(Assistant(llm, None, strategy=shout).stream("q"))
    assert [c.text for c in chunks if c.kind == "answer"] == ["THE ", "ANSWER ", "IS ", "42"]


def test_a_registered_strategy_runs_through_dca_eval(shout, scripted_llm, tmp_path, monkeypatch):
    from dca.cli import app

    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}) + "\n")
    monkeypatch.setattr("dca.assistant.core.load_llm", lambda model, **kw: scripted_llm("so \\boxed{4} it is"))
    result = CliRunner().invoke(app, ["eval", "--task", "gsm8k", "--data", str(data), "--strategy", shout,
                                      "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    (pred,) = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert pred["output"] == "SO \\BOXED{4} IT IS" and pred["correct"]  # graded on the strategy's answer
    assert json.loads((tmp_path / "run" / "config.json").read_text())["settings"]["assistant"]["strategy"] == shout


def test_unknown_or_duplicate_strategies_are_refused(shout):
    with pytest.raises(ConfigError, match="--strategy must be auto or a registered strategy .*shout"):
        AssistantConfig(strategy="nope")
    with pytest.raises(ValueError, match="taken"):
        register_strategy("greedy")(Shout)
    with pytest.raises(ValueError, match="reserved"):
        register_strategy("auto")(Shout)
    assert {"greedy", "budget_forcing", "self_consistency", "quote", "shout"} <= set(STRATEGIES)


@pytest.mark.parametrize("settings,thinking,expected", [
    ({}, False, "greedy"),
    ({"samples": 4}, False, "self_consistency"),
    ({"quote": True}, False, "quote"),
    ({"min_thinking_tokens": 64}, True, "budget_forcing"),
    ({"min_thinking_tokens": 64}, False, "greedy"),  # no thinking phase: nothing to force
    ({"samples": 4, "strategy": "greedy"}, False, "greedy"),  # named: auto does not choose
])
def test_auto_picks_the_strategy_from_the_other_settings(settings, thinking, expected):
    assert choose_strategy(AssistantConfig(**settings), thinking) == expected


def test_a_model_without_a_capability_gets_a_clear_error(scripted_llm, tmp_path, embedder):
    from dca.rag import Store

    class Plain(scripted_llm):
        can_sample = False

    (tmp_path / "d.txt").write_text("The probe Vellum reached the moon Tarsis after nine years.")
    store = Store.create(tmp_path / "store", embedder)
    store.ingest([tmp_path / "d.txt"])
    with pytest.raises(ConfigError, match="--samples 4 needs a model that samples in parallel"):
        Assistant(Plain(), None, samples=4).ask("q")
    with pytest.raises(ConfigError, match="--quote needs a model that can score spans"):
        Assistant(Plain(), store, quote=True, min_similarity=-1.0).ask("Which moon did the probe Vellum reach?")


def test_a_model_object_missing_a_protocol_method_is_refused_by_name():
    class Duck:  # the protocol by shape, without reset and close
        name, context_length, think_tags = "duck", 4096, None

        def render(self, messages):
            return ""

        def count_tokens(self, text):
            return 0

        def generate(self, prompt, **kwargs):
            yield "quack"

    with pytest.raises(ConfigError, match="Duck is not a dca.llm.LLM: it has no reset, close"):
        Assistant(Duck(), None)
