"""dca distill generate: teachers (HTTP, local), retries and errors, resume after a kill, bounded concurrency.

The HTTP teacher is tested through httpx's own transport hook (``httpx.MockTransport``) and a loopback
``http.server``; the acceptance test (``slow``) runs the real llama-cpp-python server on the bundled GGUF.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import SHARED_DATA, ScriptedLLM, bundled_gguf
from typer.testing import CliRunner

from dca.cli import app
from dca.distill.generate import GenerateConfig, generate, load_questions, sample_seed
from dca.distill.teachers import LlamaCppTeacher, OpenAITeacher
from dca.distill.traces import Trace, read_traces
from dca.errors import ConfigError, TeacherError

BASE = "http://teacher.test/v1"


def chat(content, *, finish="stop", usage=(12, 7), **message):
    body = {"choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content, **message}}]}
    if usage:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return body


def mock_teacher(handler, sleeps=None, **kw):
    return OpenAITeacher(BASE, "teacher-7b", transport=httpx.MockTransport(handler),
                         sleep=(sleeps.append if sleeps is not None else (lambda s: None)), **kw)


def arithmetic_handler(requests=None, delay=0.0, inflight=None):
    """Answers "What is A + B?" right when the request's seed is even, wrong when it is odd."""
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if inflight is not None:
            with lock:
                inflight["now"] += 1
                inflight["max"] = max(inflight["max"], inflight["now"])
        try:
            time.sleep(delay)
            if requests is not None:
                with lock:
                    requests.append(body)
            a, b = map(int, re.findall(r"\d+", body["messages"][-1]["content"]))
            answer = a + b if body["seed"] % 2 == 0 else a + b + 1
            return httpx.Response(200, json=chat(f"<think>{a} plus {b}</think>So \\boxed{{{answer}}}"))
        finally:
            if inflight is not None:
                with lock:
                    inflight["now"] -= 1

    return handler


def write_questions(path: Path, n: int) -> Path:
    lines = [json.dumps({"question": f"What is {i} + {i + 3}?", "answer": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}"})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg(tmp_path, **kw):
    kw.setdefault("questions", write_questions(tmp_path / "q.jsonl", 5))
    return GenerateConfig(out=tmp_path / "traces.jsonl", base_url=BASE, teacher_model="teacher-7b", **kw)


# -- parsing ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("message,finish,expected", [
    ({"content": "\\boxed{4}", "reasoning_content": "2+2"}, "stop", ("2+2", "\\boxed{4}", True)),
    ({"content": "\\boxed{4}", "reasoning": "two and two"}, "stop", ("two and two", "\\boxed{4}", True)),
    ({"content": "<think>2+2=4</think>The answer is \\boxed{4}"}, "stop", ("2+2=4", "The answer is \\boxed{4}", True)),
    ({"content": "<think>2+2 is", }, "length", ("2+2 is", "", False)),
    ({"content": None, "reasoning_content": "long thought"}, "length", ("long thought", "", False)),
])
def test_openai_teacher_reads_thinking_from_fields_or_tags(message, finish, expected):
    content = message.pop("content")
    teacher = mock_teacher(lambda r: httpx.Response(200, json=chat(content, finish=finish, **message)))
    r = teacher.complete([{"role": "user", "content": "2+2?"}], temperature=0.5, max_tokens=9, seed=3)
    assert (r.thinking, r.content, r.closed) == expected
    assert (r.finish, r.prompt_tokens, r.completion_tokens) == (finish, 12, 7)


