"""Teachers: the models that write reasoning traces, behind one :class:`Teacher` protocol.

* :class:`OpenAITeacher`: any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint (OpenAI,
  vLLM, llama.cpp's ``llama-server``, llama-cpp-python's ``llama_cpp.server``, Ollama, ...), over httpx.
* :class:`LlamaCppTeacher`: a local GGUF through :class:`dca.llm.LlamaCppLLM` (or any :class:`dca.llm.LLM`).
* :class:`TransformersTeacher`: a local Hugging Face model directory through transformers.

The reasoning is read from the response message's ``reasoning_content`` (DeepSeek API, vLLM) or ``reasoning``
(OpenRouter, Ollama) field, else from the model's own ``<think>...</think>`` block in the text
(DeepSeek-AI 2025, "DeepSeek-R1"). Sources: OpenAI Chat Completions API reference
(https://platform.openai.com/docs/api-reference/chat); retries follow "exponential backoff and jitter"
(AWS Architecture Blog, Brooker 2015) and RFC 9110 section 10.2.3 (``Retry-After``).
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import ModelError, TeacherError, missing
from ..thinking import THINK_OPEN, split_thinking

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
TEACHER_KINDS = ("openai", "gguf", "hf")
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
RETRY_AFTER_MAX_S = 600.0  # a longer Retry-After is cut to this


@dataclass(frozen=True)
class TeacherReply:
    """One completion of a teacher.

    Attributes:
        thinking: the reasoning, without think tags; "" when the model gave none.
        content: the answer after the reasoning (the whole text when there is no think block).
        finish: ``"stop"``, ``"length"`` (max_tokens reached) or None (unknown).
        prompt_tokens: tokens of the rendered prompt as counted by the teacher, or None when not reported.
        completion_tokens: generated tokens, or None when not reported.
        closed: False when the thinking was cut off (an unclosed ``<think>``, or a reasoning-only reply
            that hit ``max_tokens``), True otherwise.
    """

    thinking: str
    content: str
    finish: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    closed: bool = True


@runtime_checkable
class Teacher(Protocol):
    """A model that answers chat messages with a reasoning trace.

    Attributes:
        name: the model's name, stored in every trace.
        kind: ``openai``, ``llama-cpp`` or ``transformers``.
        params: settings that identify the model (base URL, path), stored in every trace; never secrets.
        concurrent: True when :meth:`complete` may run in several threads at once (HTTP teachers);
            local teachers are called one at a time.
    """

    name: str
    kind: str
    params: dict
    concurrent: bool

    def complete(self, messages: Sequence[dict], *, temperature: float, max_tokens: int, seed: int) -> TeacherReply:
        """One completion of ``[{"role", "content"}, ...]``; ``temperature=0`` is greedy.

        Raises:
            TeacherError: the completion failed; ``fatal`` says whether other samples can still succeed.
        """
        ...

    def close(self) -> None:
        """Release connections or model memory."""
        ...


def _finish(reason: object) -> str | None:
    return ({"stop": "stop", "eos": "stop", "length": "length", "max_tokens": "length"}.get(reason)
            if isinstance(reason, str) else None)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP-date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


class OpenAITeacher:
    """A model behind an OpenAI-compatible chat completions endpoint.

    Args:
        base_url: the API root that ``/chat/completions`` is appended to, e.g. ``https://api.openai.com/v1``
            or ``http://127.0.0.1:8080/v1``.
        model: the ``model`` field of each request.
        api_key_env: the environment variable holding the API key, read once here; when it is unset no
            ``Authorization`` header is sent (local servers need none).
        timeout_s: seconds allowed for one HTTP request (connect, write, read, pool).
        max_retries: retries of a request after a connection error, a timeout, 408/409/425/429 or a 5xx;
            0 never retries. Waits follow ``Retry-After`` when the server sends one, else exponential
            backoff (1 s doubling to 60 s) with jitter.
        transport: an ``httpx.BaseTransport`` to send requests through instead of the network (tests).
        sleep: the function that waits between retries (tests); by default a wait that :meth:`close` ends.

    Raises:
        MissingDependencyError: httpx is not installed.
    """

    kind = "openai"
    concurrent = True

    def __init__(self, base_url: str, model: str, *, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int = DEFAULT_MAX_RETRIES,
                 transport=None, sleep: Callable[[float], object] | None = None):
        try:
            import httpx
        except ImportError as e:
            raise missing("httpx", "distill") from e
        self.name = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.params = {"base_url": base_url.rstrip("/")}
        self.api_key_env = api_key_env
        self.max_retries = max_retries
        self._key = os.environ.get(api_key_env) or None
        self._closed = threading.Event()
        self._sleep = sleep or self._closed.wait
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers, transport=transport,
                                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    def _backoff(self, attempt: int) -> float:
        return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempt) * random.uniform(0.5, 1.0)

    def _fatal(self, status: int, detail: str) -> TeacherError:
        if status in (401, 403):
            key = (f"the API key in ${self.api_key_env} was refused" if self._key else
                   f"no API key was sent because ${self.api_key_env} is not set")
            return TeacherError(f"POST {self.url} answered {status} ({detail}): {key}; export {self.api_key_env}=... "
                                "with a valid key, or name another variable with --api-key-env", fatal=True)
        return TeacherError(f"POST {self.url} answered 404 ({detail}): check --base-url (the API root, usually ending "
                            f"in /v1, e.g. http://127.0.0.1:8080/v1) and --teacher-model {self.name!r}", fatal=True)

    def complete(self, messages: Sequence[dict], *, temperature: float, max_tokens: int, seed: int) -> TeacherReply:
        import httpx

        body = {"model": self.name, "messages": list(messages), "temperature": temperature,
                "max_tokens": max_tokens, "seed": seed, "n": 1}
        last = ""
        for attempt in range(self.max_retries + 1):
            if self._closed.is_set():
                raise TeacherError(f"POST {self.url}: the teacher was closed")
            wait = None
            try:
                r = self._client.post(self.url, json=body)
            except httpx.TransportError as e:  # connection refused or reset, timeouts
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    return self._parse(r)
                detail = f"{r.reason_phrase}: {r.text[:300].strip()}" if r.text.strip() else r.reason_phrase
                if r.status_code in (401, 403, 404):
                    raise self._fatal(r.status_code, detail)
                if r.status_code not in RETRY_STATUS and r.status_code < 500:
                    raise TeacherError(f"POST {self.url} answered {r.status_code} ({detail})")
                last = f"{r.status_code} ({detail})"
                wait = _retry_after(r.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            wait = self._backoff(attempt) if wait is None else wait * random.uniform(1.0, 1.1)
            log.warning("POST %s failed (%s); retry %d/%d in %.1fs", self.url, last, attempt + 1, self.max_retries,
                        wait)
            self._sleep(wait)
        raise TeacherError(f"POST {self.url} failed after {self.max_retries + 1} attempts; last: {last}")

    def _parse(self, r) -> TeacherReply:
        try:
            data = r.json()
            choice = data["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise TeacherError(f"POST {self.url} answered 200 but not a chat completion ({r.text[:200]!r})") from e
        finish = _finish(choice.get("finish_reason"))
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        if isinstance(reasoning, str) and reasoning.strip():
            _, content, _ = split_thinking(content)  # some servers also leave the tags in the content
            thinking, closed = reasoning.strip(), bool(content) or finish != "length"
        else:
            thinking, content, closed = split_thinking(content, finish=finish)
        usage = data.get("usage") or {}
        return TeacherReply(thinking, content, finish, usage.get("prompt_tokens"), usage.get("completion_tokens"),
                            closed)

    def close(self) -> None:
        self._closed.set()  # ends retry waits of requests still in flight
        self._client.close()


class LlamaCppTeacher:
    """A local chat model (:class:`dca.llm.LLM`, normally a GGUF in :class:`dca.llm.LlamaCppLLM`).

    Think tags are parsed from the generated text; when the chat template opens ``<think>`` itself, the
    output is read as starting inside the block.

    Args:
        llm: the loaded model; :meth:`from_model` loads one by name or path.
    """

    kind = "llama-cpp"
    concurrent = False

    def __init__(self, llm):
        from ..llm import check_llm

        self.llm = check_llm(llm)
        self.name = llm.name
        self.params = {"path": str(getattr(llm, "path", ""))} if getattr(llm, "path", None) else {}

    @classmethod
    def from_model(cls, model: str | Path | None, *, n_ctx: int = 4096) -> LlamaCppTeacher:
        """Load a GGUF by registered name or path (None: the bundled model).

        Raises:
            ModelError: not found or not loadable. MissingDependencyError: llama-cpp-python is missing.
        """
        from ..llm import load_llm

        return cls(load_llm(model, n_ctx=n_ctx))

    def complete(self, messages: Sequence[dict], *, temperature: float, max_tokens: int, seed: int) -> TeacherReply:
        prompt = self.llm.render(messages)
        try:
            (c,) = self.llm.sample(prompt, n=1, max_tokens=max_tokens, temperature=temperature, seed=seed)
        except (RuntimeError, ValueError) as e:  # llama_decode failures: the prompt does not fit, out of memory
            raise TeacherError(f"{self.name}: generation failed ({e})") from e
        text = THINK_OPEN + c.text if prompt.rstrip().endswith(THINK_OPEN) else c.text
        finish = c.finish if c.finish in ("stop", "length") else None
        thinking, content, closed = split_thinking(text, finish=finish)
        return TeacherReply(thinking, content, finish, self.llm.count_tokens(prompt), c.tokens, closed)

    def close(self) -> None:
        self.llm.close()


class TransformersTeacher:
    """A local Hugging Face causal LM directory run by transformers (on a GPU when torch sees one).

    Args:
        model_dir: a directory with ``config.json``, weights and a tokenizer that has a chat template.
        device: a torch device string; None picks ``cuda`` when available, else ``cpu``.

    Raises:
        MissingDependencyError: transformers or torch is not installed.
        ModelError: the directory is missing, not loadable, or its tokenizer has no chat template.
    """

    kind = "transformers"
    concurrent = False

    def __init__(self, model_dir: str | Path, *, device: str | None = None):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise missing("transformers", "distill") from e
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ModelError(f"--teacher-model {path}: not a Hugging Face model directory (no config.json)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype="auto")
        except (OSError, ValueError) as e:
            raise ModelError(f"--teacher-model {path}: transformers could not load it ({e})") from e
        if not self.tokenizer.chat_template:
            raise ModelError(f"--teacher-model {path}: the tokenizer has no chat template")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.name = path.name
        self.params = {"path": str(path.resolve())}
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self._eos = set(eos) | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())

    def complete(self, messages: Sequence[dict], *, temperature: float, max_tokens: int, seed: int) -> TeacherReply:
        import torch

        prompt = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        sampling = ({"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0
                    else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        torch.manual_seed(seed)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self._eos), 0)
        try:
            with torch.no_grad():
                out = self.model.generate(**enc, max_new_tokens=max_tokens, pad_token_id=pad, **sampling)
        except (RuntimeError, ValueError) as e:
            raise TeacherError(f"{self.name}: generation failed ({e})") from e
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        stopped = bool(new) and new[-1] in self._eos
        finish = "stop" if stopped or len(new) < max_tokens else "length"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if prompt.rstrip().endswith(THINK_OPEN):
            text = THINK_OPEN + text
        thinking, content, closed = split_thinking(text, finish=finish)
        return TeacherReply(thinking, content, finish, int(enc["input_ids"].shape[1]), len(new), closed)

    def close(self) -> None:
        self.model = None


def make_teacher(kind: str, model: str | None, *, base_url: str | None = None,
                 api_key_env: str = DEFAULT_API_KEY_ENV, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_retries: int = DEFAULT_MAX_RETRIES) -> Teacher:
    """Build a teacher from the command line's spec.

    Args:
        kind: ``openai`` (needs ``base_url`` and ``model``), ``gguf`` (``model`` is a registered name or a
            GGUF path; None is the bundled model) or ``hf`` (``model`` is a model directory).
        model: see ``kind``.
        base_url, api_key_env, timeout_s, max_retries: for ``openai`` (see :class:`OpenAITeacher`).

    Raises:
        ConfigError: an unknown kind or a missing setting. ModelError, MissingDependencyError: loading failed.
    """
    from ..errors import ConfigError

    if kind == "openai":
        if not base_url or not model:
            raise ConfigError("--teacher openai needs --base-url URL and --teacher-model NAME")
        return OpenAITeacher(base_url, model, api_key_env=api_key_env, timeout_s=timeout_s, max_retries=max_retries)
    if kind == "gguf":
        return LlamaCppTeacher.from_model(model)
    if kind == "hf":
        if not model:
            raise ConfigError("--teacher hf needs --teacher-model DIR (a Hugging Face model directory)")
        return TransformersTeacher(model)
    raise ConfigError(f"--teacher {kind!r}: expected one of {', '.join(TEACHER_KINDS)}")
