"""``dca serve`` under load and faults, and its overhead against the in-process ``Assistant``.

One process: the bundled SmolLM2-135M (or ``-m MODEL``) loaded once, served by :class:`dca.server.ServerThread` on
127.0.0.1 (loopback only), clients on asyncio + httpx. Four parts, each printed:

1. Load: ``--clients`` (16) concurrent streaming clients, each a different short question, ``--max-tokens`` answer
   tokens; all must complete with a non-empty answer. Time to first token (first content chunk) and total, p50/p99.
2. A full queue: ``queue_size + 2`` requests at once against a server with a queue of ``--small-queue`` (2): one runs,
   ``queue_size`` wait, the rest must get 503 with Retry-After; every admitted one completes.
3. A client that disconnects mid-stream: a long answer is read for a few chunks, then the connection is closed; the
   generation must stop within 1 s (the model's worker idle again) and the next request be served.
4. Overhead: the same prompt answered greedily ``--rounds`` times in process (``Assistant.stream``) and through the
   server (a streaming request), alternating; tokens/s of each = (answer tokens - 1) / (last piece - first piece),
   the decode rate both sides see. Target: server / in-process >= 0.9.

    .venv/bin/python benchmarks/serve_load.py [-m MODEL] [--clients 16] [--max-tokens 48] [--rounds 3]
        [--json-out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from _common import run_main, write_json

QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "What is 12 times 12?",
    "Why is the sky blue?", "Who wrote Hamlet?", "What does a CPU do?", "Give a synonym for happy.",
    "How many legs does a spider have?", "What is the boiling point of water?", "Name a planet with rings.",
    "What language is spoken in Brazil?", "What is photosynthesis?", "How many days are in a leap year?",
    "What is the largest ocean?", "Translate 'thank you' into Spanish.", "What is a prime number?",
]
LONG = "Write a long story about a lighthouse keeper and the sea, in many paragraphs."


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    i = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[i]


async def stream_one(client, url: str, question: str, max_tokens: int) -> dict:
    body = {"model": "m", "stream": True, "max_tokens": max_tokens, "messages": [{"role": "user", "content": question}]}
    t0 = time.perf_counter()
    first = last = None
    text, pieces = "", 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "retry_after": r.headers.get("retry-after"),
                    "error": json.loads(await r.aread())["error"]}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            delta = event["choices"][0]["delta"] if event["choices"] else {}
            if delta.get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                text += delta["content"]
                pieces += 1
    end = time.perf_counter()
    return {"status": 200, "text": text, "pieces": pieces, "ttft_s": (first or end) - t0, "total_s": end - t0,
            "decode_s": (last - first) if first and last else 0.0}


async def load(url: str, clients: int, max_tokens: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        results = await asyncio.gather(*(stream_one(client, url, QUESTIONS[i % len(QUESTIONS)], max_tokens)
                                         for i in range(clients)))
    ok = [r for r in results if r["status"] == 200 and r["text"].strip()]
    ttft = [r["ttft_s"] for r in ok]
    total = [r["total_s"] for r in ok]
    return {"clients": clients, "completed_with_answer": len(ok),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "total_p50_s": percentile(total, 50), "total_p99_s": percentile(total, 99)}


async def full_queue(url: str, queue_size: int, max_tokens: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        tasks = []
        for i in range(queue_size + 2):
            tasks.append(asyncio.create_task(stream_one(client, url, QUESTIONS[i], max_tokens)))
            await asyncio.sleep(0.05)  # in order: the first runs, the next queue_size wait, the rest are refused
        results = await asyncio.gather(*tasks)
    refused = [r for r in results if r["status"] == 503]
    return {"requests": len(results), "queue_size": queue_size, "refused_503": len(refused),
            "retry_after": [r["retry_after"] for r in refused],
            "admitted_completed": sum(r["status"] == 200 and bool(r["text"].strip()) for r in results)}


def disconnect(server, url: str) -> dict:
    import httpx

    engine = server.app.state.engine
    body = {"model": "m", "stream": True, "max_tokens": 400, "messages": [{"role": "user", "content": LONG}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        seen = 0
        for line in r.iter_lines():
            seen += '"content"' in line
            if seen >= 5:
                break
        left = time.perf_counter()
    while engine.running is not None and time.perf_counter() - left < 10:
        time.sleep(0.005)
    stopped_s = time.perf_counter() - left
    t0 = time.perf_counter()
    nxt = httpx.post(url + "/v1/chat/completions", timeout=60,
                     json={"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": QUESTIONS[0]}]})
    return {"generation_stopped_after_s": stopped_s, "next_status": nxt.status_code,
            "next_answer": nxt.json()["choices"][0]["message"]["content"], "next_s": time.perf_counter() - t0}


def in_process_rate(bot, question: str, max_tokens: int) -> tuple[float, int]:
    from dataclasses import replace

    bot.config = replace(bot.config, max_tokens=max_tokens)
    bot.reset()
    first = last = None
    text = ""
    for chunk in bot.stream(question):
        if chunk.kind == "answer" and chunk.text:
            now = time.perf_counter()
            first = first or now
            last = now
            text += chunk.text
    bot.reset()
    n = bot.llm.count_tokens(text)
    return (n - 1) / (last - first), n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default=None, help="GGUF path or name (default: the bundled model)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--small-queue", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)

    from dca.assistant import Assistant
    from dca.llm import load_llm
    from dca.server import ServerThread, create_app

    llm = load_llm(args.model, n_ctx=2048)
    report = {"model": llm.name}

    bot = Assistant(llm, None, max_tokens=args.max_tokens)
    with ServerThread(create_app(bot, model_id="m", queue_size=max(16, args.clients))) as s:
        report["load"] = asyncio.run(load(s.url, args.clients, args.max_tokens))
        print("load:", json.dumps(report["load"]))
        report["disconnect"] = disconnect(s, s.url)
        print("disconnect:", json.dumps(report["disconnect"]))

        # overhead: the same prompt, greedy, alternating in process and through the server
        rates = {"in_process": [], "server": []}
        tokens = {"in_process": [], "server": []}
        question, n = LONG, 128
        for _ in range(args.rounds):
            rate, count = in_process_rate(Assistant(llm, None), question, n)
            rates["in_process"].append(rate)
            tokens["in_process"].append(count)
            r = asyncio.run(_one(s.url, question, n))
            count = llm.count_tokens(r["text"])
            rates["server"].append((count - 1) / r["decode_s"])
            tokens["server"].append(count)
        ratio = statistics.mean(rates["server"]) / statistics.mean(rates["in_process"])
        report["overhead"] = {"in_process_tok_s": statistics.mean(rates["in_process"]),
                              "server_tok_s": statistics.mean(rates["server"]), "ratio": ratio, "tokens": tokens,
                              "rounds": args.rounds}
        print(f"overhead: in process {report['overhead']['in_process_tok_s']:.1f} tok/s, through the server "
              f"{report['overhead']['server_tok_s']:.1f} tok/s: {ratio:.3f}x (target >= 0.9); tokens {tokens}")

    with ServerThread(create_app(Assistant(llm, None, max_tokens=args.max_tokens), model_id="m",
                                 queue_size=args.small_queue)) as s:
        report["full_queue"] = asyncio.run(full_queue(s.url, args.small_queue, args.max_tokens))
        print("full queue:", json.dumps(report["full_queue"]))

    ld, fq, dc = report["load"], report["full_queue"], report["disconnect"]
    checks = {
        "all clients answered": ld["completed_with_answer"] == ld["clients"],
        "full queue refused with 503 + Retry-After": fq["refused_503"] == 1 and all(fq["retry_after"])
        and fq["admitted_completed"] == fq["requests"] - 1,
        "disconnect stopped within 1 s": dc["generation_stopped_after_s"] < 1.0 and dc["next_status"] == 200,
        "overhead ratio >= 0.9": report["overhead"]["ratio"] >= 0.9,
    }
    report["checks"] = checks
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json_out:
        write_json(args.json_out, report)
    llm.close()
    return 0 if all(checks.values()) else 1


async def _one(url: str, question: str, max_tokens: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        return await stream_one(client, url, question, max_tokens)


if __name__ == "__main__":
    run_main(main)
