"""The calculator tool (dca.tools) and decoding with tools: generate_with_tools over a scripted model, the
assistant's strategies, eval's records, and the parallel sampler on the bundled GGUF."""

from __future__ import annotations

import json
import re

import pytest

from dca.assistant import Assistant
from dca.errors import ConfigError
from dca.llm.tools import generate_with_tools
from dca.tools import Calculator, ToolCall, ToolRunner, evaluate_arithmetic, get_tools, strip_notes


@pytest.mark.parametrize("expr,value", [("48/2", "24"), ("12/60", "0.2"), ("0.2*50", "10"), ("2*20*.01", "0.4"),
                                        ("10/3", "3.333333"), ("-(2-5)*1.5", "4.5"), ("98*3400", "333200"),
                                        ("2**10", "1024"), ("7 % 4", "3"), ("7 // 2", "3")])
def test_calculator_evaluates_gsm8k_arithmetic(expr, value):
    assert evaluate_arithmetic(expr) == value


@pytest.mark.parametrize("expr,reason", [
    ("__import__('os')", "only numbers"),  # a call
    ("(1).real", "only numbers"),  # an attribute
    ("a+1", "only numbers"),  # a name
    ("'a'*10", "only numbers"),  # a string
    ("1/0", "division by zero"),
    ("9**9**9", "too large"),  # refused by simpleeval's power limit at once, never computed
    ("10**20", "too large"),
    ("2+", "not an arithmetic expression"),
    ("1 < 2", "only numbers"),
    ("", "empty"),
    ("1+" * 150 + "1", "longer than"),
])
def test_calculator_refuses_what_is_not_arithmetic(expr, reason):
    with pytest.raises(ValueError, match=reason):
        evaluate_arithmetic(expr)


def test_runner_answers_a_note_at_its_equals_sign_and_records_failures():
    runner = ToolRunner(get_tools(["calculator"]))
    assert runner.step("Natalia sold 48/2 = <<48/2") is None  # not complete yet
    text = "Natalia sold 48/2 = <<48/2=2"  # the '=' and a digit came in one piece
    cut, insert = runner.step(text)
    assert text[:cut] + insert == "Natalia sold 48/2 = <<48/2=24>>"
    assert runner.calls == [ToolCall("calculator", "48/2", "24")]
    # a note it cannot evaluate is left to the model, and the next one is still answered
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips. <<48/0=0>>0 then <<3*4="
    cut, insert = runner.step(text)
    assert text[:cut] + insert == text + "12>>"
    assert [c.output for c in runner.calls] == ["24", None, "12"]
    assert runner.calls[1].error == "division by zero"
    assert "not evaluated" in str(runner.calls[1]) and str(runner.calls[0]) == "calculator: 48/2 = 24"


def test_a_malformed_note_triggers_no_call():
    runner = ToolRunner([Calculator()])
    assert runner.step("so <<48/2\nthen 24>> and << x") is None
    assert runner.calls == []


def test_unknown_tool_is_a_config_error_naming_the_flag(scripted_llm):
    with pytest.raises(ConfigError, match="--tools.*'abacus'.*calculator"):
        get_tools(["abacus"])
    with pytest.raises(ConfigError, match="--tools"):
        Assistant(model=scripted_llm("x"), tools="calculator,abacus")


