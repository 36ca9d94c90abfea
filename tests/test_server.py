"""dca serve: the OpenAI-compatible API on a real uvicorn server on loopback.

The API's behaviour (errors, stop sequences, the queue, disconnects, the key) is checked with a scripted model; the
official ``openai`` client then talks to the bundled GGUF with a small MiniLM store (marked slow).
"""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import ScriptedLLM, bundled_gguf
from typer.testing import CliRunner

from dca.assistant import Assistant
from dca.assistant.config import DEFAULT_SYSTEM_PROMPT
from dca.cli import app as cli
from dca.server import ServerThread, create_app, is_loopback


class GatedLLM(ScriptedLLM):
    """A scripted model whose generation waits until ``release`` is set (and records that it started)."""

    def __init__(self, respond="held answer", **kw):
        super().__init__(respond, **kw)
        self.release = threading.Event()
        self.active = threading.Event()

    def generate(self, prompt, **kw):
        self.active.set()
        try:
            while not self.release.wait(0.01):
                if kw.get("cancel") is not None and kw["cancel"]():
                    return
            yield from super().generate(prompt, **kw)
        finally:
            self.active.clear()


class SlowLLM(ScriptedLLM):
    """A scripted model that takes ``delay`` seconds per word, and records when its generation stopped."""

    def __init__(self, respond="one two three four five six seven eight nine ten " * 20, delay=0.05, **kw):
        super().__init__(respond, **kw)
        self.delay = delay
        self.stopped_at: list[float] = []
        self.active = threading.Event()

    def generate(self, prompt, **kw):
        self.active.set()
        try:
            for word in super().generate(prompt, **kw):
                time.sleep(self.delay)
                yield word
        finally:
            self.active.clear()
            self.stopped_at.append(time.monotonic())


def serve(llm, store=None, **kw):
    return ServerThread(create_app(Assistant(llm, store, top_k=2, max_tokens=64), model_id="tiny", **kw))


def post(url, body, **kw):
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30, **kw)


def ask(text="Hello?", **extra):
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}


