"""Issue 19's verifier experiment on a CUDA GPU: a student's samples, a verifier's data and its search, batched.

dca samples one question at a time in llama.cpp on the CPU; on a GPU that leaves the device idle. This script
runs the same work with transformers on a model directory that ``dca distill train`` wrote, batched *across*
questions (thousands of sequences per ``generate`` call), and then hands the completions to dca's own code:
``dca distill verifier``'s :func:`~dca.distill.verifier.make_verifier_data` (labels, ``orm.jsonl``, report) and
``dca eval``'s :func:`~dca.eval.harness.run_eval` (strategies, votes, the verifier's choices, ``predictions.jsonl``
and reports that ``dca eval compare`` reads), and ``dca distill star``'s :func:`~dca.star.run_star` (issue 20,
``star``: one iteration, evaluated with ``eval``). :class:`BatchedHF` is a :class:`dca.llm.LLM` whose ``sample`` and
``generate`` answer from completions drawn beforehand (:meth:`BatchedHF.prefill`) for the same prompt and settings,
and draw on the spot otherwise (counted as ``misses``), so every figure comes from dca's code paths.

Decoding as dca's llama.cpp sampler does it (:func:`dca.llm.sampling.sample_parallel`): the CTRL repeat penalty
over a sample's last 64 generated tokens (greedy: the last 64 tokens, prompt included, as llama-cpp-python), then
temperature, top-k 64 and top-p 0.95; ``mean_logprob`` at temperature 1; with ``--tools calculator`` the tool's
replies written in as forced tokens (sampling only, not greedy). Seeds are torch's, not llama.cpp's, so the draws
differ from a CPU run's; the model runs in bf16 on the GPU (fp32 on the CPU), not as a quantized GGUF.
``VERIFIER_CUDA_SEQUENCES`` sets the sequences decoded together (2048) and ``VERIFIER_CUDA_CACHE`` transformers'
``cache_implementation`` (e.g. ``static``; the default dynamic cache reached 12.5k tok/s on an H200).

    python benchmarks/verifier_cuda.py data gsm8k_train.jsonl -m student/model -o vdata --samples 8 --limit 1500
    python benchmarks/verifier_cuda.py eval gsm8k_test.jsonl -m student/model -o eval/greedy --limit 500
    python benchmarks/verifier_cuda.py eval gsm8k_test.jsonl -m student/model -o eval/wv8 --limit 500 --samples 8 \\
        --verifier orm/model --strategy weighted_vote
    python benchmarks/verifier_cuda.py auroc heldout-vdata --verifier orm/model --json-out auroc.json
    python benchmarks/verifier_cuda.py star gsm8k_train.jsonl -m student/model -o star --samples 8 --limit 2000

``benchmarks/verifier_cuda.sh`` chains these with ``dca distill train`` (the run of benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

from _common import read_jsonl, run_main, write_json
from transformers import LogitsProcessor

from dca.llm.base import LLM, Completion
from dca.star import hint_prompt

TOP_K, TOP_P, PENALTY_LAST_N = 64, 0.95, 64  # dca.llm.sampling's
MAX_SEQUENCES = int(os.environ.get("VERIFIER_CUDA_SEQUENCES", 2048))  # sequences decoded together
CACHE = os.environ.get("VERIFIER_CUDA_CACHE") or None  # transformers' cache_implementation, e.g. "static"


class _Decoding(LogitsProcessor):
    """A transformers logits processor: dca's sampling chain, each chosen token's log-probability, and the tools.

    With ``tools`` each row has a :class:`dca.tools.ToolRunner`: when a row's text ends in a complete call (the
    calculator's ``<<48/2=``), the tokens of the reply (``24>>``) are forced as its next tokens, as dca's llama.cpp
    sampler writes them in; a call that ends inside a token is left to the model (that sampler rewrites the token).
    """

    def __init__(self, prompt_len: int, temperature: float, repeat_penalty: float, *, rows: int = 0, tools=(),
                 tokenizer=None, watch=frozenset(), end_ids=()):
        from dca.tools import ToolRunner

        self.prompt_len, self.temperature, self.penalty = prompt_len, temperature, repeat_penalty
        self.prev = None  # log-softmax of the last step's raw logits
        self.logps = []  # per step: the log-probability of the token chosen there
        self.tok, self.watch, self.end_ids = tokenizer, watch, set(end_ids)
        self.runners = [ToolRunner(tools) for _ in range(rows)] if tools else None
        self.forced = [[] for _ in range(rows)]  # reply tokens still to write, per row
        self.forced_at = [set() for _ in range(rows)]  # steps whose token a tool wrote, per row
        self.done = [False] * rows
        self.step = 0

    def __call__(self, input_ids, scores):
        import torch

        raw = scores.float()
        if self.prev is not None:
            self.logps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(raw, dim=-1)
        x = raw
        if self.penalty != 1.0:
            recent = input_ids[:, -PENALTY_LAST_N:] if self.temperature == 0 else \
                input_ids[:, self.prompt_len:][:, -PENALTY_LAST_N:]
            if recent.shape[1]:
                vals = x.gather(1, recent)
                x = x.scatter(1, recent, torch.where(vals > 0, vals / self.penalty, vals * self.penalty))
        if self.temperature != 0:
            vals, idx = torch.topk(x / self.temperature, TOP_K, dim=-1)
            probs = torch.softmax(vals, dim=-1)
            vals = vals.masked_fill(torch.cumsum(probs, dim=-1) - probs >= TOP_P, float("-inf"))
            x = torch.full_like(x, float("-inf")).scatter(1, idx, vals)
        if self.runners is not None:
            x = self._tools(input_ids, x)
        self.step += 1
        return x

    def _tools(self, input_ids, x):
        import torch

        last = input_ids[:, -1].tolist()
        rows, ids = [], []
        for r, runner in enumerate(self.runners):
            if self.step and last[r] in self.end_ids:
                self.done[r] = True
            if self.done[r]:
                continue
            if not self.forced[r] and self.step and last[r] in self.watch:
                text = self.tok.decode(input_ids[r, self.prompt_len:].tolist(), skip_special_tokens=False)
                hit = runner.step(text)
                if hit is not None:
                    cut, insert = hit
                    if cut == len(text):
                        self.forced[r] = self.tok(insert, add_special_tokens=False)["input_ids"][:32]
                    else:
                        runner.retract()
            if self.forced[r]:
                rows.append(r)
                ids.append(self.forced[r].pop(0))
                self.forced_at[r].add(self.step)
        if rows:
            r_t = torch.tensor(rows, device=x.device)
            x[r_t] = float("-inf")
            x[r_t, torch.tensor(ids, device=x.device)] = 0.0
        return x

    def finish(self, last_tokens):
        """The (sequences, steps) log-probabilities, the last step's token given."""
        import torch

        self.logps.append(self.prev.gather(1, last_tokens[:, None]).squeeze(1))
        return torch.stack(self.logps, dim=1)


