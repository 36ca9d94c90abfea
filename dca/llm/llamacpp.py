"""GGUF models on the CPU through llama-cpp-python: :class:`LlamaCppLLM`, the :class:`~dca.llm.LLM` dca runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .base import LLM, Completion
from .native import adds_bos, import_llama_cpp, route_llama_cpp_log
from .templates import completion_prompt, resolve_template

log = logging.getLogger(__name__)


class LlamaCppLLM(LLM):
    """A GGUF model run by llama-cpp-python (``llama_cpp.Llama``); it can sample in parallel and score
    continuations.

    Args:
        model_path: the GGUF file (:func:`dca.llm.load_llm` resolves names and checks the file first).
        n_ctx: context window in tokens; 0 takes the model's own (may need much memory).
        n_threads: CPU threads; None uses one per logical CPU (``os.cpu_count()``).
        n_gpu_layers: layers offloaded to a GPU build of llama.cpp; ``-1`` offloads all, 0 none.
        seed: sampling seed.
        name: display name; None takes the GGUF's ``general.name``, else the file name.
        chat_template: ``gemma``, ``chatml`` or a Jinja file (:mod:`dca.llm.templates`), replacing the GGUF's
            template; None keeps the GGUF's, and a GGUF without one is prompted as plain text to continue
            (``template.source == "completion"``: a base model), never with a guessed template.
        prompt_cache: a directory for :class:`~dca.llm.prompt_cache.PromptCache`: :meth:`generate` in a fresh
            context restores the kept state of the prompt prefix it shares with earlier prompts (the system turn)
            instead of evaluating it, across processes (``dca chat`` and ``dca serve`` use
            ``$DCA_HOME/cache/prompts``). None (default): no cache, outputs independent of earlier runs.
        lora_path: a llama.cpp LoRA adapter GGUF applied over the model at run time (``llama-cli --lora``); None
            takes the one ``dca quant export`` wrote beside ``model_path`` when it kept a student's adapter apart
            (:func:`~dca.llm.registry.exported_lora`), else none.

    Attributes:
        template: the :class:`~dca.llm.templates.ChatTemplate` in use (its ``source`` says where it came from).
        lora_path: the LoRA adapter GGUF applied, or None.

    Raises:
        MissingDependencyError: llama-cpp-python is not installed.
        ModelError: the file is missing, not a GGUF, or not loadable (corrupt, truncated, unknown architecture).
        ConfigError: ``chat_template`` is neither a known name nor a readable file.

    llama.cpp's own log lines go to :mod:`logging` (logger ``dca.llm.native``, DEBUG), not to the terminal.
    """

    can_sample = True
    can_score = True
    can_use_tools = True

    def __init__(self, model_path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = 0, seed: int = 0, name: str | None = None,
                 chat_template: str | Path | None = None, prompt_cache: str | Path | None = None,
                 lora_path: str | Path | None = None):
        from .registry import exported_lora

        llama_cpp = import_llama_cpp()
        route_llama_cpp_log()
        self.path = Path(model_path).expanduser().resolve()
        self.lora_path = Path(lora_path).expanduser().resolve() if lora_path else exported_lora(self.path)
        if self.lora_path is not None and not self.lora_path.is_file():
            raise ModelError(f"LoRA adapter {self.lora_path} does not exist")
        try:
            self.llama = llama_cpp.Llama(
                model_path=str(self.path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                n_gpu_layers=n_gpu_layers, seed=seed, verbose=False,
                lora_path=str(self.lora_path) if self.lora_path else None,
                # flash attention: cheaper batched decoding of parallel samples (dca.llm.sampling) on the CPU too
                flash_attn=True,
            )
        except (ValueError, RuntimeError, OSError) as e:
            from .registry import check_gguf

            check_gguf(self.path)  # a missing file or one that is no GGUF gets its own message
            if self.lora_path is not None and "LoRA" in str(e):
                raise ModelError(f"llama.cpp could not apply the LoRA adapter {self.lora_path} to {self.path} ({e}); "
                                 "the adapter may belong to another base model, or be corrupt") from e
            raise ModelError(f"{self.path}: llama.cpp could not load this GGUF ({e}); the file may be corrupt, "
                             "truncated, or of an architecture this llama.cpp build does not know") from e
        meta = self.llama.metadata
        self.name = name or meta.get("general.name") or self.path.stem
        self.context_length = self.llama.n_ctx()
        self.template = resolve_template(chat_template, meta.get("tokenizer.chat_template"))
        self._stops = self.template.stops
        self._bos = self._token_text(self.llama.token_bos())
        self._eos = self._token_text(self.llama.token_eos())
        self.think_tags = ("<think>", "</think>") if self._is_single_token("<think>") else None
        self._formatter = None
        self._prompt_cache = None
        if prompt_cache is not None:
            from .prompt_cache import PromptCache

            self._prompt_cache = PromptCache(prompt_cache, self.path, self.context_length, adapter=self.lora_path)

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llama.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def _is_single_token(self, text: str) -> bool:
        return len(self.llama.tokenize(text.encode(), add_bos=False, special=True)) == 1

    def render(self, messages: Sequence[dict]) -> str:
        if self.template.source == "completion":
            return completion_prompt(messages)
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(
                template=self.template.template, eos_token=self._eos, bos_token=self._bos, add_generation_prompt=True,
            )
        prompt = self._formatter(messages=list(messages)).prompt
        # llama.cpp adds BOS itself while tokenizing; a template that writes it too would double it.
        if self._bos and prompt.startswith(self._bos) and adds_bos(self.llama):
            prompt = prompt[len(self._bos):]
        return prompt

    def count_tokens(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def generate(self, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = (), repeat_penalty: float = 1.0,
                 cancel: Callable[[], bool] | None = None) -> Iterator[str]:
        if max_tokens <= 0:
            return
        if self._prompt_cache is not None:
            tokens = self.llama.tokenize(prompt.encode("utf-8"), special=True)  # as create_completion does
            self._prompt_cache.restore(self.llama, tokens)
            self._prompt_cache.remember(self.llama, tokens)
        stream = self.llama.create_completion(
            prompt, max_tokens=max_tokens, temperature=temperature, stop=[*stop, *self._stops] or None,
            repeat_penalty=repeat_penalty, stream=True,
        )
        try:
            for part in stream:
                text = part["choices"][0]["text"]
                if text:
                    yield text
                if cancel is not None and cancel():
                    break
        finally:
            stream.close()

    def sample(self, prompt: str, *, n: int, max_tokens: int, temperature: float = 0.7, repeat_penalty: float = 1.0,
               stop: Sequence[str] = (), seed: int = 0, cancel: Callable[[], bool] | None = None,
               tools: Sequence = ()) -> list[Completion]:
        """k completions in parallel llama.cpp sequences (:func:`dca.llm.sampling.sample_parallel`), tool calls
        answered inside each."""
        from .sampling import sample_parallel

        return sample_parallel(self.llama, prompt, n=n, max_tokens=max_tokens, temperature=temperature,
                               repeat_penalty=repeat_penalty, stop=(*stop, *self._stops), seed=seed, cancel=cancel,
                               tools=tools)

    def score(self, prompt: str, continuations: Sequence[str], *,
              cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, int]:
        """Scores ended by the model's EOS token (:func:`dca.llm.scoring.score_continuations`)."""
        from .scoring import score_continuations

        return score_continuations(self.llama, prompt, continuations, self.llama.token_eos(), cancel=cancel)

    def score_many(self, prompts: Sequence[str], continuations: Sequence[str], *,
                   cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, int]:
        """Scores of each prompt's continuations in shared llama.cpp sequences
        (:func:`dca.llm.scoring.score_prompts`: the prompts' common prefix is decoded once)."""
        from .scoring import score_prompts

        return score_prompts(self.llama, prompts, continuations, self.llama.token_eos(), cancel=cancel)

    def reset(self) -> None:
        """Forget the evaluated tokens, so the next call evaluates its prompt from scratch.

        llama-cpp-python reuses the KV cache of the longest common prefix with the previous call; evaluating
        a prompt in other batch splits changes its logits in the last bits, enough to flip a greedy token
        now and then. After a reset the output no longer depends on what ran before (``dca eval`` resets
        before each item, so a resumed run answers exactly as an uninterrupted one).
        """
        self.llama.reset()

    def close(self) -> None:
        """Free the model's memory now rather than at garbage collection."""
        self.llama.close()
