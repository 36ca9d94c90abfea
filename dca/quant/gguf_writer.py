"""Write a transformers causal LM and its tokenizer as a GGUF file (F32, F16 or BF16) in llama.cpp's layout.

Our own writer on gguf-py's :class:`gguf.GGUFWriter`; it follows the conventions of llama.cpp's
``convert_hf_to_gguf.py`` for the architectures of :data:`SUPPORTED_ARCHITECTURES`: tensor names from
:class:`gguf.TensorNameMap`, q/k rows permuted for the ``llama`` architecture, 1-D tensors in F32, the output
matrix omitted when tied to the embeddings, rope and RMS-norm parameters, and the tokenizer (GPT-2-style
byte-level BPE, or SentencePiece-style BPE with byte fallback) with its special tokens and chat template.
:func:`write_lora_gguf` writes a LoRA adapter as llama.cpp's own ``convert_lora_to_gguf.py`` does, for llama.cpp to
apply at run time over a base written by :func:`write_gguf`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import QuantError, missing

log = logging.getLogger(__name__)

#: transformers model class -> llama.cpp architecture.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",  # Llama 2/3, SmolLM/SmolLM2, TinyLlama
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",  # Qwen2, Qwen2.5
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",  # Gemma 3 text models (270M, 1B)
}
# Gemma's RMSNorm scales by (1 + weight); llama.cpp's by weight: the converter adds 1 to every norm weight.
_NORM_SHIFT = {"gemma3": 1.0}
# HF's Llama rotates the two halves of each head, llama.cpp's llama arch adjacent pairs: permute q/k rows.
_PERMUTE_QK = {"llama"}
# The GGUF ``tokenizer.ggml.pre`` of a byte-level BPE tokenizer, recognised by its split regex.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_PRE_BY_REGEX = {
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
     r"|\s+(?!\S)|\s+"): "llama-bpe",
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
     r"|\s+(?!\S)|\s+"): "qwen2",
    _GPT2_REGEX: "gpt-2",
}
# End-of-turn tokens of the common chat formats (llama.cpp stops generation at EOT as well as EOS).
_EOT_TEXTS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
# dca reads reasoning between these in the generated text, so they must decode as text, not as hidden control tokens.
_THINK_TAGS = ("<think>", "</think>")
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_PAD_TOKEN = re.compile(r"\[PAD\d+\]")


@dataclass(frozen=True)
class WriteInfo:
    """What :func:`write_gguf` wrote.

    Attributes:
        architecture: llama.cpp's name, e.g. ``"llama"``.
        n_tensors: tensors in the file.
        n_params: parameters written (the tied output matrix counted once).
        tokenizer_model: ``"gpt2"`` (byte-level BPE) or ``"llama"`` (SentencePiece-style).
        tokenizer_pre: the pre-tokenizer name llama.cpp applies.
        tied_embeddings: True when ``output.weight`` was omitted.
    """

    architecture: str
    n_tensors: int
    n_params: int
    tokenizer_model: str
    tokenizer_pre: str
    tied_embeddings: bool


def gguf_architecture(hf_architecture: str) -> str:
    """llama.cpp's architecture name for a transformers model class name.

    Raises:
        QuantError: the class is not one of :data:`SUPPORTED_ARCHITECTURES` (the message lists them).
    """
    if hf_architecture not in SUPPORTED_ARCHITECTURES:
        raise QuantError(f"architecture {hf_architecture} is not supported by dca quant export; supported: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    return SUPPORTED_ARCHITECTURES[hf_architecture]


def permute_qk(weights, n_head: int):
    """Reorder the rows of a q or k projection from HF's rotate-half layout to llama.cpp's interleaved one.

    Args:
        weights: array of shape ``(n_head * head_dim, dim)`` (or ``(n_head * head_dim,)`` for a bias).
        n_head: heads of this projection (``num_key_value_heads`` for k).

    Returns:
        An array of the same shape; rows of each head go from ``[x0..x_{d/2-1}, y0..]`` to ``[x0, y0, x1, y1..]``.
        Source: llama.cpp ``convert_hf_to_gguf.py`` ``LlamaModel.permute``.
    """
    shape = weights.shape
    # (n_head, 2, head_dim // 2, ...) -> (n_head, head_dim // 2, 2, ...)
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _rope_parameters(config) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if "full_attention" in params:  # per layer type (Gemma 3): the global layers' rope; llama.cpp fixes the local one
        params = params["full_attention"]
    params = dict(params)
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def llama3_rope_factors(rope: dict, head_dim: int):
    """Per-frequency divisors of Llama 3.1's rope scaling, written as the ``rope_freqs`` tensor.

    Returns:
        float32 array of shape ``(head_dim // 2,)``: 1 for high frequencies, ``factor`` for low ones, a smooth
        ramp between. Source: Meta's Llama 3.1 reference code, as in transformers ``_compute_llama3_parameters``.
    """
    import numpy as np

    base = float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _add_hparams(w, config, arch: str) -> dict:
    """Write the model hyperparameters; returns the rope settings (for the rope_freqs tensor)."""
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    w.add_context_length(int(config.max_position_embeddings))
    w.add_embedding_length(int(config.hidden_size))
    w.add_block_count(int(config.num_hidden_layers))
    w.add_feed_forward_length(int(config.intermediate_size))
    w.add_head_count(int(n_head))
    w.add_head_count_kv(int(n_kv))
    w.add_key_length(int(head_dim))
    w.add_value_length(int(head_dim))
    if arch == "gemma3":
        _check_gemma3(config, head_dim)
        w.add_sliding_window(int(config.sliding_window))
        local = (getattr(config, "rope_parameters", None) or {}).get("sliding_attention", {}).get(
            "rope_theta", getattr(config, "rope_local_base_freq", None))
        if local is not None:  # the sliding-window layers' rope base
            w.add_rope_freq_base_swa(float(local))
        if getattr(config, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(float(config.final_logit_softcapping))
    else:  # llama.cpp's converter writes no rope dimension for Gemma 3 (it rotates whole heads)
        w.add_rope_dimension_count(int(head_dim))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_vocab_size(int(config.vocab_size))
    rope = _rope_parameters(config)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope["rope_type"]
    if kind == "linear":
        w.add_rope_scaling_type(require_gguf().RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(require_gguf().RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rope["factor"]))
        orig = rope.get("original_max_position_embeddings")
        if orig:
            w.add_rope_scaling_orig_ctx_len(int(orig))
    elif kind not in ("default", "llama3"):
        raise QuantError(f"rope scaling {kind!r} has no llama.cpp equivalent in dca quant export; "
                         "supported: default, linear, yarn, llama3")
    rope["head_dim"] = head_dim
    return rope


def _check_gemma3(config, head_dim: int) -> None:
    """Refuse what llama.cpp's gemma3 graph does not read from a GGUF and would compute otherwise: it scales queries
    by 1/sqrt(head_dim) and places the sliding-window layers 5 of every 6."""
    scalar = getattr(config, "query_pre_attn_scalar", head_dim)
    types = list(getattr(config, "layer_types", None) or [])
    expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(len(types))]
    problems = []
    if scalar != head_dim:
        problems.append(f"query_pre_attn_scalar {scalar} != head_dim {head_dim}")
    if types and types != expected:
        problems.append("layer_types other than five sliding-window layers then one global")
    if getattr(config, "attn_logit_softcapping", None):
        problems.append("attention logit soft-capping (Gemma 2's, not Gemma 3's)")
    if problems:
        raise QuantError("this Gemma 3 configuration differs from what llama.cpp's gemma3 graph assumes: "
                         + "; ".join(problems))


def require_gguf():
    """The ``gguf`` module (gguf-py).

    Raises:
        MissingDependencyError: it is not installed (the message gives ``pip install 'dca[quant]'``).
    """
    try:
        import gguf
    except ImportError as e:
        raise missing("gguf", "quant") from e
    return gguf


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise QuantError(f"{type(tokenizer).__name__} is not a fast tokenizer; export needs one backed by "
                         "tokenizer.json (the `tokenizers` library)")
    return json.loads(backend.to_str())


def _detect_pre(tk: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for a byte-level BPE ``tokenizer.json``, or None when unknown."""
    pre = tk.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # llama.cpp's starcoder/smollm regex: single digits, then GPT-2's
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        return _PRE_BY_REGEX.get((parts[0].get("pattern") or {}).get("Regex"))
    return None


def _vocab(tokenizer, n_vocab: int, pre: str | None, config) -> dict:
    """The ``tokenizer.ggml.*`` values of a fast HF tokenizer, padded to ``n_vocab`` (embedding rows)."""
    gguf = require_gguf()
    tk = _backend_json(tokenizer)
    model = tk.get("model") or {}
    if model.get("type") != "BPE":
        raise QuantError(f"tokenizer model {model.get('type')!r} is not supported; export handles BPE tokenizers "
                         "(GPT-2-style byte-level, or SentencePiece-style with byte fallback)")
    spm = bool(model.get("byte_fallback"))
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["id"]: a for a in tk.get("added_tokens") or []}
    for tid, a in added.items():
        vocab[a["content"]] = tid
    if vocab and max(vocab.values()) >= n_vocab:
        raise QuantError(f"the tokenizer has token id {max(vocab.values())} but the model's embedding has only "
                         f"{n_vocab} rows; the tokenizer does not belong to this model")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, tid in vocab.items():
        tokens[tid] = text
        if spm and text == model.get("unk_token"):
            types[tid] = gguf.TokenType.UNKNOWN
        elif tid in added:
            special = added[tid].get("special", False) and text not in _THINK_TAGS
            types[tid] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
        elif spm and _BYTE_TOKEN.fullmatch(text):
            types[tid] = gguf.TokenType.BYTE
        elif _PAD_TOKEN.fullmatch(text):  # a padding row written by an earlier export, read back by transformers
            types[tid] = gguf.TokenType.UNUSED
        else:
            types[tid] = gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    out: dict[str, Any] = {"tokens": tokens, "types": [int(t) for t in types]}
    if spm:
        # llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result scores highest: score = -rank.
        scores = [0.0] * n_vocab
        seen = set()
        for rank, merge in enumerate(merges):
            tid = vocab.get(merge.replace(" ", "", 1))
            if tid is not None and tid not in seen:
                seen.add(tid)
                scores[tid] = -float(rank + 1)
        norm = json.dumps(tk.get("normalizer") or {}) + json.dumps(tk.get("pre_tokenizer") or {})
        out.update(model="llama", pre=pre or "default", scores=scores,
                   add_space_prefix='"Prepend"' in norm or ('"Metaspace"' in norm and '"never"' not in norm))
    else:
        pre = pre or _detect_pre(tk)
        if pre is None:
            raise QuantError("the tokenizer's pre-tokenizer is not one dca recognises "
                             f"({json.dumps(tk.get('pre_tokenizer'))[:200]}); name llama.cpp's equivalent with "
                             "--tokenizer-pre (e.g. gpt-2, llama-bpe, qwen2, smollm)")
        out.update(model="gpt2", pre=pre, merges=merges)

    def tid_of(text) -> int | None:
        return None if text is None else vocab.get(str(text))

    specials = {}
    for key in ("bos", "eos", "unk", "pad", "sep", "mask"):
        tid = tid_of(getattr(tokenizer, f"{key}_token", None))
        if tid is None and key in ("bos", "eos", "pad"):  # transformers names no mask/sep from a config
            tid = getattr(config, f"{key}_token_id", None)
            tid = tid[0] if isinstance(tid, (list, tuple)) and tid else tid
        if isinstance(tid, int) and 0 <= tid < n_vocab:
            specials[key] = tid
    eot = next((vocab[t] for t in _EOT_TEXTS if t in vocab), None)
    if eot is not None:
        specials["eot"] = eot
    out["specials"] = specials
    probe = list(tokenizer("a")["input_ids"])
    out["add_bos"] = bool(probe) and "bos" in specials and probe[0] == specials["bos"]
    out["add_eos"] = bool(probe) and "eos" in specials and probe[-1] == specials["eos"] and len(probe) > 1
    out["chat_template"] = getattr(tokenizer, "chat_template", None)
    return out