def test_openai_teacher_sends_model_sampling_and_key(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    seen = []
    teacher = mock_teacher(lambda r: seen.append(r) or httpx.Response(200, json=chat("ok")), api_key_env="MY_KEY")
    teacher.complete([{"role": "user", "content": "hi"}], temperature=0.25, max_tokens=5, seed=11)
    body = json.loads(seen[0].content)
    assert str(seen[0].url) == BASE + "/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-test"
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == ("teacher-7b", 0.25, 5, 11)
    assert "sk-test" not in json.dumps(teacher.params)


# -- retries and errors ----------------------------------------------------------------------------------------

def test_retries_429_and_503_honouring_retry_after_then_succeeds():
    script = [httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"),
              httpx.Response(503, headers={"Retry-After": "2"}, text="overloaded"),
              httpx.ConnectError("connection refused"),
              httpx.Response(200, json=chat("\\boxed{1}"))]

    def handler(request):
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    sleeps = []
    r = mock_teacher(handler, sleeps).complete([{"role": "user", "content": "x"}], temperature=0, max_tokens=4, seed=0)
    assert r.content == "\\boxed{1}" and not script
    assert 7 <= sleeps[0] <= 7.7 and 2 <= sleeps[1] <= 2.2  # Retry-After, plus at most 10% jitter
    assert 1.0 <= sleeps[2] <= 4.0  # exponential backoff of the third attempt, with jitter


def test_retry_after_as_an_http_date():
    from email.utils import format_datetime

    from dca.distill.teachers import _retry_after

    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 28 <= _retry_after(when) <= 30 and _retry_after("soon") is None and _retry_after("-3") == 0


def test_gives_up_after_max_retries_with_a_non_fatal_error():
    calls = []
    teacher = mock_teacher(lambda r: calls.append(1) or httpx.Response(500, text="boom"), max_retries=2)
    with pytest.raises(TeacherError, match="after 3 attempts.*500") as e:
        teacher.complete([{"role": "user", "content": "x"}], temperature=0, max_tokens=4, seed=0)
    assert len(calls) == 3 and not e.value.fatal


@pytest.mark.parametrize("key", [None, "sk-bad"])
def test_401_fails_at_once_naming_the_env_var(monkeypatch, key):
    if key:
        monkeypatch.setenv("TEACHER_KEY", key)
    else:
        monkeypatch.delenv("TEACHER_KEY", raising=False)
    calls = []
    teacher = mock_teacher(lambda r: calls.append(1) or httpx.Response(401, text="invalid api key"), api_key_env="TEACHER_KEY")
    with pytest.raises(TeacherError, match=r"401.*\$TEACHER_KEY " + ("was refused" if key else "is not set")) as e:
        teacher.complete([{"role": "user", "content": "x"}], temperature=0, max_tokens=4, seed=0)
    assert e.value.fatal and len(calls) == 1 and "--api-key-env" in str(e.value)


def test_404_fails_at_once_naming_the_url_and_model():
    calls = []
    teacher = mock_teacher(lambda r: calls.append(1) or httpx.Response(404, text="model not found"))
    with pytest.raises(TeacherError) as e:
        teacher.complete([{"role": "user", "content": "x"}], temperature=0, max_tokens=4, seed=0)
    assert e.value.fatal and len(calls) == 1
    assert all(s in str(e.value) for s in (BASE + "/chat/completions", "--base-url", "teacher-7b", "model not found"))


# -- questions -------------------------------------------------------------------------------------------------

def test_questions_of_every_shape_with_stable_ids_and_bad_lines_by_number(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        json.dumps({"question": "Q1?", "answer": "work\n#### 1,250"}),
        "{not json",
        json.dumps({"id": "m7", "problem": "P?", "solution": "so $\\boxed{\\frac{1}{2}}$"}),
        json.dumps({"text": "no question here"}),
        json.dumps({"id": 9, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "M?"}], "gold": "x=3"}),
        json.dumps({"id": "m7", "problem": "again"}),
        "",
        json.dumps({"prompt": "free?"}),
    ]) + "\n")
    qs, bad = load_questions(path)
    assert [(q.id, q.question, q.gold) for q in qs] == [
        ("mixed-1", "Q1?", "1250"), ("m7", "P?", "\\frac{1}{2}"), ("9", "M?", "x=3"), ("mixed-8", "free?", None)]
    assert [(b.line, b.reason.split(" ")[0]) for b in bad] == [(2, "not"), (4, "no"), (6, "duplicate")]
    assert load_questions(path, limit=2)[0] == qs[:2]


# -- generate --------------------------------------------------------------------------------------------------