def test_strip_notes():
    assert strip_notes("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"


@pytest.fixture
def note_model(scripted_llm):
    """A model that writes a wrong note (48/2 = 25) and, once a note holds 24, goes on from it."""

    def respond(prompt: str) -> str:
        if prompt.endswith("<<48/2=24>>"):
            return "24 clips in May. \\boxed{24}"
        return "She sold 48/2 = <<48/2=25>>25 clips in May. \\boxed{25}"

    return scripted_llm(respond)


def test_generate_with_tools_writes_the_result_and_the_model_goes_on(note_model):
    runner = ToolRunner(get_tools(["calculator"]))
    pieces = list(generate_with_tools(note_model, "Q: ", runner, max_tokens=50))
    text = "".join(pieces)
    assert text == "She sold 48/2 = <<48/2=24>>24 clips in May. \\boxed{24}"
    assert "24>>" in pieces  # the reply is a piece of its own
    assert runner.calls == [ToolCall("calculator", "48/2", "24")]
    assert note_model.prompts[-1] == "Q: She sold 48/2 = <<48/2=24>>"  # restarted from the text so far
    # without the tool the same model keeps its own arithmetic
    plain = "".join(generate_with_tools(note_model, "Q: ", ToolRunner(()), max_tokens=50))
    assert "\\boxed{25}" in plain


def test_generate_with_tools_counts_the_models_tokens_only(note_model):
    runner = ToolRunner(get_tools(["calculator"]))
    text = "".join(generate_with_tools(note_model, "Q: ", runner, max_tokens=5))
    # 4 words, then the note's word (cut at '='), then the reply: 5 model tokens in all
    assert text == "She sold 48/2 = <<48/2=24>>"


def test_assistant_records_tool_calls_in_greedy_and_budget_forcing(note_model):
    for strategy in ("greedy", "budget_forcing"):
        bot = Assistant(model=note_model, tools=("calculator",), strategy=strategy, think=False)
        answer = bot.ask("How many clips in May?")
        assert answer.text.endswith("\\boxed{24}"), strategy
        assert answer.tool_calls == (ToolCall("calculator", "48/2", "24"),)
    plain = Assistant(model=note_model, think=False).ask("How many clips in May?")
    assert plain.text.endswith("\\boxed{25}") and plain.tool_calls == ()


def test_tools_with_samples_need_a_model_that_samples_with_tools(scripted_llm):
    bot = Assistant(model=scripted_llm("x", sampled=[("\\boxed{1}", -1.0)]), tools=("calculator",), samples=4)
    with pytest.raises(ConfigError, match="--tools with --samples 4"):
        bot.ask("q")


def test_self_consistency_passes_the_tools_and_keeps_the_chosen_samples_calls(scripted_llm):
    from dca.llm import Completion

    call = ToolCall("calculator", "6*7", "42")

    class ToolSampler(scripted_llm):
        can_use_tools = True

        def sample(self, prompt, *, n, max_tokens, temperature=0.7, repeat_penalty=1.0, stop=(), seed=0,
                   cancel=None, tools=()):
            self.tools_given = tools
            return [Completion("6*7 = <<6*7=42>>42 \\boxed{42}", 9, -0.5, "stop", (call,)),
                    Completion("\\boxed{41}", 3, -2.0, "stop", ())] * (n // 2)

    model = ToolSampler("x")
    answer = Assistant(model=model, tools="calculator", samples=4, think=False).ask("6 times 7?")
    assert [t.name for t in model.tools_given] == ["calculator"]
    assert answer.votes[0].answer == "42" and answer.tool_calls == (call,)
    assert [s.tool_calls for s in answer.samples] == [(call,), (), (call,), ()]


def test_eval_records_tool_calls(tmp_path, note_model):
    from dca.eval import EvalConfig, run_eval

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "How many clips in May?", "answer": "#### 24"}) + "\n")
    bot = Assistant(model=note_model, think=False)
    report = run_eval(EvalConfig(task="gsm8k", data=data, out_dir=tmp_path / "run", tools=["calculator"]), bot)
    rec = json.loads((tmp_path / "run" / "predictions.jsonl").read_text())
    assert rec["tool_calls"] == [{"tool": "calculator", "input": "48/2", "output": "24", "error": ""}]
    assert rec["correct"] is True and report.metrics["accuracy"].value == 1.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["settings"]["assistant"]["tools"]
    assert saved == ["calculator"]


class _OnceAfterFiveWords:
    """A test tool for the real decoders: the space after a sample's fifth word gets the reply '[x=7] '."""

    name = "once"

    def find(self, text, start):
        m = re.match(r"\s*(?:\S+\s+){5}", text)
        return (m.end(), "") if m and start == 0 else None

    def call(self, request):
        return ToolCall(self.name, request, "[x=7]")

    def reply(self, call):
        return "[x=7] "


def _check_reply(text: str) -> None:
    m = re.match(r"\s*(?:\S+\s+){5}", text)
    assert m and text[m.end():].startswith("[x=7] "), text  # the reply sits right after the call
    assert text[m.end() + len("[x=7] "):].strip(), text  # and the model went on after it


@pytest.mark.slow
def test_decoders_write_tool_replies_and_go_on():
    from conftest import bundled_gguf

    from dca.llm import load_llm

    llm = load_llm(bundled_gguf(), n_ctx=1024)
    prompt = llm.render([{"role": "user", "content": "Write three short sentences about the sea."}])
    # k samples: the reply decoded into each sequence in the next batch
    outs = llm.sample(prompt, n=3, max_tokens=40, temperature=0.7, seed=1, tools=[_OnceAfterFiveWords()])
    for c in outs:
        _check_reply(c.text)
        assert c.tool_calls == (ToolCall("once", "", "[x=7]"),)
    # greedy decoding through llama-cpp-python, restarted after the reply
    runner = ToolRunner([_OnceAfterFiveWords()])
    _check_reply("".join(generate_with_tools(llm, prompt, runner, max_tokens=40)))
    assert len(runner.calls) == 1