def _add_vocab(w, v: dict) -> None:
    w.add_tokenizer_model(v["model"])
    w.add_tokenizer_pre(v["pre"])
    w.add_token_list(v["tokens"])
    w.add_token_types(v["types"])
    if "scores" in v:
        w.add_token_scores(v["scores"])
        w.add_add_space_prefix(v["add_space_prefix"])
    if "merges" in v:
        w.add_token_merges(v["merges"])
    adders = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "unk": w.add_unk_token_id,
              "pad": w.add_pad_token_id, "sep": w.add_sep_token_id, "eot": w.add_eot_token_id,
              "mask": w.add_mask_token_id}
    for key, tid in v["specials"].items():
        adders[key](tid)
    w.add_add_bos_token(v["add_bos"])
    w.add_add_eos_token(v["add_eos"])
    template = v["chat_template"]
    if isinstance(template, dict):  # several named templates: "default" is the chat template
        named = [{"name": k, "template": t} for k, t in template.items()]
        w.add_chat_template(named)
    elif template:
        w.add_chat_template(template)


def _carry_source_vocab(vocab: dict, source: dict | None) -> None:
    """Write a SentencePiece source GGUF's own tokens, scores and token types back (in place in ``vocab``) when the
    tokenizer is that vocabulary read through transformers: same size, and at least 99% of the token texts equal
    once SentencePiece's "▁" is read as a space. transformers turns a GGUF's SentencePiece vocabulary into a BPE
    fast tokenizer: its merge ranks, and the types of user-defined and whitespace tokens, are not the originals."""
    if not source or vocab["model"] != "llama" or "tokenizer.ggml.tokens" not in source:
        return
    tokens, ours = source["tokenizer.ggml.tokens"], vocab["tokens"]
    if len(tokens) != len(ours) or not {"tokenizer.ggml.scores", "tokenizer.ggml.token_type"} <= set(source):
        return
    same = sum(a.replace("\u2581", " ") == b.replace("\u2581", " ") for a, b in zip(tokens, ours))
    if same < 0.99 * len(ours):
        return
    vocab.update(tokens=list(tokens), scores=[float(x) for x in source["tokenizer.ggml.scores"]],
                 types=[int(x) for x in source["tokenizer.ggml.token_type"]])
    if "tokenizer.ggml.add_space_prefix" in source:
        vocab["add_space_prefix"] = bool(source["tokenizer.ggml.add_space_prefix"])