def stream_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def test_chat_completion_answers_the_last_user_message_with_the_history_and_system_prompt():
    llm = ScriptedLLM(lambda prompt: f"seen {prompt.count('<|user|>')} user turns")
    with serve(llm) as s:
        r = post(s.url, {"model": "tiny", "messages": [
            {"role": "system", "content": "Answer tersely."},
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "seen 2 user turns"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 4 and body["usage"]["prompt_tokens"] > 0
    prompt = llm.prompts[-1]
    # the client's system message is added to dca's, whose citation rules stay
    assert prompt.startswith(f"<|system|>\n{DEFAULT_SYSTEM_PROMPT}\n\nAnswer tersely.\n")
    assert "first" in prompt and prompt.count("second") == 1


def test_requests_do_not_share_a_conversation_or_change_the_served_assistant():
    llm = ScriptedLLM("fine")
    bot = Assistant(llm, None, max_tokens=64)
    with ServerThread(create_app(bot, model_id="tiny")) as s:
        post(s.url, ask("first question"))
        post(s.url, ask("second question", max_tokens=5, dca={"system_prompt": "Be brief."}))
    assert "first question" not in llm.prompts[-1] and llm.prompts[-1].startswith("<|system|>\nBe brief.\n")
    assert bot.history == [] and bot.config.max_tokens == 64 and bot.config.system_prompt == DEFAULT_SYSTEM_PROMPT


def test_per_request_settings_reach_the_assistant_and_do_not_stay():
    llm = ScriptedLLM("a b c d e f g h")
    with serve(llm) as s:
        cut = post(s.url, ask(max_tokens=3)).json()
        assert cut["choices"][0]["message"]["content"] == "a b c"
        assert cut["choices"][0]["finish_reason"] == "length"
        assert post(s.url, ask()).json()["choices"][0]["message"]["content"] == "a b c d e f g h"
        voted = post(s.url, ask(dca={"samples": 3}, seed=7)).json()
        assert voted["dca"]["strategy"] == "self_consistency" and llm.sample_calls[-1]["n"] == 3
        assert llm.sample_calls[-1]["seed"] == 7
        high = post(s.url, ask(reasoning_effort="high")).json()
        assert llm.sample_calls[-1]["n"] == 8 and high["dca"]["strategy"] == "self_consistency"


def test_stop_sequences_cut_the_answer_streamed_or_not():
    llm = ScriptedLLM("alpha beta END gamma delta")
    with serve(llm) as s:
        whole = post(s.url, ask(stop=["END"])).json()
        assert whole["choices"][0]["message"]["content"] == "alpha beta "
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=ask(stop="ta E", stream=True), timeout=30) as r:
            events = stream_events(r)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "alpha be"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_streaming_sends_the_thinking_apart_and_the_sources_and_usage_at_the_end(embedder, tmp_path):
    from dca.rag import open_store

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rivers.md").write_text("The Zorblax river flows through Quenton.\n")
    store = open_store(tmp_path / "store", embedder, create=True)
    assert not store.ingest([docs]).errors
    llm = ScriptedLLM(lambda p: "pondering the river </think> ignored" if p.endswith("<think>\n")
                      else "It flows through Quenton [1].", think_tags=("<think>", "</think>"))
    with serve(llm, store) as s:
        body = ask("Which city does the Zorblax river flow through?", stream=True,
                   stream_options={"include_usage": True})
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = stream_events(r)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas[0]["role"] == "assistant"
    thinking = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    assert thinking.strip() == "pondering the river" and content.strip() == "It flows through Quenton [1]."
    final = events[-2]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert [(x["number"], x["cited"]) for x in final["sources"]] == [(1, True)]
    assert final["sources"][0]["source"].endswith("rivers.md")
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_bad_requests_get_openai_shaped_errors_and_the_server_keeps_serving():
    with serve(ScriptedLLM("fine"), max_request_bytes=4096) as s:
        url = s.url + "/v1/chat/completions"
        cases = {
            "malformed json": (httpx.post(url, content=b'{"model": "tiny", "messages": [', timeout=10,
                                          headers={"content-type": "application/json"}), 400, None),
            "wrong type": (post(s.url, ask(max_tokens="many")), 422, "max_tokens"),
            "unknown model": (post(s.url, {**ask(), "model": "gpt-9"}), 404, "model"),
            "empty messages": (post(s.url, {"model": "tiny", "messages": []}), 400, "messages"),
            "assistant last": (post(s.url, {"model": "tiny", "messages": [{"role": "assistant", "content": "x"}]}),
                               400, "messages"),
            "bad setting": (post(s.url, ask(dca={"samples": 0})), 400, "dca"),
            "setting of the wrong type": (post(s.url, ask(dca={"top_k": 2.5})), 422, "dca.top_k"),
            "unknown setting": (post(s.url, ask(dca={"verifier": "/etc/passwd"})), 422, "dca.verifier"),
            "oversized": (post(s.url, ask("x" * 10_000)), 413, None),
            "oversized, chunked": (httpx.post(url, content=iter([b'{"model": "tiny", "x": "' + b"x" * 3000, b"y" * 3000]),
                                              headers={"content-type": "application/json"}, timeout=10), 413, None),
            "no route": (httpx.get(s.url + "/v1/nothing", timeout=10), 404, None),
        }
        for name, (r, status, param) in cases.items():
            assert r.status_code == status, (name, r.status_code, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], name
            assert error["param"] == param, (name, error)
        assert cases["oversized"][0].json() == cases["oversized, chunked"][0].json()
        assert "gpt-9" in cases["unknown model"][0].json()["error"]["message"]
        assert "--samples must be in 1..64" in cases["bad setting"][0].json()["error"]["message"]
        assert post(s.url, ask()).json()["choices"][0]["message"]["content"] == "fine"


def test_the_api_key_is_required_on_v1_when_set():
    with serve(ScriptedLLM("fine"), api_key=" s3cret\n") as s:
        missing = post(s.url, ask())
        wrong = post(s.url, ask(), headers={"Authorization": "Bearer nope"})
        listed = httpx.get(s.url + "/v1/models", timeout=10)
        streamed = post(s.url, ask(stream=True))
        good = post(s.url, ask(), headers={"Authorization": "Bearer s3cret"})
        health = httpx.get(s.url + "/health", timeout=10)
        foreign = httpx.get(s.url + "/health", headers={"Host": "evil.example"}, timeout=10)
    assert missing.status_code == wrong.status_code == listed.status_code == streamed.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert good.status_code == 200 and health.status_code == 200
    assert foreign.status_code == 200  # with a key, the key is the guard


def test_a_keyless_server_answers_only_requests_addressed_to_loopback():
    with serve(ScriptedLLM("fine")) as s:
        port = s.url.rsplit(":", 1)[1]
        rebound = post(s.url, ask(), headers={"Host": f"attacker.example:{port}"})
        local = post(s.url, ask(), headers={"Host": f"localhost:{port}"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
    assert local.status_code == 200


def test_a_full_queue_answers_503_with_retry_after_and_waiting_requests_complete():
    llm = GatedLLM()
    results = {}
    with serve(llm, queue_size=1) as s:
        engine = s.app.state.engine

        def run(name):
            results[name] = post(s.url, ask())

        first = threading.Thread(target=run, args=("first",))
        first.start()
        assert llm.active.wait(10)  # running, held
        second = threading.Thread(target=run, args=("second",))
        second.start()
        deadline = time.monotonic() + 10
        while engine.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = post(s.url, ask())
        llm.release.set()
        first.join(30)
        second.join(30)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert results["first"].status_code == results["second"].status_code == 200
    assert results["second"].json()["choices"][0]["message"]["content"] == "held answer"


def test_clients_that_leave_a_non_streamed_request_stop_it_running_or_waiting():
    llm = GatedLLM()
    with serve(llm, queue_size=1) as s:
        engine = s.app.state.engine
        # the running request's client gives up: its generation is cancelled though the model was never released
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/v1/chat/completions", json=ask("abandoned"), timeout=0.5)
        left = time.monotonic()
        while (llm.active.is_set() or engine.running) and time.monotonic() - left < 5:
            time.sleep(0.01)
        assert not llm.active.is_set() and engine.running is None and time.monotonic() - left < 1.0
        # a request that waits in the queue, then its client gives up: its place frees at once
        running = threading.Thread(target=lambda: post(s.url, ask()), daemon=True)
        running.start()
        assert llm.active.wait(10)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/v1/chat/completions", json=ask("queued"), timeout=0.5)
        deadline = time.monotonic() + 5
        while engine.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.waiting == 0
        admitted = threading.Thread(target=lambda: post(s.url, ask("admitted")), daemon=True)
        admitted.start()
        while engine.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.waiting == 1  # admitted, not refused
        llm.release.set()
        running.join(10)
        admitted.join(10)
    assert any("admitted" in p for p in llm.prompts) and not any("queued" in p for p in llm.prompts)


def test_a_client_that_disconnects_mid_stream_stops_its_generation_and_the_next_is_served():
    llm = SlowLLM(delay=0.05)
    with serve(llm) as s:
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=ask(stream=True, max_tokens=200),
                          timeout=30) as r:
            lines = r.iter_lines()
            while '"content": "one' not in next(lines):
                pass
            left = time.monotonic()
        # the response is closed here: the connection goes away mid-stream
        deadline = left + 5
        while llm.active.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not llm.active.is_set() and llm.stopped_at[-1] - left < 1.0
        nxt = post(s.url, ask(max_tokens=3))
    assert nxt.status_code == 200 and nxt.json()["choices"][0]["message"]["content"] == "one two three"


def test_embeddings_and_models(embedder):
    import base64

    with serve(ScriptedLLM("x"), embedder=embedder) as s:
        floats = httpx.post(s.url + "/v1/embeddings", json={"model": embedder.name, "input": ["a cat", "a dog"]},
                            timeout=10).json()
        packed = httpx.post(s.url + "/v1/embeddings", json={"model": embedder.name, "input": "a cat",
                                                            "encoding_format": "base64"}, timeout=10).json()
        models = httpx.get(s.url + "/v1/models", timeout=10).json()
        one = httpx.get(s.url + "/v1/models/tiny", timeout=10).json()
        absent = httpx.get(s.url + "/v1/models/gpt-9", timeout=10)
        empty = httpx.post(s.url + "/v1/embeddings", json={"model": embedder.name, "input": []}, timeout=10)
    want = embedder.embed(["a cat", "a dog"])
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert np.allclose(np.array([d["embedding"] for d in floats["data"]]), want, atol=1e-6)
    assert np.array_equal(np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), "<f4"), want[0])
    assert [m["id"] for m in models["data"]] == ["tiny", embedder.name]
    assert one["id"] == "tiny" and one["object"] == "model" and absent.status_code == 404
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "input"


def test_serve_refuses_a_public_host_without_a_key(monkeypatch):
    runner = CliRunner()
    r = runner.invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--api-key-env" in r.output and "0.0.0.0" in r.output
    monkeypatch.delenv("DCA_TEST_KEY", raising=False)
    r = runner.invoke(cli, ["serve", "--api-key-env", "DCA_TEST_KEY"])
    assert r.exit_code == 2 and "DCA_TEST_KEY is not set" in r.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


# --- the official openai client against the bundled GGUF and a MiniLM store -----------------------------------

@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    from dca.llm import LlamaCppLLM
    from dca.rag import open_store

    llm = LlamaCppLLM(bundled_gguf(), n_ctx=2048)
    tmp = tmp_path_factory.mktemp("serve")
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "rivers.md").write_text("# Rivers of Lorvania\n\nThe Zorblax river flows through the city of Quenton. "
                                    "It is 412 kilometres long and ends in the Amber Sea.\n")
    (docs / "bread.txt").write_text("To bake rye bread, knead the dough for ten minutes, then let it rise for one "
                                    "hour.\n")
    store = open_store(tmp / "store", create=True)
    assert not store.ingest([docs]).errors
    with ServerThread(create_app(Assistant(llm, store, max_tokens=48), model_id="smollm2")) as s:
        yield s, store
    llm.close()


