"""``dca quant check``: how closely a GGUF (run by llama.cpp) follows the transformers model it was exported from.

On real text, teacher-forced (both models read the same token ids, tokenized by the reference's tokenizer,
in windows of ``window`` tokens): top-1 agreement of the next-token predictions, the mean KL divergence
KL(reference || GGUF) of the next-token distributions, the largest absolute logit difference, and the perplexity
of each. It also renders a conversation with a think block through the chat template on both sides (transformers'
``apply_chat_template``; the GGUF's ``tokenizer.chat_template`` as llama-cpp-python renders it, tokenized by
llama.cpp) and compares the token ids.

Agreement below 100% is expected even without weight quantization error: for quantized weight types llama.cpp
also quantizes the activations of each matrix product (to 8 bits), so a GGUF whose weights equal the
reference's exactly (the bundled SmolLM2-135M Q4_1 file against its own dequantized weights) agrees on 96.7% of
positions of the default text; F16 files, which keep activations in floating point, on 99.8%.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, ModelError, QuantError, missing
from ..llm.registry import exported_lora
from ..progress import Progress, ProgressFn, emitter
from .export import read_manifest

log = logging.getLogger(__name__)

#: The conversation whose chat-template rendering is compared: system, user, assistant with a think block, user.
CHAT_PROBE = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "<think>\nThe user asks about France. Its capital is Paris.\n</think>\n\n"
                                     "The capital of France is Paris."},
    {"role": "user", "content": "And the capital of Italy?"},
)
_DECODE_PROMPT_TOKENS = 16


def default_text() -> tuple[str, str]:
    """(text, name) of the default evaluation text: the topic help of Python's own documentation
    (``pydoc_data.topics``, shipped with CPython), topics in sorted order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)), "pydoc_data.topics"


@dataclass
class CheckConfig:
    """Settings of :func:`check`; the arguments and flags of ``dca quant check`` resolve into this.

    Args:
        ggufs: the GGUF files to check (GGUF...).
        reference: the model they came from (HF dir, adapter, GGUF), as ``dca quant export`` takes it
            (``--reference``); None reads it from each GGUF's manifest.
        base: the base model of an adapter reference (``--base``); None: from the manifest or adapter config.
        text_path: a UTF-8 text file to evaluate on (``--text-path``); None uses :func:`default_text`.
        tokens: tokens of text evaluated (``--tokens``), split into windows; fewer when the text is shorter.
        window: tokens per teacher-forced window (``--window``); each window starts a fresh context.
        decode_tokens: tokens generated greedily to time decoding (``--decode-tokens``); 0 skips it.
        threads: llama.cpp threads; None uses one per logical CPU (``--threads``).

    Raises:
        ConfigError: a value is out of range or a file is missing; the message names the flag.
    """

    ggufs: Sequence[Path]
    reference: Path | None = None
    base: Path | None = None
    text_path: Path | None = None
    tokens: int = 2048
    window: int = 512
    decode_tokens: int = 32
    threads: int | None = None

    def __post_init__(self):
        self.ggufs = [Path(p).expanduser() for p in self.ggufs]
        if not self.ggufs:
            raise ConfigError("give at least one GGUF file to check")
        for p in self.ggufs:
            if not p.is_file():
                raise ConfigError(f"GGUF {p}: no such file")
        for name in ("reference", "base", "text_path"):
            value = getattr(self, name)
            if value is not None:
                value = Path(value).expanduser()
                setattr(self, name, value)
                if not value.exists():
                    raise ConfigError(f"--{name.replace('_', '-')} {value}: no such file or directory")
        if self.tokens < 2:
            raise ConfigError(f"--tokens must be >= 2, got {self.tokens}")
        if self.window < 2:
            raise ConfigError(f"--window must be >= 2, got {self.window}")
        if self.decode_tokens < 0:
            raise ConfigError(f"--decode-tokens must be >= 0, got {self.decode_tokens}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")


@dataclass
class ChatTemplateCheck:
    """The chat template rendered and tokenized on both sides for :data:`CHAT_PROBE`.

    Attributes:
        match: True when the token ids are identical; None when neither side has a template.
        reference_ids: ids from transformers' ``apply_chat_template``.
        gguf_ids: ids from the GGUF's template, rendered by llama-cpp-python and tokenized by llama.cpp.
        first_difference: index of the first differing id; None when they match.
    """

    match: bool | None
    reference_ids: list[int] = field(default_factory=list)
    gguf_ids: list[int] = field(default_factory=list)
    first_difference: int | None = None