def _add_tensor(w, name: str, data, out_type: str) -> None:
    """Add the float array ``data`` to the writer ``w`` as ``out_type`` (``F32``, ``F16`` or ``BF16``)."""
    import numpy as np

    data = np.asarray(data, dtype=np.float32)
    if out_type == "F32":
        w.add_tensor(name, np.ascontiguousarray(data))
    elif out_type == "F16":
        w.add_tensor(name, np.ascontiguousarray(data.astype(np.float16)))
    else:
        gguf = require_gguf()
        qtype = gguf.GGMLQuantizationType.BF16
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def _copy_tensors(w, raw: dict, names: list[str], sizes: dict[str, int], source: Path) -> int:
    """Add the tensors ``names`` of a GGUF read by ``gguf.GGUFReader`` (``raw``: its tensors by name) to the writer
    ``w`` byte for byte, in that order; returns the parameters added.

    Raises:
        QuantError: ``raw`` holds other names, or a tensor of another size than ``sizes`` gives.
    """
    odd = sorted(set(names) ^ set(raw)) or [n for n, k in sizes.items() if int(raw[n].n_elements) != k]
    if odd:
        raise QuantError(f"{source} does not hold this model's tensors in llama.cpp's layout "
                         f"({len(odd)} differ in name or size, e.g. {', '.join(odd[:3])})")
    for name in names:
        w.add_tensor(name, raw[name].data, raw_dtype=raw[name].tensor_type)
    return sum(int(raw[name].n_elements) for name in names)