def test_generate_writes_one_trace_per_question_and_sample(tmp_path):
    config = cfg(tmp_path, samples=3, temperature=0.8, max_tokens=64, seed=5)
    reports = []
    report = generate(config, mock_teacher(arithmetic_handler()), progress=reports.append)
    traces = read_traces(config.out)
    assert sorted(t.key for t in traces) == sorted((f"q-{i}", s) for i in range(1, 6) for s in range(3))
    even = sum(sample_seed(5, t.id, t.sample) % 2 == 0 for t in traces)
    assert (report.written, report.skipped, report.failed, report.judged, report.accepted) == (15, 0, 0, 15, even)
    t = next(t for t in traces if t.key == ("q-2", 1))
    assert (t.question, t.gold, t.thinking, t.closed, t.finish) == ("What is 1 + 4?", "5", "1 plus 4", True, "stop")
    assert t.meta["correct"] == (sample_seed(5, "q-2", 1) % 2 == 0) and t.meta["seed"] == sample_seed(5, "q-2", 1)
    assert t.teacher == {"name": "teacher-7b", "kind": "openai", "params": {
        "base_url": BASE, "temperature": 0.8, "max_tokens": 64, "seed": 5, "system_prompt": config.system_prompt}}
    assert t.tokens == {"prompt": 12, "completion": 7}
    assert reports[-1].done == reports[-1].total == 15 and reports[-1].metrics["accepted"] == even
    assert reports[-1].metrics["completion_tokens"] == 15 * 7 and reports[-1].unit == "samples"


@pytest.mark.parametrize("content,finish,predicted,correct", [
    ("so it is 3", "stop", "3", True),
    ("so it is 3 and then", "length", None, False),  # cut off: its last number is not an answer
    ("\\boxed{3} because", "length", "3", True),
])
def test_a_truncated_reply_is_judged_only_by_a_boxed_answer(tmp_path, content, finish, predicted, correct):
    config = cfg(tmp_path, limit=1, questions=write_questions(tmp_path / "q.jsonl", 1))  # "What is 0 + 3?"
    generate(config, mock_teacher(lambda r: httpx.Response(200, json=chat(content, finish=finish))))
    (t,) = read_traces(config.out)
    assert (t.meta["predicted"], t.meta["correct"], t.finish) == (predicted, correct, finish)


def test_resume_skips_done_keys_and_drops_a_partial_last_line(tmp_path):
    first = cfg(tmp_path, samples=2, limit=3)
    generate(first, mock_teacher(arithmetic_handler()))
    before = first.out.read_text()
    with open(first.out, "a") as f:
        f.write('{"id": "q-4", "sample": 0, "question": "What is')  # a kill mid-write
    requests = []
    report = generate(cfg(tmp_path, samples=2), mock_teacher(arithmetic_handler(requests)))
    assert (report.skipped, report.written) == (6, 4) and len(requests) == 4
    assert sorted(sample_seed(0, f"q-{i}", s) for i in (4, 5) for s in (0, 1)) == sorted(r["seed"] for r in requests)
    text = first.out.read_text()
    assert text.startswith(before)  # finished records untouched
    keys = [(d["id"], d["sample"]) for d in map(json.loads, text.splitlines())]
    assert len(keys) == len(set(keys)) == 10
    again = generate(cfg(tmp_path, samples=2), mock_teacher(arithmetic_handler()))
    assert (again.written, again.skipped) == (0, 10) and first.out.read_text() == text


def test_resume_refuses_other_sampling_settings(tmp_path):
    generate(cfg(tmp_path, limit=1), mock_teacher(arithmetic_handler()))
    with pytest.raises(ConfigError, match="temperature.*another -o/--out"):
        generate(cfg(tmp_path, temperature=0.1), mock_teacher(arithmetic_handler()))


@pytest.mark.parametrize("concurrent,limit", [(True, 3), (False, 1)])
def test_concurrency_is_bounded(tmp_path, concurrent, limit):
    inflight = {"now": 0, "max": 0}
    teacher = mock_teacher(arithmetic_handler(delay=0.05, inflight=inflight))
    teacher.concurrent = concurrent
    report = generate(cfg(tmp_path, samples=3, concurrency=3), teacher)
    assert report.written == 15 and inflight["max"] == limit