@dataclass
class CheckResult:
    """How one GGUF compares with its reference.

    Attributes:
        path: the GGUF.
        quant_type: from its manifest, else the GGUF's ``general.file_type`` name.
        size_bytes: file size.
        reference: the reference model's path.
        text: where the text came from.
        tokens: predictions compared (all positions of all windows).
        top1_agreement: fraction of positions whose argmax token is the same, in [0, 1].
        mean_kl: mean over positions of KL(reference || GGUF), nats.
        max_abs_logit_diff: largest |logit difference| over all positions and tokens.
        perplexity: of the GGUF on the text (exp of the mean next-token NLL).
        reference_perplexity: of the reference on the same windows.
        eval_tokens_per_s: llama.cpp throughput reading the windows (prompt processing), tokens/s.
        decode_tokens_per_s: llama.cpp greedy decoding speed, tokens/s; 0 when not measured.
        chat_template: the chat-template comparison.
    """

    path: Path
    quant_type: str
    size_bytes: int
    reference: str
    text: str
    tokens: int
    top1_agreement: float
    mean_kl: float
    max_abs_logit_diff: float
    perplexity: float
    reference_perplexity: float
    eval_tokens_per_s: float
    decode_tokens_per_s: float
    chat_template: ChatTemplateCheck


def _reference_of(cfg: CheckConfig, gguf: Path) -> tuple[Path, Path | None]:
    if cfg.reference is not None:
        return cfg.reference, cfg.base
    manifest = read_manifest(gguf)
    if manifest is None:
        raise QuantError(f"{gguf} has no dca manifest beside it; name the model it came from with --reference SRC")
    src = manifest.get("source") or {}
    ref = Path(src.get("path", ""))
    if not src.get("path") or not ref.exists():
        raise QuantError(f"{gguf}: its source {src.get('path')!r} no longer exists; pass --reference SRC")
    base = cfg.base or (Path(src["base"]) if src.get("base") else None)
    return ref, base


def _windows(tokenizer, text: str, tokens: int, window: int) -> list[list[int]]:
    """Token ids of ``text`` cut into windows; each starts with BOS when the tokenizer adds one."""
    ids: list[int] = []
    chars = tokens * 8
    while True:
        ids = list(tokenizer(text[:chars], add_special_tokens=False)["input_ids"])
        if len(ids) > tokens or chars >= len(text):
            break
        chars *= 2
    ids = ids[:tokens]
    probe = list(tokenizer("a")["input_ids"])
    bos = tokenizer.bos_token_id if probe and probe[0] == tokenizer.bos_token_id else None
    step = window - (bos is not None)
    return [([bos] if bos is not None else []) + ids[i:i + step] for i in range(0, len(ids), step)
            if len(ids[i:i + step]) >= 2]


def _log_softmax(x):
    import numpy as np

    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _compare(ref_logits, gguf_logits, ids) -> dict:
    """Sums over the positions of one window (float64, in row blocks to bound memory)."""
    import numpy as np

    n = len(ids)
    agree = kl = nll_ref = nll_gguf = 0.0
    max_diff = 0.0
    for s in range(0, n, 64):
        a, b = ref_logits[s:s + 64], gguf_logits[s:s + 64]
        lp, lq = _log_softmax(a), _log_softmax(b)
        agree += float((a.argmax(-1) == b.argmax(-1)).sum())
        kl += float((np.exp(lp) * (lp - lq)).sum())
        max_diff = max(max_diff, float(np.abs(a.astype(np.float64) - b).max()))
        rows = np.arange(s, min(s + 64, n - 1))  # positions that have a next token
        if len(rows):
            nxt = np.asarray(ids)[rows + 1]
            nll_ref -= float(lp[rows - s, nxt].sum())
            nll_gguf -= float(lq[rows - s, nxt].sum())
    return {"agree": agree, "kl": kl, "max_diff": max_diff, "nll_ref": nll_ref, "nll_gguf": nll_gguf,
            "positions": n, "predicted": n - 1}


def _reference_logits(model, windows: list[list[int]]) -> list:
    import torch

    out = []
    with torch.no_grad():
        for ids in windows:
            out.append(model(torch.tensor([ids])).logits[0].float().numpy())
    return out


def _hf_chat_ids(tokenizer) -> list[int] | None:
    if not getattr(tokenizer, "chat_template", None):
        return None
    ids = tokenizer.apply_chat_template(list(CHAT_PROBE), tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _gguf_chat_ids(llm) -> list[int] | None:
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def text(tid: int) -> str:
        return llm.detokenize([tid], special=True).decode("utf-8", errors="ignore") if tid >= 0 else ""

    fmt = Jinja2ChatFormatter(template=template, eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()),
                              add_generation_prompt=True)
    prompt = fmt(messages=[dict(m) for m in CHAT_PROBE]).prompt
    return list(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))


def _chat_check(ref_ids, gguf_ids) -> ChatTemplateCheck:
    if ref_ids is None and gguf_ids is None:
        return ChatTemplateCheck(match=None)
    ref_ids, gguf_ids = ref_ids or [], gguf_ids or []
    first = next((i for i, (a, b) in enumerate(zip(ref_ids, gguf_ids)) if a != b), None)
    if first is None and len(ref_ids) != len(gguf_ids):
        first = min(len(ref_ids), len(gguf_ids))
    return ChatTemplateCheck(match=first is None, reference_ids=ref_ids, gguf_ids=gguf_ids, first_difference=first)


def _quant_type(llm, gguf: Path) -> str:
    try:
        manifest = read_manifest(gguf)
    except QuantError:
        manifest = None
    if manifest and manifest.get("quant_type"):
        return manifest["quant_type"]
    ftype = llm.metadata.get("general.file_type")
    from .quantize import LLAMA_CPP_TYPES, WRITE_TYPES

    names = {v: k for k, v in {**WRITE_TYPES, **LLAMA_CPP_TYPES}.items()}
    return names.get(int(ftype), f"ftype {ftype}") if ftype is not None else "?"