def _write_file(w, path: Path) -> None:
    """Write the header, metadata and tensors the writer ``w`` holds to ``path``, and close it."""
    try:
        w.write_header_to_file(path=Path(path))
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def write_gguf(model, tokenizer, path: Path, *, out_type: str = "F16", name: str | None = None,
               tokenizer_pre: str | None = None, source_vocab: dict | None = None,
               tensors_from: Path | None = None) -> WriteInfo:
    """Write ``model`` and ``tokenizer`` to the GGUF file ``path``.

    Args:
        model: a transformers causal LM of a :data:`SUPPORTED_ARCHITECTURES` class, any float dtype.
        tokenizer: its fast tokenizer (``tokenizer.json``-backed).
        path: the file to create (overwritten). The caller handles temporary names and atomic replacement.
        out_type: ``"F32"``, ``"F16"`` or ``"BF16"`` for the 2-D tensors; 1-D tensors (norms, biases,
            rope_freqs) are always F32.
        name: ``general.name``; None leaves it out.
        tokenizer_pre: llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``); None detects it from the
            tokenizer's split regex.
        source_vocab: the ``tokenizer.ggml.*`` values of the GGUF the model was read from
            (:func:`dca.quant.source.gguf_tokenizer_metadata`): a SentencePiece vocabulary's own tokens, scores and
            types are written back when the tokenizer is that vocabulary.
        tensors_from: the GGUF ``model`` was loaded from (a quantized base): its tensors are copied byte for byte
            instead of being written from ``model``, with its ``general.file_type``; ``out_type`` is then unused.
            The metadata is still ``model``'s and ``tokenizer``'s (a student's chat template over its base).

    Returns:
        What was written.

    Raises:
        QuantError: unsupported architecture, rope scaling or tokenizer; a tensor without a GGUF name; with
            ``tensors_from``, a file whose tensor names are not those of ``model`` in llama.cpp's layout.
        OSError: the file could not be written (e.g. ``ENOSPC``); the partial file is left for the caller.
    """
    gguf = require_gguf()
    import torch

    config = model.config
    arch = gguf_architecture(type(model).__name__)
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    n_vocab = int(model.get_input_embeddings().weight.shape[0])
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    vocab = _vocab(tokenizer, n_vocab, tokenizer_pre, config)
    _carry_source_vocab(vocab, source_vocab)
    ftype = {"F32": 0, "F16": 1, "BF16": 32}.get(out_type)
    raw = None
    if tensors_from is not None:
        reader = gguf.GGUFReader(tensors_from)
        raw = {t.name: t for t in reader.tensors}
        field = reader.fields.get("general.file_type")
        ftype = int(field.contents()) if field is not None else ftype

    w = gguf.GGUFWriter(path=None, arch=arch)
    if name:
        w.add_name(name)
    w.add_file_type(ftype)
    rope = _add_hparams(w, config, arch)
    _add_vocab(w, vocab)

    tmap = gguf.get_tensor_name_map(model_arch, int(config.num_hidden_layers))
    state = model.state_dict()
    emb = model.get_input_embeddings().weight
    out_emb = model.get_output_embeddings()
    tied = bool(getattr(config, "tie_word_embeddings", False)) or (
        out_emb is not None and out_emb.weight.data_ptr() == emb.data_ptr())
    n_params = 0
    n_tensors = 0
    names, sizes = [], {}
    for hf_name, tensor in state.items():
        if (tied and hf_name == "lm_head.weight") or hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new_name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise QuantError(f"tensor {hf_name} has no GGUF name in llama.cpp's {arch} architecture")
        names.append(new_name)
        if raw is not None:
            sizes[new_name] = tensor.numel()
            continue
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch in _NORM_SHIFT and hf_name.endswith("norm.weight"):
            data = data + _NORM_SHIFT[arch]
        if arch in _PERMUTE_QK and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_qk(data, n_head)
        elif arch in _PERMUTE_QK and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_qk(data, n_kv)
        n_params += data.size
        n_tensors += 1
        _add_tensor(w, new_name, data, "F32" if data.ndim <= 1 else out_type)
    if rope["rope_type"] == "llama3":
        names.append(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight")
        if raw is None:
            w.add_tensor(names[-1], llama3_rope_factors(rope, rope["head_dim"]))
            n_tensors += 1
    if raw is not None:
        n_params = _copy_tensors(w, raw, names, sizes, tensors_from)
        n_tensors = len(names)
    _write_file(w, path)
    log.info("wrote %s: %s, %d tensors, %d parameters, %s", path, arch, n_tensors, n_params, out_type)
    return WriteInfo(architecture=arch, n_tensors=n_tensors, n_params=int(n_params),
                     tokenizer_model=vocab["model"], tokenizer_pre=vocab["pre"], tied_embeddings=tied)


@dataclass(frozen=True)
class LoraWriteInfo:
    """What :func:`write_lora_gguf` wrote.

    Attributes:
        architecture: llama.cpp's name of the base's architecture.
        n_weights: base weights the adapter applies to (two tensors each, ``.lora_a`` and ``.lora_b``).
        n_params: parameters written.
        rank: the largest LoRA rank.
        alpha: ``adapter.lora.alpha``; llama.cpp scales each pair by ``alpha / rank``.
    """

    architecture: str
    n_weights: int
    n_params: int
    rank: int
    alpha: float


def write_lora_gguf(model, lora: dict, path: Path, *, out_type: str = "F16", name: str | None = None
                    ) -> LoraWriteInfo:
    """Write a LoRA adapter as a llama.cpp LoRA adapter GGUF (``general.type = adapter``, ``adapter.type = lora``),
    which llama.cpp applies at run time over the base's own (possibly quantized) weights: ``llama-cli -m BASE.gguf
    --lora ADAPTER.gguf``, llama-cpp-python's ``Llama(lora_path=...)``.

    Layout (llama.cpp ``convert_lora_to_gguf.py`` and ``src/llama-adapter.cpp``): for each base tensor ``NAME``,
    ``NAME.lora_a`` of shape ``(r, in)`` and ``NAME.lora_b`` of shape ``(out, r)`` (numpy order); llama.cpp adds
    ``(alpha / r) * B @ A``. The rows of ``B`` take the base tensor's own row permutation (q/k of the ``llama``
    architecture). peft's per-module scale is kept exactly: ``alpha`` is the first module's ``scale * r`` whose scale
    is not 0, and ``B`` of any module whose scale differs (rank or alpha patterns) is multiplied by the ratio.

    Args:
        model: the base, a transformers causal LM of a :data:`SUPPORTED_ARCHITECTURES` class (its config and
            parameter names; its weights are not written).
        lora: :class:`dca.quant.source.LoraMatrices` by base parameter name (``LoadedModel.lora``).
        path: the file to create (overwritten). The caller handles temporary names and atomic replacement.
        out_type: ``"F32"``, ``"F16"`` or ``"BF16"``: the type of the LoRA matrices.
        name: ``general.name``; None leaves it out.

    Returns:
        What was written.

    Raises:
        QuantError: unsupported architecture; a LoRA weight the base has not, or without a GGUF name; matrices
            whose shapes do not fit the base weight.
        OSError: the file could not be written; the partial file is left for the caller.
    """
    gguf = require_gguf()
    import numpy as np

    config = model.config
    arch = gguf_architecture(type(model).__name__)
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tmap = gguf.get_tensor_name_map(model_arch, int(config.num_hidden_layers))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # llama.cpp reads alpha 0 as "no alpha" (scale 1): take a module with a scale; with none, B is zeroed below
    alpha = next((m.scale * m.a.shape[0] for m in lora.values() if m.scale), 1.0)
    w = gguf.GGUFWriter(path=None, arch=arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    if name:
        w.add_name(name)
    n_params = rank = 0
    for hf_name, m in lora.items():
        new_name = tmap.get_name(hf_name, try_suffixes=(".weight",))
        if hf_name not in shapes or new_name is None:
            raise QuantError(f"the adapter's LoRA weight {hf_name} is not a weight of the base's {arch} layout")
        r = m.a.shape[0]
        if m.b.shape[1] != r or (m.b.shape[0], m.a.shape[1]) != shapes[hf_name]:
            raise QuantError(f"the adapter's LoRA matrices for {hf_name} ({m.a.shape}, {m.b.shape}) do not fit the "
                             f"base weight {shapes[hf_name]}; the adapter belongs to another base")
        b = m.b * np.float32(m.scale * r / alpha)
        if arch in _PERMUTE_QK and hf_name.endswith("q_proj.weight"):
            b = permute_qk(b, n_head)
        elif arch in _PERMUTE_QK and hf_name.endswith("k_proj.weight"):
            b = permute_qk(b, n_kv)
        for suffix, data in ((".lora_a", m.a), (".lora_b", b)):
            _add_tensor(w, new_name + suffix, data, out_type)
            n_params += data.size
        rank = max(rank, r)
    _write_file(w, path)
    log.info("wrote %s: LoRA adapter for %s, %d weights, rank %d, alpha %g", path, arch, len(lora), rank, alpha)
    return LoraWriteInfo(architecture=arch, n_weights=len(lora), n_params=int(n_params), rank=rank,
                         alpha=float(alpha))