@pytest.mark.slow
def test_the_openai_client_chats_streams_thinks_embeds_and_lists(real_server):
    openai = pytest.importorskip("openai")
    s, store = real_server
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    question = "Which city does the Zorblax river flow through?"

    assert [m.id for m in client.models.list()] == ["smollm2", store.embedder.name]

    resp = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": question}])
    assert "Quenton" in resp.choices[0].message.content
    sources = resp.model_extra["sources"]
    cited = [x for x in sources if x["cited"]]
    assert cited and cited[0]["source"].endswith("rivers.md")
    assert f"[{cited[0]['number']}]" in resp.choices[0].message.content
    assert resp.usage.prompt_tokens > 50 and resp.usage.completion_tokens > 0

    stream = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": question}],
                                            stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Quenton" in text and len(chunks) > 3
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert any(x["cited"] and x["source"].endswith("rivers.md") for x in last.model_extra["sources"])

    thought = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Is 17 a prime number?"}], max_tokens=16,
        extra_body={"dca": {"think": True, "thinking_budget": 32, "top_k": 0}})
    reasoning = thought.choices[0].message.model_extra["reasoning_content"]
    assert reasoning.strip() and thought.usage.completion_tokens_details.reasoning_tokens > 0

    emb = client.embeddings.create(model=store.embedder.name, input=["the Zorblax river", question])
    vectors = np.array([d.embedding for d in emb.data], dtype=np.float32)
    assert vectors.shape == (2, store.embedder.dim) == (2, 384)
    assert np.allclose(vectors, store.embedder.embed(["the Zorblax river", question]), atol=1e-5)

    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.slow