def _decode_speed(llm, prompt: list[int], n: int) -> float:
    if n <= 0:
        return 0.0
    llm.reset()
    times = []
    for i, _ in enumerate(llm.generate(prompt, temp=0.0, top_k=1, reset=True)):
        times.append(time.perf_counter())
        if i + 1 >= n:
            break
    # the first token includes the prompt evaluation: time the others
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def check(cfg: CheckConfig, progress: ProgressFn | None = None) -> list[CheckResult]:
    """Compare each GGUF of ``cfg.ggufs`` with its reference model on real text and on the chat template.

    The reference is loaded once for consecutive GGUFs that share it, and its logits are computed once.

    Args:
        cfg: the settings.
        progress: called with a :class:`~dca.progress.Progress` (job ``check``, unit ``models``: the GGUFs done)
            as each step starts, its ``phase`` saying what runs; None for none.

    Returns:
        One result per GGUF, in the order given.

    Raises:
        QuantError: a GGUF has no manifest and no ``reference`` was given; llama.cpp cannot load a GGUF;
            the GGUF's vocabulary differs in size from the reference's; the text is too short.
        MissingDependencyError: transformers, gguf or llama-cpp-python is missing.
        ConfigError: ``text_path`` is not UTF-8 text.
    """
    try:
        import llama_cpp
    except ImportError as e:
        raise missing("llama_cpp (llama-cpp-python)", "chat") from e
    import numpy as np

    from .source import load_source

    emit = emitter(progress)

    def step(phase: str) -> None:
        emit(Progress("check", phase=phase, done=len(results), total=len(cfg.ggufs), unit="models"))

    if cfg.text_path is not None:
        try:
            text, text_name = cfg.text_path.read_text(encoding="utf-8"), str(cfg.text_path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--text-path {cfg.text_path}: not readable as UTF-8 text ({e})") from e
    else:
        text, text_name = default_text()
    results = []
    cached_key = cached = None
    for gguf in cfg.ggufs:
        ref, base = _reference_of(cfg, gguf)
        if (ref, base) != cached_key:
            step(f"loading the reference {ref}")
            loaded = load_source(ref, base=base, dtype="float32")
            windows = _windows(loaded.tokenizer, text, cfg.tokens, cfg.window)
            if not windows:
                raise QuantError(f"the text ({text_name}) has fewer than 2 tokens")
            step("reference logits")
            cached = (loaded, windows, _reference_logits(loaded.model, windows), _hf_chat_ids(loaded.tokenizer))
            cached_key = (ref, base)
        loaded, windows, ref_logits, ref_chat = cached
        step(f"evaluating {gguf.name}")
        n_ctx = max(len(w) for w in windows) + _DECODE_PROMPT_TOKENS + cfg.decode_tokens
        try:
            adapter = exported_lora(gguf)  # a base whose student adapter llama.cpp applies at run time
            llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                  logits_all=True, n_threads=cfg.threads or os.cpu_count(), verbose=False,
                                  lora_path=str(adapter) if adapter else None)
        except ModelError as e:
            raise QuantError(str(e)) from e
        except (ValueError, RuntimeError, OSError) as e:
            raise QuantError(f"{gguf}: llama.cpp could not load it ({e})") from e
        try:
            if llm.n_vocab() != ref_logits[0].shape[-1]:
                raise QuantError(f"{gguf} has {llm.n_vocab()} tokens, its reference {ref} "
                                 f"{ref_logits[0].shape[-1]}: not the same model")
            totals: dict[str, float] = {}
            eval_s = 0.0
            for ids, logits in zip(windows, ref_logits):
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(ids)
                eval_s += time.perf_counter() - t0
                stats = _compare(logits, np.array(llm.scores[:len(ids)]), ids)
                for k, v in stats.items():
                    totals[k] = max(totals.get(k, 0.0), v) if k == "max_diff" else totals.get(k, 0.0) + v
            decode = _decode_speed(llm, windows[0][:_DECODE_PROMPT_TOKENS], cfg.decode_tokens)
            chat = _chat_check(ref_chat, _gguf_chat_ids(llm))
            quant_type = _quant_type(llm, gguf)
        finally:
            llm.close()
        results.append(CheckResult(
            path=gguf, quant_type=quant_type, size_bytes=gguf.stat().st_size, reference=str(ref), text=text_name,
            tokens=int(totals["positions"]), top1_agreement=totals["agree"] / totals["positions"],
            mean_kl=totals["kl"] / totals["positions"], max_abs_logit_diff=totals["max_diff"],
            perplexity=float(np.exp(totals["nll_gguf"] / totals["predicted"])),
            reference_perplexity=float(np.exp(totals["nll_ref"] / totals["predicted"])),
            eval_tokens_per_s=totals["positions"] / eval_s if eval_s else 0.0, decode_tokens_per_s=decode,
            chat_template=chat))
    return results
