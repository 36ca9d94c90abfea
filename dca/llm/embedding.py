"""Sentence embeddings in llama.cpp: a sentence-transformers BERT model written to GGUF (:func:`write_embedding_gguf`,
numpy, safetensors and gguf-py only: no torch) and embedded through llama-cpp-python (:class:`LlamaCppEmbedder`).

The file follows llama.cpp's ``convert_hf_to_gguf.py`` (``BertModel``): architecture ``bert`` with non-causal
attention and the model's pooling (``bert.pooling_type``), tensor names from :class:`gguf.TensorNameMap`, the
WordPiece vocabulary as llama.cpp's ``bert`` tokenizer reads it (a word-initial piece gets the phantom space "▁", a
``##`` continuation loses its prefix; special tokens are CONTROL), and the special token ids. dca adds two keys of
its own: ``dca.embedder.name`` (the sentence-transformers model's name, which a store records) and
``dca.embedder.max_seq_length`` (sentence-transformers truncates each text to this many tokens, specials included;
:class:`LlamaCppEmbedder` does the same).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelError, missing

log = logging.getLogger(__name__)

NAME_KEY = "dca.embedder.name"
MAX_SEQ_KEY = "dca.embedder.max_seq_length"
# sentence-transformers Pooling modes -> llama.cpp pooling types (llama.h: NONE 0, MEAN 1, CLS 2, LAST 3)
_POOLING = {"pooling_mode_mean_tokens": 1, "pooling_mode_cls_token": 2, "pooling_mode_lasttoken": 3}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read it as JSON ({e})") from e


def _pooling_type(model_dir: Path) -> int:
    modules = model_dir / "modules.json"
    if modules.is_file():
        for module in _read_json(modules):
            if module.get("type", "").endswith("Pooling"):
                config = _read_json(model_dir / module["path"] / "config.json")
                for key, kind in _POOLING.items():
                    if config.get(key):
                        return kind
                raise ModelError(f"{model_dir}: its pooling ({config}) has no llama.cpp equivalent (mean, cls, last)")
    return 1  # a plain BERT without sentence-transformers modules: mean pooling, as sentence-transformers defaults


def _add_wordpiece_vocab(w, model_dir: Path, tk: dict) -> None:
    """The WordPiece vocabulary of ``tokenizer.json`` (``tk``) as llama.cpp's ``bert`` tokenizer reads it, with the
    special token ids (``tokenizer_config.json`` where it names them)."""
    import gguf

    vocab = tk["model"]["vocab"]
    tokens = [""] * len(vocab)
    for text, tid in vocab.items():
        tokens[tid] = text
    special = {a["id"] for a in tk.get("added_tokens") or [] if a.get("special")}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    # llama.cpp's bert (WPM) tokenizer marks word starts with a phantom space, continuations bare
    phantom = [t if i in special else (t[2:] if t.startswith("##") else "\u2581" + t) for i, t in enumerate(tokens)]

    def tid(text: str | None) -> int | None:
        return vocab.get(text) if text else None

    cfg_tok = _read_json(model_dir / "tokenizer_config.json") if (model_dir / "tokenizer_config.json").is_file() \
        else {}
    cls, sep = tid(cfg_tok.get("cls_token", "[CLS]")), tid(cfg_tok.get("sep_token", "[SEP]"))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("jina-v2-en")  # llama.cpp's name for BERT's split (whitespace, then punctuation)
    w.add_token_list(phantom)
    w.add_token_types([int(t) for t in types])
    for adder, token in ((w.add_bos_token_id, cls), (w.add_eos_token_id, sep), (w.add_sep_token_id, sep),
                         (w.add_unk_token_id, tid(tk["model"].get("unk_token"))),
                         (w.add_pad_token_id, tid(cfg_tok.get("pad_token", "[PAD]"))),
                         (w.add_mask_token_id, tid(cfg_tok.get("mask_token", "[MASK]")))):
        if token is not None:
            adder(token)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    w.add_bool("tokenizer.ggml.normalizer.lowercase", bool((tk.get("normalizer") or {}).get("lowercase", True)))


def write_embedding_gguf(model_dir: str | Path, out: str | Path, *, out_type: str = "F16",
                         name: str | None = None) -> Path:
    """Write the sentence-transformers BERT model in ``model_dir`` (``config.json``, ``model.safetensors``,
    ``tokenizer.json`` with a WordPiece model, ``modules.json``) to the GGUF ``out``.

    Args:
        out_type: ``F16`` or ``F32`` for the 2-D weight matrices; norms, biases, position and token-type
            embeddings are F32 (as llama.cpp's converter writes them).
        name: the embedder's name recorded in the file (default: the directory's name).

    Returns:
        ``out``; written to a temporary name and renamed, so it appears whole or not at all.

    Raises:
        ModelError: the directory is not a BERT sentence-transformers model (the message names what is missing).
        MissingDependencyError: safetensors or gguf is not installed.
    """
    try:
        import gguf
        from safetensors.numpy import load_file
    except ImportError as e:
        raise missing(e.name or "gguf", "rag-lite") from e
    from ..paths import atomic_path

    model_dir, out = Path(model_dir), Path(out)
    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != "bert":
        raise ModelError(f"{model_dir}: model_type {config.get('model_type')!r} is not bert; the GGUF embedder "
                         "writes BERT sentence-transformers models (all-MiniLM-L6-v2 and its kind)")
    tk = _read_json(model_dir / "tokenizer.json")
    if (tk.get("model") or {}).get("type") != "WordPiece":
        raise ModelError(f"{model_dir}/tokenizer.json: not a WordPiece tokenizer")
    weights_file = model_dir / "model.safetensors"
    if not weights_file.is_file():
        raise ModelError(f"{model_dir}: no model.safetensors")
    st_config = model_dir / "sentence_bert_config.json"
    max_seq = int(_read_json(st_config).get("max_seq_length", 512)) if st_config.is_file() else 512

    n_layers = int(config["num_hidden_layers"])
    w = gguf.GGUFWriter(path=None, arch="bert")
    w.add_name(name or model_dir.name)
    w.add_context_length(int(config["max_position_embeddings"]))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(int(config["num_attention_heads"]))
    w.add_layer_norm_eps(float(config["layer_norm_eps"]))
    w.add_block_count(n_layers)
    w.add_file_type({"F32": 0, "F16": 1}[out_type])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(_pooling_type(model_dir)))
    w.add_token_type_count(int(config.get("type_vocab_size", 1)))
    _add_wordpiece_vocab(w, model_dir, tk)
    w.add_string(NAME_KEY, name or model_dir.name)
    w.add_uint32(MAX_SEQ_KEY, max_seq)

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    keep_f32 = ("position_embd.weight", "token_types.weight")
    for hf_name, data in load_file(str(weights_file)).items():
        if hf_name.startswith("bert."):
            hf_name = hf_name[5:]
        if hf_name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            continue
        new_name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ModelError(f"{weights_file}: tensor {hf_name} has no name in llama.cpp's bert architecture")
        data = data.astype(np.float32)
        if data.ndim <= 1 or out_type == "F32" or new_name in keep_f32:
            w.add_tensor(new_name, np.ascontiguousarray(data))
        else:
            w.add_tensor(new_name, np.ascontiguousarray(data.astype(np.float16)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        try:
            w.write_header_to_file(path=tmp)
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    return out


class LlamaCppEmbedder:
    """A :class:`dca.rag.Embedder` running a GGUF embedding model in llama.cpp (no torch): each text is tokenized by
    the GGUF's own tokenizer, truncated as sentence-transformers truncates it (to ``max_seq_length`` tokens, the end
    token kept), several texts are decoded per llama.cpp batch, pooled as the model says, and L2-normalized.

    Args:
        gguf_path: a GGUF written by :func:`write_embedding_gguf` (or llama.cpp's converter).
        n_threads: CPU threads; None: one per logical CPU.
        batch_tokens: tokens decoded per batch (several short texts each); None: the model's ``max_seq_length``.
            llama.cpp attends over a whole batch with a mask between its texts, so a batch much longer than one
            text costs quadratic time for nothing: 256 tokens embed 28.8 SQuAD chunks/s here, 2048 tokens 4.9.

    Attributes:
        name: the embedding model's name (``dca.embedder.name``, else the file's stem), recorded by stores.
        dim: vector length. backend: ``"llama.cpp"``.

    Raises:
        ModelError: the file is not a loadable embedding GGUF.
        MissingDependencyError: llama-cpp-python is not installed.
    """

    backend = "llama.cpp"

    def __init__(self, gguf_path: str | Path, *, n_threads: int | None = None, batch_tokens: int | None = None):
        import os

        from .native import import_llama_cpp, route_llama_cpp_log

        llama_cpp = import_llama_cpp()
        route_llama_cpp_log()
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such embedding GGUF")
        def load(tokens: int):
            try:
                return llama_cpp.Llama(model_path=str(self.path), embedding=True, n_ctx=tokens, n_batch=tokens,
                                       n_ubatch=tokens, n_seq_max=64, n_threads=n_threads or os.cpu_count(),
                                       verbose=False)
            except (ValueError, RuntimeError, OSError) as e:
                raise ModelError(f"{self.path}: llama.cpp could not load this embedding GGUF ({e})") from e

        self.llama = load(batch_tokens or 256)
        meta = self.llama.metadata  # read by llama.cpp (gguf-py's reader takes seconds on a 30k-token vocabulary)
        if meta.get("general.architecture") != "bert" or meta.get("bert.pooling_type") in (None, "0"):
            raise ModelError(f"{self.path}: not a pooling embedding model (architecture "
                             f"{meta.get('general.architecture')!r}); write one with "
                             "dca.llm.embedding.write_embedding_gguf")
        self.name = meta.get(NAME_KEY) or self.path.stem
        self.max_seq_length = int(meta.get(MAX_SEQ_KEY) or meta.get("bert.context_length") or 512)
        if batch_tokens is not None and batch_tokens < self.max_seq_length:
            raise ConfigError(f"batch_tokens {batch_tokens} < the model's max_seq_length {self.max_seq_length}")
        if batch_tokens is None and self.max_seq_length > 256:
            self.llama.close()
            self.llama = load(self.max_seq_length)
        self.dim = int(self.llama.n_embd())
        self._sep = int(self.llama.token_eos())

    def tokens(self, text: str) -> list[int]:
        """The token ids of ``text`` with the start and end tokens, truncated to ``max_seq_length`` (end kept)."""
        ids = self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        if len(ids) > self.max_seq_length:
            ids = ids[:self.max_seq_length - 1] + [self._sep]
        return ids

    def embed(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """float32 array of shape ``(len(texts), dim)``, rows L2-normalised (inner product = cosine)."""
        from .native import embed_sequences

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = embed_sequences(self.llama, [self.tokens(t) for t in texts])
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return (vecs / np.maximum(norms, 1e-12)).astype(np.float32)

    def close(self) -> None:
        self.llama.close()