def test_the_chat_page_in_headless_chromium_streams_an_answer_with_its_cited_source(real_server, tmp_path):
    import os
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        if os.environ.get("DCA_REQUIRE_BROWSER"):
            pytest.fail("DCA_REQUIRE_BROWSER is set but chromium or chromedriver is not on PATH")
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    s, _ = real_server
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_bin))
    try:
        browser.get(s.url + "/")
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "model").text == "smollm2")
        browser.find_element(By.ID, "question").send_keys("Which city does the Zorblax river flow through?")
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 120).until(lambda b: b.find_elements(By.CSS_SELECTOR, "ol.sources li.cited"))
        answer = browser.find_element(By.CSS_SELECTOR, ".turn .answer").text
        cited = browser.find_element(By.CSS_SELECTOR, "ol.sources li.cited")
        cited_text, cited_number = cited.text, cited.get_attribute("data-number")
        shot = tmp_path / "chat-page.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("DCA_TEST_ARTIFACTS"):
            shutil.copy(shot, os.path.join(os.environ["DCA_TEST_ARTIFACTS"], shot.name))
    finally:
        browser.quit()
    assert "Quenton" in answer and re.search(r"\[\d\]", answer)
    assert "rivers.md" in cited_text and f"[{cited_number}]" in answer
    assert shot.stat().st_size > 10_000
