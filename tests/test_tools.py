"""The calculator tool (dca.tools) and decoding with tools: generate_with_tools over a scripted model, the
assistant's strategies, eval's records, and the parallel sampler on the bundled GGUF."""

from __future__ import annotations

import json
import re

import numpy as np
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
    ("9**9**9", "too large"),  # refused before it is computed: no hang
    ("999999**999999", "too large"),
    ("10**20", "too large"),
    ("10**400", "too large"),  # an int too large for a float
    ("2**1100", "too large"),
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


def test_calculator_call_never_raises():
    for expr in ("2**1100", "10**400", "(-8)**0.5", "1/0", "((((1"):
        call = Calculator().call(expr)
        assert call.output is None and call.error, expr


def test_each_decoding_phase_is_watched_from_its_start(scripted_llm):
    """The thinking and the answer are two texts: a note early in the answer is answered although the thinking
    that came before it was longer."""

    def respond(prompt: str) -> str:
        if prompt.endswith("<<48/2=24>>"):
            return "24 \\boxed{24}"
        if prompt.endswith("<<1+1=2>>"):
            return "2 and on and on"
        if "</think>" in prompt:
            return "<<48/2=25>>25 \\boxed{25}"
        return "a long thought about clips that goes on <<1+1=2>>2 and on and on"

    bot = Assistant(model=scripted_llm(respond, think_tags=("<think>", "</think>")), tools="calculator", think=True)
    answer = bot.ask("How many clips in May?")
    assert answer.text == "<<48/2=24>>24 \\boxed{24}"
    assert [c.output for c in answer.tool_calls] == ["2", "24"]


# -- the parallel sampler's bookkeeping, on a fake llama.cpp context ---------------------------------------------

_VOCAB = [bytes([i]) for i in range(256)] + [b"=25", b"<<", b">>", b"48", b"ok", b"<eos>"]
_EOS = len(_VOCAB) - 1


def _tokenize(data: bytes) -> list[int]:
    out, i = [], 0
    while i < len(data):  # longest match first
        best = max((t for t in range(_EOS) if data.startswith(_VOCAB[t], i)), key=lambda t: len(_VOCAB[t]))
        out.append(best)
        i += len(_VOCAB[best])
    return out


class _FakeLlama:
    def tokenize(self, data, add_bos=True, special=False):
        return ([0] if add_bos else []) + _tokenize(data)

    def detokenize(self, tokens):
        return b"".join(_VOCAB[t] for t in tokens)


_SCRIPT = "x \udcff <<1/0=7>>7 <<48/2=25>>25 ok".encode("utf-8", "surrogateescape")


class _FakeContext:
    """Each sequence writes _SCRIPT greedily, token by token, unless its cells hold a tool reply: then it goes on
    from the corrected note. Checks that every sequence's positions are contiguous and that logits are asked for
    each sequence's last token only."""

    def __init__(self, llama, *, n_ctx, n_batch, n_seq, unified_kv):
        self.n_vocab, self.kv, self.n_batch = len(_VOCAB), {}, n_batch
        self.llama = llama

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def _next(self, cells):
        done = self.llama.detokenize(cells[self.prompt_len:])
        want = _SCRIPT.replace(b"=25>>25", b"=24>>24") if b"<<48/2=24>>" in done else _SCRIPT
        v = np.full(self.n_vocab, -50.0, dtype=np.float32)
        rest = want[len(done):] if want.startswith(done) else b""
        v[_tokenize(rest)[0] if rest else _EOS] = 50.0
        return v

    def decode_prompt(self, tokens, seq_ids):
        self.prompt_len = len(tokens)
        self.kv[0] = list(tokens)
        self.last = self._next(self.kv[0])

    def copy_sequence(self, src, dst):
        self.kv[dst] = list(self.kv[src])

    def last_logits(self):
        return self.last

    def decode(self, tokens, positions, seq_ids, outputs=None):
        assert len(tokens) <= self.n_batch
        rows = []
        for i, (tok, pos, seq) in enumerate(zip(tokens, positions, seq_ids)):
            assert pos == len(self.kv[seq]), "a gap or overlap in a sequence's positions"
            self.kv[seq].append(tok)
            last = i + 1 == len(tokens) or seq_ids[i + 1] != seq
            assert outputs[i] == last, "logits asked for a token that is not its sequence's last"
            if outputs[i]:
                rows.append(self._next(self.kv[seq]))
        self.rows = np.stack(rows)

    def logits(self):
        return self.rows

    def is_end_of_generation(self, token):
        return token == _EOS


def test_parallel_sampler_writes_replies_into_the_right_cells(monkeypatch):
    import dca.llm.sampling as sampling

    monkeypatch.setattr(sampling, "SequenceContext", _FakeContext)
    monkeypatch.setattr(sampling, "n_ctx_train", lambda llama: 100_000)
    outs = sampling.sample_parallel(_FakeLlama(), "P", n=3, max_tokens=60, temperature=0,
                                    tools=get_tools(["calculator"]))
    for c in outs:
        # the stray byte (dropped from the text, not from the cells) did not shift the cut; the unanswerable
        # note is left alone; the wrong one is corrected mid-token ('=25' dropped)
        assert c.text == "x  <<1/0=7>>7 <<48/2=24>>24 ok", c.text
        assert [(t.input, t.output) for t in c.tool_calls] == [("1/0", None), ("48/2", "24")]
        assert c.eos and c.finish == "stop"