def test_fatal_error_stops_the_run_and_keeps_finished_samples(tmp_path):
    n = []

    def handler(request):
        n.append(1)
        return httpx.Response(401) if len(n) > 2 else arithmetic_handler()(request)

    config = cfg(tmp_path, samples=2, concurrency=1)
    with pytest.raises(TeacherError, match="OPENAI_API_KEY"):
        generate(config, mock_teacher(handler))
    assert len(read_traces(config.out)) == 2 and len(n) == 3


def test_failed_samples_are_counted_then_many_in_a_row_stop_the_run(tmp_path):
    def flaky(request):
        body = json.loads(request.content)
        return httpx.Response(400, text="too long") if "2 + 5" in body["messages"][-1]["content"] else arithmetic_handler()(request)

    report = generate(cfg(tmp_path, samples=2, concurrency=1), mock_teacher(flaky))
    assert (report.written, report.failed) == (8, 2) and "400" in report.errors[0]
    with pytest.raises(TeacherError, match="10 samples failed in a row"):
        generate(cfg(tmp_path, samples=30), mock_teacher(lambda r: httpx.Response(500), max_retries=0))


def test_local_teacher_through_the_llm_protocol_parses_think_tags(tmp_path):
    class OpensThink(ScriptedLLM):
        def render(self, messages):
            return super().render(messages) + "<think>\n"

    llm = OpensThink(sampled=[("7 plus 3 is 10</think>\n\\boxed{10}", -0.5)])
    teacher = LlamaCppTeacher(llm)
    config = cfg(tmp_path, teacher="gguf", limit=1, samples=2, seed=4)
    report = generate(config, teacher)
    traces = read_traces(config.out)
    assert report.written == 2 and [c["seed"] for c in llm.sample_calls] == [sample_seed(4, "q-1", s) for s in (0, 1)]
    assert all(c["n"] == 1 and c["max_tokens"] == config.max_tokens for c in llm.sample_calls)
    assert (traces[0].thinking, traces[0].answer, traces[0].teacher["kind"]) == ("7 plus 3 is 10", "\\boxed{10}", "llama-cpp")
    assert traces[0].tokens["completion"] == 6 and traces[0].tokens["prompt"] > 0


def test_transformers_teacher_on_a_tiny_random_model(tmp_path):
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from dca.distill.teachers import TransformersTeacher

    words = ["<unk>", "<eos>", "<think>", "</think>", "user", "assistant", "system"] + [str(i) for i in range(20)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}assistant <think> {% endif %}")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                 eos_token_id=1, pad_token_id=1, bos_token_id=None)).save_pretrained(tmp_path / "m")
    fast.save_pretrained(tmp_path / "m")
    teacher = TransformersTeacher(tmp_path / "m", device="cpu")
    msgs = [{"role": "user", "content": "3 4"}]
    a, b, c = (teacher.complete(msgs, temperature=1.0, max_tokens=6, seed=s) for s in (1, 1, 2))
    assert a == b and a != c  # seeded sampling
    assert a.prompt_tokens == 5 and 1 <= a.completion_tokens <= 6  # "user 3 4 assistant <think>"
    assert a.finish == "length" if a.completion_tokens == 6 and a.content == "" else a.finish in ("stop", "length")
    assert a.completion_tokens == 6 or a.finish == "stop"
    assert a.closed or a.content == ""  # the template opened <think>: no answer before it is closed
    greedy = teacher.complete(msgs, temperature=0, max_tokens=6, seed=9)
    assert greedy == teacher.complete(msgs, temperature=0, max_tokens=6, seed=10)


def test_config_errors_name_the_flag(tmp_path):
    for kw, flag in [({"samples": 0}, "--samples"), ({"concurrency": 0}, "--concurrency"),
                     ({"temperature": -1}, "--temperature"), ({"base_url": None}, "--base-url"),
                     ({"teacher": "claude"}, "--teacher")]:
        with pytest.raises(ConfigError, match=flag):
            GenerateConfig(**{"questions": tmp_path / "q.jsonl", "out": tmp_path / "o.jsonl", "base_url": BASE,
                              "teacher_model": "m", **kw})