class BatchedHF(LLM):
    """A transformers causal LM as a :class:`dca.llm.LLM` that samples, decodes greedily and scores continuations,
    with completions drawn beforehand in large batches (:meth:`prefill`).

    Args:
        path: a model directory with its tokenizer and chat template (``dca distill train``'s ``model/``).
        device: ``cuda`` when there is one, else ``cpu``.
    """

    can_sample = True
    can_score = True
    can_use_tools = True  # in sample(): the calculator's replies are forced tokens (_Decoding)
    think_tags = None

    def __init__(self, path: str | Path, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"{path}: not a model directory (no config.json); give dca distill train's RUN/model")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(self.device).eval()
        self.name = str(path)
        self.context_length = min(int(getattr(self.model.config, "max_position_embeddings", 2048)), 8192)
        eot = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.end_token = eot if isinstance(eot, int) and eot != self.tok.unk_token_id else self.tok.eos_token_id
        self.end_ids = sorted({self.end_token, self.tok.eos_token_id} - {None})
        self.stops = tuple(t for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>") if t in self.tok.get_vocab())
        vocab = self.tok.convert_ids_to_tokens(list(range(len(self.tok))))
        self.watch = frozenset(i for i, t in enumerate(vocab) if t and "=" in t)  # tokens that can end a call
        self._cache: dict[tuple, list[Completion]] = {}
        self.misses = 0
        self.generated = 0

    # -- the LLM protocol ------------------------------------------------------------------------------------
    def render(self, messages: Sequence[dict]) -> str:
        return self.tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompt, *, max_tokens, temperature=0.0, stop=(), repeat_penalty=1.0, cancel=None, **_):
        yield self._completions(prompt, 1, max_tokens, temperature, repeat_penalty, stop, ())[0].text

    def sample(self, prompt, *, n, max_tokens, temperature=0.7, repeat_penalty=1.0, stop=(), seed=0, cancel=None,
               tools=(), **_):
        return self._completions(prompt, n, max_tokens, temperature, repeat_penalty, stop,
                                 tuple(t.name for t in tools or ()))

    def score(self, prompt, continuations, *, cancel=None):
        out, decoded = self.score_many([prompt], continuations, cancel=cancel)
        return out[0], decoded - self.count_tokens(prompt)

    def score_many(self, prompts, continuations, *, cancel=None, chunk: int = 64):
        """log P(continuation + end of turn | prompt) for each pair: shape (len(prompts), len(continuations))."""
        import numpy as np
        import torch

        pairs = []
        for p in prompts:
            head = self.tok(p, add_special_tokens=False)["input_ids"]
            for c in continuations:
                tail = self.tok(c, add_special_tokens=False)["input_ids"] + [self.end_token]
                pairs.append((head, tail))
        scores = np.empty(len(pairs))
        for s in range(0, len(pairs), chunk):
            batch = pairs[s:s + chunk]
            width = max(len(h) + len(t) for h, t in batch)
            ids = torch.full((len(batch), width), self.tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (h, t) in enumerate(batch):
                seq = h + t
                ids[i, :len(seq)] = torch.tensor(seq)
                mask[i, :len(seq)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for i, (h, t) in enumerate(batch):
                pos = torch.arange(len(h) - 1, len(h) + len(t) - 1, device=logp.device)
                scores[s + i] = logp[i, pos, torch.tensor(t, device=logp.device)].sum().item()
        decoded = sum(len(h) + len(t) for h, t in pairs)
        return scores.reshape(len(prompts), len(continuations)), decoded

    def close(self) -> None:
        self.model = None

    # -- batched drawing -------------------------------------------------------------------------------------
    @staticmethod
    def _key(prompt, n, max_tokens, temperature, repeat_penalty, tools):
        return prompt, n, max_tokens, round(float(temperature), 6), round(float(repeat_penalty), 6), tuple(tools)

    def _completions(self, prompt, n, max_tokens, temperature, repeat_penalty, stop, tools) -> list[Completion]:
        key = self._key(prompt, n, max_tokens, temperature, repeat_penalty, tools)
        if key not in self._cache:
            self.misses += 1
            self.prefill([prompt], n=n, max_tokens=max_tokens, temperature=temperature, repeat_penalty=repeat_penalty,
                         tools=tools)
        out = []
        for c in self._cache.pop(key):
            cut = min((c.text.find(s) for s in stop if s and s in c.text), default=-1)
            out.append(c if cut < 0 else Completion(c.text[:cut], c.tokens, c.mean_logprob, "stop", c.tool_calls))
        return out

    def prefill(self, prompts: Sequence[str], *, n: int, max_tokens: int, temperature: float,
                repeat_penalty: float = 1.0, tools: Sequence[str] = (), seed: int = 0, progress: bool = False) -> None:
        """Draw ``n`` completions of each prompt (``temperature`` 0: greedy, ``n`` 1), batched across prompts,
        and keep them for :meth:`sample` / :meth:`generate` with the same settings (``tools``: names of
        :data:`dca.tools.TOOLS` answered while sampling)."""
        import torch
        from transformers import GenerationConfig

        from dca.tools import get_tools

        tool_objs = get_tools(tuple(tools)) if tools else ()
        todo = sorted(set(prompts), key=lambda p: self.count_tokens(p))
        per = max(1, MAX_SEQUENCES // n)
        t0 = time.perf_counter()
        for b in range(0, len(todo), per):
            chunk = todo[b:b + per]
            enc = self.tok(chunk, add_special_tokens=False, padding=True, return_tensors="pt").to(self.device)
            plen = enc["input_ids"].shape[1]
            proc = _Decoding(plen, temperature, repeat_penalty, rows=len(chunk) * n, tools=tool_objs,
                             tokenizer=self.tok, watch=self.watch, end_ids=self.end_ids)
            gc = GenerationConfig(do_sample=temperature > 0, max_new_tokens=max_tokens, num_return_sequences=n,
                                  temperature=1.0, top_k=0, top_p=1.0, eos_token_id=self.end_ids,
                                  pad_token_id=self.tok.pad_token_id, cache_implementation=CACHE)
            torch.manual_seed(seed + b)
            with torch.no_grad():
                seqs = self.model.generate(**enc, generation_config=gc, logits_processor=[proc])
            gen = seqs[:, plen:]
            logps = proc.finish(gen[:, -1]).cpu()
            gen = gen.cpu()
            for i, prompt in enumerate(chunk):
                comps = []
                for j in range(n):
                    row = gen[i * n + j].tolist()
                    end = next((t for t, x in enumerate(row) if x in self.end_ids), None)
                    length = len(row) if end is None else end
                    text = self.tok.decode(row[:length], skip_special_tokens=False)
                    cut = min((text.find(s) for s in self.stops if s in text), default=-1)
                    finish = "stop" if end is not None or cut >= 0 else "length"
                    if cut >= 0:
                        text = text[:cut]
                    own = [t for t in range(length) if t not in proc.forced_at[i * n + j]]  # the model's tokens
                    lp = float(logps[i * n + j, own].mean()) if own else 0.0
                    calls = tuple(proc.runners[i * n + j].calls) if proc.runners else ()
                    comps.append(Completion(text, len(own), lp, finish, calls, end is not None))
                    self.generated += length
                self._cache[self._key(prompt, n, max_tokens, temperature, repeat_penalty, tuple(tools))] = comps
            if progress:
                done = min(b + per, len(todo))
                print(f"  drew {done}/{len(todo)} prompts x {n} ({time.perf_counter() - t0:.0f} s, "
                      f"{self.generated} tokens)", flush=True)


# -- commands ------------------------------------------------------------------------------------------------
def cmd_data(args) -> None:
    """``dca distill verifier`` with the samples drawn here in batches."""
    from dca.distill.generate import load_questions
    from dca.distill.verifier import Sampler, VerifierDataConfig, make_verifier_data

    cfg = VerifierDataConfig(args.questions, args.out, samples=args.samples, limit=args.limit,
                             max_tokens=args.max_tokens, max_wrong=args.max_wrong, seed=args.seed, force=args.force,
                             tools=args.tools)
    llm = BatchedHF(args.model)
    bot = Sampler(llm, samples=cfg.samples, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                  repeat_penalty=cfg.repeat_penalty, system_prompt=cfg.system_prompt, tools=cfg.tools).bot
    questions = [q for q in load_questions(cfg.questions)[0] if q.gold is not None][:cfg.limit]
    t0 = time.perf_counter()
    llm.prefill([bot.answer_prompt(q.question) for q in questions], n=cfg.samples, max_tokens=cfg.max_tokens,
                temperature=cfg.temperature, repeat_penalty=cfg.repeat_penalty, tools=cfg.tools, seed=cfg.seed,
                progress=True)
    drawn = time.perf_counter() - t0
    report = make_verifier_data(cfg, llm=llm)
    print(f"verifier data: {report.questions} questions, {report.samples} samples, {report.correct} right, "
          f"pass@{cfg.samples} {report.pass_at_k:.1%}, {report.orm_examples} ORM examples; drawn in {drawn:.0f} s "
          f"({llm.generated / max(drawn, 1e-9):.0f} tok/s); {llm.misses} drawn outside the batches")


def cmd_eval(args) -> None:
    """``dca eval --task gsm8k`` with the completions drawn here in batches (and a verifier, if given)."""
    from dca.assistant import Assistant
    from dca.assistant.verifier import Verifier
    from dca.eval.harness import EvalConfig, assistant_config, run_eval
    from dca.eval.tasks import load_items

    settings = {"samples": args.samples, "seed": args.seed}
    if args.strategy:
        settings["strategy"] = args.strategy
    if args.tools:
        if args.samples < 2:
            raise SystemExit("--tools: the batched path answers tool calls in sampling only (--samples >= 2)")
        settings["tools"] = args.tools
    cfg = EvalConfig("gsm8k", args.data, limit=args.limit, out_dir=args.out, force=args.force, **settings)
    llm = BatchedHF(args.model)
    bot = Assistant(model=llm)
    acfg = assistant_config(cfg, bot.config, with_store=False)
    bot.config = acfg
    if args.verifier:
        bot.verifier = Verifier(BatchedHF(args.verifier))
    items, _ = load_items("gsm8k", args.data, args.limit)
    k = acfg.k
    t0 = time.perf_counter()
    llm.prefill([bot.answer_prompt(it.question) for it in items], n=k, max_tokens=acfg.max_tokens,
                temperature=acfg.sample_temperature if k > 1 else acfg.temperature,
                repeat_penalty=acfg.repeat_penalty, tools=acfg.tools, seed=acfg.seed, progress=True)
    drawn = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = run_eval(cfg, assistant=bot)
    rest = time.perf_counter() - t1
    metrics = ", ".join(f"{m.name} {m.value:.1%}" for m in report.metrics.values())
    print(f"eval {args.out}: {metrics}; drawn in {drawn:.0f} s ({llm.generated} tokens), the rest (voting, "
          f"verifier) {rest:.0f} s; {llm.misses} drawn outside the batches")
    write_json(args.out / "timing.json", {"draw_s": drawn, "rest_s": rest, "generated_tokens": llm.generated,
                                          "items": len(items), "misses": llm.misses,
                                          "verifier_tokens": bot.verifier.tokens if bot.verifier else 0})


def cmd_auroc(args) -> None:
    """benchmarks/verifier_auroc.py for a verifier directory."""
    from verifier_auroc import measure, summary

    from dca.assistant.verifier import Verifier

    rows = read_jsonl(args.data_dir / "samples.jsonl", args.limit)
    k = len(rows[0]["samples"])
    res = {**measure(rows, Verifier(BatchedHF(args.verifier))), "questions": len(rows), "k": k}
    print(f"{summary(args.verifier, res, k)} ({res['samples']} samples, {res['right']} right, {args.data_dir})")
    write_json(args.json_out, res)


HINT_MARK = hint_prompt("", "")[:-3]  # "\n\n(Hint: the answer is": only rationalization asks it


class _StarHF(BatchedHF):
    """:class:`BatchedHF` for ``dca distill star``'s sampler: the k samples of every question not yet in
    ``samples.jsonl`` drawn in batches at load, and at the first rationalization asked, the hint prompts of every
    question without a right sample (read from ``samples.jsonl``, which the loop has finished by then)."""

    def __init__(self, path, cfg, questions, iteration_dir: Path):
        from dca.distill.verifier import Sampler

        super().__init__(path)
        self.cfg, self.questions, self.dir = cfg, questions, iteration_dir
        self.bot = Sampler(self, samples=cfg.samples, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                           repeat_penalty=cfg.repeat_penalty, system_prompt=cfg.system_prompt, tools=cfg.tools).bot
        done = {r["id"] for r in read_jsonl(self.dir / "samples.jsonl")} if (self.dir / "samples.jsonl").exists() \
            else set()
        self._draw([q.question for q in questions if q.id not in done], cfg.samples)
        self.hints_drawn = False

    def _draw(self, texts, n) -> None:
        t0, before = time.perf_counter(), self.generated
        self.prefill([self.bot.answer_prompt(t) for t in texts], n=n, max_tokens=self.cfg.max_tokens,
                     temperature=self.cfg.temperature, repeat_penalty=self.cfg.repeat_penalty, tools=self.cfg.tools,
                     seed=self.cfg.seed, progress=True)
        s = time.perf_counter() - t0
        print(f"star: {len(texts)} prompts x {n} drawn in {s:.0f} s "
              f"({(self.generated - before) / max(s, 1e-9):.0f} tok/s)", flush=True)

    def _completions(self, prompt, n, max_tokens, temperature, repeat_penalty, stop, tools):
        key = self._key(prompt, n, max_tokens, temperature, repeat_penalty, tools)
        if key not in self._cache and not self.hints_drawn and HINT_MARK in prompt:
            self.hints_drawn = True
            right = {r["id"] for r in read_jsonl(self.dir / "samples.jsonl") if any(s["correct"] for s in r["samples"])}
            done = {r["id"] for r in read_jsonl(self.dir / "rationales.jsonl")} \
                if (self.dir / "rationales.jsonl").exists() else set()
            self._draw([hint_prompt(q.question, q.gold) for q in self.questions if q.id not in right | done], n)
        return super()._completions(prompt, n, max_tokens, temperature, repeat_penalty, stop, tools)


def cmd_star(args) -> None:
    """``dca distill star`` (one iteration) with the samples and rationalizations drawn here in batches; the
    held-out evaluation is left to ``eval`` on ``OUT/iter-1/train/model`` (dca eval would load llama.cpp)."""
    from dca.distill.generate import load_questions
    from dca.star import StarConfig, run_star

    train = {"method": "full", "precision": "auto", "seq_len": 1024, "batch_size": 4, "grad_accum": 1,
             "gradient_checkpointing": False, "epochs": 1, "lr": args.lr, "eval_fraction": 0.01, "save_every": 100000,
             "seed": 2}
    if args.max_steps:
        train["max_steps"] = args.max_steps
    cfg = StarConfig(args.questions, args.out, model=str(args.model), iterations=1, samples=args.samples,
                     keep=args.keep, limit=args.limit, max_tokens=args.max_tokens, tools=args.tools, train=train,
                     qtype="F16", seed=args.seed, force=args.force)
    questions = [q for q in load_questions(cfg.questions)[0] if q.gold is not None][:cfg.limit]
    loaded = []

    def sampler_for(path):
        loaded.append(_StarHF(path, cfg, questions, cfg.out_dir / "iter-1"))
        return loaded[-1]

    t0 = time.perf_counter()
    report = run_star(cfg, sampler_for=sampler_for)
    it = report.iterations[-1]
    print(f"star: {it.questions} questions, {it.samples} samples, {it.correct} right, pass@{cfg.samples} "
          f"{it.pass_at_k:.1%}, {it.rationalized} rationalized ({it.rationales_kept} kept), {it.kept} traces; "
          f"{time.perf_counter() - t0:.0f} s; {sum(m.misses for m in loaded)} drawn outside the batches")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="dca distill verifier: k samples per question, labelled (batched)")
    d.add_argument("questions", type=Path)
    d.add_argument("-m", "--model", required=True)
    d.add_argument("-o", "--out", type=Path, required=True)
    d.add_argument("--samples", type=int, default=8)
    d.add_argument("--limit", type=int, default=None)
    d.add_argument("--max-tokens", type=int, default=256)
    d.add_argument("--max-wrong", type=int, default=4)
    e = sub.add_parser("eval", help="dca eval --task gsm8k (batched)")
    e.add_argument("data", type=Path)
    e.add_argument("-m", "--model", required=True)
    e.add_argument("-o", "--out", type=Path, required=True)
    e.add_argument("--limit", type=int, default=500)
    e.add_argument("--samples", type=int, default=1)
    e.add_argument("--verifier", default=None, help="the verifier's model directory")
    e.add_argument("--strategy", default=None, help="best_of_n | weighted_vote | self_consistency")
    a = sub.add_parser("auroc", help="a verifier's AUROC and choices on held-out verifier data")
    a.add_argument("data_dir", type=Path)
    a.add_argument("--verifier", required=True)
    a.add_argument("--limit", type=int, default=0)
    a.add_argument("--json-out", type=Path, default=None)
    t = sub.add_parser("star", help="dca distill star, one iteration (batched sampling; evaluate with eval)")
    t.add_argument("questions", type=Path)
    t.add_argument("-m", "--model", required=True, help="the model directory sampled from and fine-tuned")
    t.add_argument("-o", "--out", type=Path, required=True)
    t.add_argument("--samples", type=int, default=8)
    t.add_argument("--keep", type=int, default=4)
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--max-tokens", type=int, default=256)
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--max-steps", type=int, default=0)
    for s in (d, e, t):
        s.add_argument("--tools", type=lambda v: tuple(x for x in v.split(",") if x), default=(),
                       help="tools answered while sampling: calculator")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--force", action="store_true", help="start the output over")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    {"data": cmd_data, "eval": cmd_eval, "auroc": cmd_auroc, "star": cmd_star}[args.cmd](args)


if __name__ == "__main__":
    run_main(main)