# -- command line ----------------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def loopback_teacher():
    """A tiny OpenAI-compatible server on loopback; set ``.status`` to make it fail."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            a, b = map(int, re.findall(r"\d+", body["messages"][-1]["content"]))
            status = self.server.status
            data = json.dumps(chat(f"<think>adding</think>\\boxed{{{a + b}}}") if status == 200 else {"error": "nope"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = _Server(("127.0.0.1", 0), Handler)
    server.status = 200
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_cli_generates_resumes_and_reports_errors(tmp_path, loopback_teacher, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    q = write_questions(tmp_path / "q.jsonl", 4)
    url = f"http://127.0.0.1:{loopback_teacher.server_address[1]}/v1"
    args = ["distill", "generate", str(q), "-o", str(tmp_path / "t.jsonl"), "--teacher", "openai", "--base-url", url,
            "--teacher-model", "tiny", "--samples", "2", "--api-key-env", "NO_SUCH_KEY"]
    runner = CliRunner()

    def run(*extra):
        result = runner.invoke(app, args + list(extra))
        return result.exit_code, " ".join(result.output.split())  # undo rich's line wrapping

    code, output = run("--limit", "2")
    assert code == 0 and "4 traces written" in output and "4/4 accepted" in output, output
    code, output = run()
    assert code == 0 and "4 traces written" in output and "4 already there" in output, output
    loopback_teacher.status = 401
    code, output = run("--samples", "3")
    assert code == 1 and "$NO_SUCH_KEY is not set" in output, output
    code, output = run("--samples", "0")
    assert code == 1 and "--samples" in output


def test_generate_help_and_lazy_imports():
    result = CliRunner().invoke(app, ["distill", "generate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert all(o in result.output for o in ("--teacher", "--base-url", "--samples", "--concurrency", "-o", "--api-key-env"))
    code = ("import sys, dca.distill.generate, dca.distill.teachers\n"
            "print([m for m in ('torch', 'transformers', 'llama_cpp', 'httpx') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


# -- acceptance: the real llama-cpp-python server, a kill -9 and a resume ------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def llama_server(tmp_path):
    gguf = bundled_gguf()
    if any(importlib.util.find_spec(m) is None for m in ("uvicorn", "fastapi", "sse_starlette")):
        pytest.skip("llama-cpp-python's server extras are not installed (pip install 'dca[serve]')")
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the llama-cpp-python server did not start in 180 s"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _gsm8k_questions(path: Path, n: int) -> Path:
    source = SHARED_DATA / "gsm8k_train.jsonl"
    if source.is_file():
        with open(source, encoding="utf-8") as f:
            lines = [next(f) for _ in range(n)]
        path.write_text("".join(lines))
        return path
    return write_questions(path, n)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_generate_from_the_real_server_survives_kill_9_and_resumes(tmp_path, llama_server):
    questions = _gsm8k_questions(tmp_path / "gsm8k.jsonl", 20)
    out = tmp_path / "traces.jsonl"
    cmd = [sys.executable, "-c", "from dca.cli import main; main()", "distill", "generate", str(questions), "-o", str(out),
           "--teacher", "openai", "--base-url", llama_server, "--teacher-model", "smollm2", "--api-key-env", "DCA_NO_KEY",
           "--samples", "2", "--max-tokens", "48", "--concurrency", "2", "--temperature", "0.8", "--seed", "3"]
    with open(tmp_path / "first.log", "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while _lines(out) < 6:
            assert child.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no 6 traces in 300 s"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    raw = out.read_bytes()
    kept = raw[: raw.rfind(b"\n") + 1]  # complete lines at the kill; a partial one may follow
    n_before = kept.count(b"\n")
    assert 6 <= n_before < 40

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    after = out.read_bytes()
    assert after.startswith(kept)  # nothing finished was lost or rewritten
    records = [json.loads(line) for line in after.decode().splitlines()]  # every line is valid JSON
    traces = [Trace.from_dict(r) for r in records]
    ids = [q.id for q in load_questions(questions)[0]]
    assert len(traces) == 40 and {t.key for t in traces} == {(i, s) for i in ids for s in (0, 1)}
    assert all(t.teacher["kind"] == "openai" and 0 < t.tokens["completion"] <= 48 and t.gold for t in traces)
    summary = " ".join(done.stdout.split())
    assert f"{40 - n_before} traces written" in summary and f"{n_before} already there" in summary
