"""dca quant: HF/LoRA/GGUF -> GGUF export, llama.cpp quantization, and the check against the source.

Tiny random models and tokenizers are built in-process (nothing is downloaded); exported GGUFs are run by
llama-cpp-python and their logits compared with transformers'. The SmolLM2 round trip is marked ``slow``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dca.errors import ConfigError, MissingDependencyError, QuantError
from dca.quant import CheckConfig, ExportConfig, check, export, manifest_path, read_manifest

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Python is a programming language that lets you work quickly and integrate systems effectively.",
    "def add(a, b):\n    return a + b\n",
    "Numbers like 12345 and 3.14 appear in text, and so do tabs\tand newlines.",
    "<think>Let me think step by step about the question.</think> The answer is 42.",
    "A list comprehension builds a list from an iterable: [x * x for x in range(10)].",
]
# A Qwen3-style template: the assistant's reasoning sits between <think> tags inside its turn.
CHAT_TEMPLATE = (
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{%- if m['role'] == 'assistant' and '</think>' in m['content'] %}\n"
    "<think>\n{{ m['content'].split('</think>')[0].split('<think>')[-1].strip() }}\n</think>\n\n"
    "{{ m['content'].split('</think>')[-1].lstrip() }}"
    "{%- else %}\n{{ m['content'] }}{%- endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOL_F32 = 1e-4  # relative to the largest |logit|
TOL_F16 = 2e-3


def byte_level_tokenizer():
    """A GPT-2-style byte-level BPE trained on SENTENCES, with ChatML specials and (non-special) think tags."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def sentencepiece_style_tokenizer():
    """A Llama-2-style tokenizer.json: BPE with byte fallback, '▁' for spaces, <s> prepended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    trainer_tk = Tokenizer(models.BPE())
    trainer_tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer_tk.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    trained = json.loads(trainer_tk.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for text, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(text, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in trained["merges"]], unk_token="<unk>",
                              byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.add_special_tokens(["<unk>", "<s>", "</s>"])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_model(tok, kind: str = "llama", **overrides):
    """A random 2-layer model (hidden 64, 4 heads, 2 KV heads) whose vocab is the tokenizer's plus padding rows."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    torch.manual_seed(0)
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=len(tok) + 3, max_position_embeddings=256, rms_norm_eps=1e-5,
                  initializer_range=0.3, tie_word_embeddings=False)
    common.update(overrides)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
                             "qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[kind]
    if kind == "qwen3":
        common.setdefault("head_dim", 16)
    return model_cls(config_cls(**common)).eval()


def trained_model(tok, steps: int = 30):
    """The tiny Llama (default init) after a few AdamW steps on SENTENCES: clear top-1 margins, like a real model."""
    model = tiny_model(tok, initializer_range=0.02)
    batch = torch.tensor([text_ids(tok)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def save(model, tok, path: Path) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def text_ids(tok) -> list[int]:
    return tok(" ".join(SENTENCES), add_special_tokens=False)["input_ids"]


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def gguf_logits(path: Path, ids, lora: Path | None = None) -> np.ndarray:
    import llama_cpp

    # F32 KV cache (llama.cpp's default is F16) so that F32 exports can be compared tightly
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + 8, n_batch=len(ids) + 8, n_ubatch=len(ids) + 8,
                          logits_all=True, n_threads=1, verbose=False, type_k=0, type_v=0,
                          lora_path=str(lora) if lora else None)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)])
    finally:
        llm.close()


def assert_logits_match(ref: np.ndarray, got: np.ndarray, rel_tol: float):
    assert got.shape == ref.shape
    assert (ref.argmax(-1) == got.argmax(-1)).all(), "top-1 predictions differ"
    scale = np.abs(ref).max()
    assert np.abs(ref - got).max() <= rel_tol * scale, (np.abs(ref - got).max(), scale)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # tiny models: thread start-up and contention with other jobs cost far more than they save
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tok):
    return save(trained_model(tok), tok, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(SENTENCES * 4), encoding="utf-8")
    return path


# -- export: F16 parity, layout and metadata ------------------------------------------------------------------


def test_f16_export_matches_hf_and_reads_back(llama_dir, tok, text_file, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    from dca.quant.gguf_writer import permute_qk

    out = tmp_path / "tiny.F16.gguf"
    result = export(ExportConfig(source=llama_dir, qtype="F16", out=out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.F16.gguf", "tiny.F16.manifest.json"]

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    ids = text_ids(tok)
    assert_logits_match(hf_logits(model, ids), gguf_logits(out, ids), TOL_F16)

    reader = gguf.GGUFReader(out)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 1
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.feed_forward_length"]) == (2, 64, 128)
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    assert meta["llama.context_length"] == 256 and meta["llama.rope.dimension_count"] == 16
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(tok) + 3 and tokens[-1] == f"[PAD{len(tok) + 2}]" and types[-1] == 5  # UNUSED
    vocab = tok.get_vocab()
    assert types[vocab["<|im_end|>"]] == 3 and types[vocab["<think>"]] == 4  # CONTROL, USER_DEFINED
    assert len(meta["tokenizer.ggml.merges"]) == len(json.loads(tok.backend_tokenizer.to_str())["model"]["merges"])
    assert meta["tokenizer.ggml.eos_token_id"] == vocab["<|im_end|>"] == meta["tokenizer.ggml.eot_token_id"]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE

    tensors = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in
        ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected
    assert list(tensors["token_embd.weight"].shape) == [64, len(tok) + 3]  # GGUF order: (ne0 = columns, ne1)
    assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32] and list(tensors["blk.0.ffn_down.weight"].shape) == [128, 64]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    k = model.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"].data, permute_qk(q, 4).astype(np.float16))
    np.testing.assert_array_equal(tensors["blk.0.attn_k.weight"].data, permute_qk(k, 2).astype(np.float16))
    assert not np.array_equal(permute_qk(q, 4), q)

    manifest = read_manifest(out)
    assert manifest == result.manifest
    assert manifest["quant_type"] == "F16" and manifest["intermediate_type"] is None
    assert manifest["source"] == {"path": str(llama_dir.resolve()), "kind": "hf", "base": None, "adapter": None}
    assert manifest["sha256"] == result.sha256 == __import__("hashlib").sha256(out.read_bytes()).hexdigest()
    assert manifest["sizes"]["gguf_bytes"] == out.stat().st_size
    assert manifest["sizes"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert manifest["dca_version"] == __import__("dca").__version__
    assert set(manifest["seconds"]) == {"load", "merge", "write", "quantize", "total"}

    # check() finds the reference through the manifest
    (r,) = check(CheckConfig(ggufs=[out], text_path=text_file, tokens=300, window=100, decode_tokens=4))
    assert r.top1_agreement == 1.0 and r.tokens >= 200
    assert r.mean_kl < 1e-3 and r.perplexity == pytest.approx(r.reference_perplexity, rel=1e-2)
    assert r.chat_template.match is True and len(r.chat_template.reference_ids) > 20
    assert r.quant_type == "F16" and r.size_bytes == out.stat().st_size


def test_byte_level_tokenizer_and_chat_template_match_llama_cpp(llama_dir, tok, tmp_path):
    import llama_cpp

    from dca.quant import CHAT_PROBE

    out = export(ExportConfig(source=llama_dir, qtype="F32", out=tmp_path / "t.gguf")).path
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False, n_threads=1)
    for text in ["Hello world", "  two  spaces\n\nand\ttabs", "<think>reason</think>answer", "digits 1234567",
                 "<|im_start|>user\nhi<|im_end|>\n", "unicode café ü 🙂"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)["input_ids"], text
    # think tags decode as text (dca reads reasoning from the generated text)
    think = tok.convert_tokens_to_ids("<think>")
    assert llm.detokenize([think]) == b"<think>"
    hf_ids = tok.apply_chat_template(list(CHAT_PROBE), tokenize=True, add_generation_prompt=True)
    hf_ids = hf_ids["input_ids"] if hasattr(hf_ids, "keys") else hf_ids
    assert think in hf_ids
    llm.close()


def test_sentencepiece_style_tokenizer_exports_as_llama_vocab(tmp_path):
    import gguf
    import llama_cpp

    tok = sentencepiece_style_tokenizer()
    model = tiny_model(tok)
    src = save(model, tok, tmp_path / "spm")
    out = export(ExportConfig(source=src, qtype="F32", out=tmp_path / "spm.gguf")).path
    meta = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()
            if k.startswith("tokenizer.ggml.") and k not in ("tokenizer.ggml.tokens",)}
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is True
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.bos_token_id"] == 1
    assert meta["tokenizer.ggml.token_type"][3] == 6 and meta["tokenizer.ggml.token_type"][0] == 2  # BYTE, UNKNOWN
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, verbose=False, n_threads=1)
    for text in ["The quick brown fox", "Python lets you work quickly", "naïve café ☕", "a\nb  c", "12345"]:
        assert llm.tokenize(text.encode(), add_bos=True) == tok(text)["input_ids"], text
    llm.close()
    ids = tok(" ".join(SENTENCES[:3]))["input_ids"]
    assert_logits_match(hf_logits(model, ids), gguf_logits(out, ids), TOL_F32)


def test_q8_0_is_close_and_quantized_by_llama_cpp(llama_dir, text_file, tmp_path):
    import gguf

    out = tmp_path / "tiny.Q8_0.gguf"
    result = export(ExportConfig(source=llama_dir, qtype="q8_0", out=out))
    assert result.qtype == "Q8_0" and result.seconds["quantize"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.Q8_0.gguf", "tiny.Q8_0.manifest.json"]
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert read_manifest(out)["intermediate_type"] == "F16"
    (r,) = check(CheckConfig(ggufs=[out], text_path=text_file, tokens=300, window=100, decode_tokens=0))
    assert r.top1_agreement >= 0.98 and r.mean_kl < 1e-3 and r.quant_type == "Q8_0"


def test_tied_embeddings_omit_the_output_matrix(tok, tmp_path):
    import gguf

    model = tiny_model(tok, tie_word_embeddings=True)
    src = save(model, tok, tmp_path / "tied")
    out = export(ExportConfig(source=src, qtype="F32", out=tmp_path / "tied.gguf")).path
    names = {t.name for t in gguf.GGUFReader(out).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    assert read_manifest(out)["tied_embeddings"] is True
    ids = text_ids(tok)
    assert_logits_match(hf_logits(model, ids), gguf_logits(out, ids), TOL_F32)


def test_token_embedding_and_output_types_override_llama_cpps_choice(llama_dir, tok, text_file, tmp_path):
    import gguf

    T = gguf.GGMLQuantizationType
    plain = export(ExportConfig(source=llama_dir, qtype="Q4_0", out=tmp_path / "plain.gguf")).path
    plain_types = {t.name: t.tensor_type for t in gguf.GGUFReader(plain).tensors}
    # llama.cpp's picks (the output would be Q6_K; its rows are too short for k-quant blocks, so Q8_0)
    assert plain_types["token_embd.weight"] == T.Q4_0 and plain_types["output.weight"] == T.Q8_0
    result = export(ExportConfig(source=llama_dir, qtype="Q4_0", out=tmp_path / "kept.gguf",
                                 token_embedding_type="q8_0", output_tensor_type="F16"))
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(result.path).tensors}
    assert types["token_embd.weight"] == T.Q8_0 and types["output.weight"] == T.F16
    assert types["blk.0.attn_q.weight"] == T.Q4_0  # the rest is still --type's
    config = read_manifest(result.path)["config"]
    assert config["token_embedding_type"] == "Q8_0" and config["output_tensor_type"] == "F16"
    # the kept matrices are closer to the source: lower KL than the plain Q4_0 file
    (r_plain, r_kept) = check(CheckConfig(ggufs=[plain, result.path], reference=llama_dir, text_path=text_file,
                                          tokens=300, window=100, decode_tokens=0))
    assert r_kept.mean_kl < r_plain.mean_kl, (r_kept.mean_kl, r_plain.mean_kl)

    # a tied model has one matrix (token_embd.weight): llama.cpp types it as the output, so either flag sets it
    src = save(tiny_model(tok, tie_word_embeddings=True), tok, tmp_path / "tied")
    for flag in ("token_embedding_type", "output_tensor_type"):
        out = export(ExportConfig(source=src, qtype="Q4_0", out=tmp_path / f"tied-{flag}.gguf", **{flag: "F16"})).path
        types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
        assert "output.weight" not in types and types["token_embd.weight"] == T.F16, flag
    with pytest.raises(ConfigError, match="ties its output matrix"):
        export(ExportConfig(source=src, qtype="Q4_0", out=tmp_path / "both.gguf", token_embedding_type="F16",
                            output_tensor_type="Q8_0"))
    assert not list(tmp_path.glob("*both*")) and not list(tmp_path.glob(".both*"))


def test_a_tensor_type_whose_blocks_do_not_tile_the_rows_is_refused_not_aborted(llama_dir, tmp_path):
    # the tiny model's rows hold 64 weights: a 256-weight k-quant block cannot tile them, and llama.cpp's quantizer
    # aborts the whole process on such an override (GGML_ASSERT); dca refuses it first, naming the flag
    for flag, name in (("token_embedding_type", "--token-embedding-type"), ("output_tensor_type", "--output-tensor-type")):
        with pytest.raises(ConfigError, match=rf"{name} Q4_K: .* 64 weights, .*256-weight blocks; choose one of .*Q8_0"):
            export(ExportConfig(source=llama_dir, qtype="Q8_0", out=tmp_path / "k.gguf", **{flag: "Q4_K"}))
        assert not list(tmp_path.iterdir())
    f16 = export(ExportConfig(source=llama_dir, qtype="F16", out=tmp_path / "tiny.F16.gguf")).path
    from dca.quant.quantize import quantize_gguf

    with pytest.raises(ConfigError, match="--output-tensor-type Q6_K"):  # quantizing a written GGUF checks it too
        quantize_gguf(f16, tmp_path / "q.gguf", "Q8_0", output_tensor_type="Q6_K")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.F16.gguf", "tiny.F16.manifest.json"]


def test_tensor_type_flags_are_checked(llama_dir):
    import gguf

    from dca.quant.quantize import TENSOR_TYPES

    for name, value in TENSOR_TYPES.items():
        assert gguf.GGMLQuantizationType[name].value == value, name
    with pytest.raises(ConfigError, match=r"--token-embedding-type Q4_K_M: .*file type.*Q4_K, Q8_0"):
        ExportConfig(source=llama_dir, qtype="Q4_K_M", token_embedding_type="Q4_K_M")
    with pytest.raises(ConfigError, match="--output-tensor-type Q9: unknown tensor type"):
        ExportConfig(source=llama_dir, qtype="Q4_K_M", output_tensor_type="Q9")
    with pytest.raises(ConfigError, match="--output-tensor-type applies to llama.cpp's types.*--type F16"):
        ExportConfig(source=llama_dir, qtype="F16", output_tensor_type="Q8_0")
    assert ExportConfig(source=llama_dir, qtype="Q4_K_M", token_embedding_type="q6_k").token_embedding_type == "Q6_K"


@pytest.mark.parametrize("kind,arch,extra_tensor", [
    ("mistral", "llama", "blk.1.ffn_gate.weight"),
    ("qwen2", "qwen2", "blk.0.attn_q.bias"),
    ("qwen3", "qwen3", "blk.0.attn_q_norm.weight"),
])
def test_other_architectures(tok, tmp_path, kind, arch, extra_tensor):
    import gguf

    model = tiny_model(tok, kind)
    src = save(model, tok, tmp_path / kind)
    out = export(ExportConfig(source=src, qtype="F32", out=tmp_path / f"{kind}.gguf")).path
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == arch
    assert extra_tensor in {t.name for t in reader.tensors}
    ids = text_ids(tok)
    assert_logits_match(hf_logits(model, ids), gguf_logits(out, ids), TOL_F32)


def tiny_gemma3(tok, sliding_window: int, **overrides):
    """A random 6-layer Gemma 3 (five sliding-window layers, then a global one) with random norm weights."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = dict(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               intermediate_size=128, vocab_size=len(tok) + 3, max_position_embeddings=256, query_pre_attn_scalar=16,
               initializer_range=0.3, sliding_window=sliding_window, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**{**cfg, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.3)  # Gemma stores norms as (scale - 1): random ones make the +1 shift matter
    return model


def test_gemma3_exports_in_llama_cpps_layout_and_its_logits_match(tmp_path):
    import gguf

    tok = sentencepiece_style_tokenizer()
    ids = text_ids(tok)  # 75 tokens: well past the sliding window of 8
    model = tiny_gemma3(tok, sliding_window=8)
    src = save(model, tok, tmp_path / "gemma3")
    out = export(ExportConfig(source=src, qtype="F32", out=tmp_path / "gemma3.gguf")).path
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["gemma3.attention.sliding_window"].contents() == 8
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors and "blk.5.post_ffw_norm.weight" in tensors  # tied; Gemma's extra norms
    hf_norm = model.model.layers[0].self_attn.q_norm.weight.detach().numpy()
    assert np.allclose(np.asarray(tensors["blk.0.attn_q_norm.weight"].data), hf_norm + 1.0)
    ref = hf_logits(model, ids)
    assert_logits_match(ref, gguf_logits(out, ids), 5e-4)  # GELU (tanh) and 6 layers: F32 agreement to 2e-4
    # the window is applied as transformers applies it: without it, the logits are far apart
    wide = hf_logits(tiny_gemma3(tok, sliding_window=512), ids)
    assert np.abs(wide - ref).max() > 20 * 5e-4 * np.abs(ref).max()


def test_gemma3_settings_llama_cpp_cannot_read_are_refused(tmp_path):
    tok = sentencepiece_style_tokenizer()
    src = save(tiny_gemma3(tok, sliding_window=8, query_pre_attn_scalar=64), tok, tmp_path / "g")
    with pytest.raises(QuantError, match="query_pre_attn_scalar 64 != head_dim 16"):
        export(ExportConfig(source=src, qtype="F32", out=tmp_path / "g.gguf"))


def test_a_sentencepiece_vocabulary_read_from_a_gguf_is_written_back_unchanged(tmp_path):
    """transformers reads a GGUF's SentencePiece vocabulary as a BPE tokenizer; the export writes the source GGUF's
    own tokens, scores and token types back, and only for that vocabulary."""
    import gguf

    from dca.quant.gguf_writer import write_gguf
    from dca.quant.source import gguf_tokenizer_metadata

    tok = sentencepiece_style_tokenizer()
    model = tiny_model(tok)
    first = tmp_path / "first.gguf"
    write_gguf(model, tok, first, out_type="F32")
    source = gguf_tokenizer_metadata(first)
    assert source["tokenizer.ggml.model"] == "llama" and len(source["tokenizer.ggml.tokens"]) == len(tok) + 3
    scores = [float(-i) / 7 for i in range(len(source["tokenizer.ggml.scores"]))]  # not what BPE ranks give
    types = [int(gguf.TokenType.USER_DEFINED)] + list(source["tokenizer.ggml.token_type"][1:])
    carried = tmp_path / "carried.gguf"
    write_gguf(model, tok, carried, out_type="F32", source_vocab={**source, "tokenizer.ggml.scores": scores,
                                                                  "tokenizer.ggml.token_type": types})
    meta = gguf_tokenizer_metadata(carried)
    assert np.allclose(meta["tokenizer.ggml.scores"], scores) and meta["tokenizer.ggml.token_type"] == types
    other = [f"x{i}" for i in range(len(source["tokenizer.ggml.tokens"]))]  # another vocabulary: not carried
    kept = tmp_path / "kept.gguf"
    write_gguf(model, tok, kept, out_type="F32", source_vocab={**source, "tokenizer.ggml.tokens": other,
                                                               "tokenizer.ggml.scores": scores})
    assert gguf_tokenizer_metadata(kept)["tokenizer.ggml.scores"] == source["tokenizer.ggml.scores"]


def test_bf16_is_written_directly(llama_dir, tok, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    out = export(ExportConfig(source=llama_dir, qtype="BF16", out=tmp_path / "m.gguf")).path
    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert reader.fields["general.file_type"].contents() == 32
    ids = text_ids(tok)
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    assert_logits_match(hf_logits(model, ids), gguf_logits(out, ids), 10 * TOL_F16)  # bf16 has 3 fewer mantissa bits


def test_gguf_source_round_trips_through_transformers(llama_dir, tok, tmp_path):
    import gguf

    first = export(ExportConfig(source=llama_dir, qtype="F32", out=tmp_path / "first.gguf")).path
    again = export(ExportConfig(source=first, qtype="F32", out=tmp_path / "again.gguf")).path
    assert read_manifest(again)["source"]["kind"] == "gguf"
    ids = text_ids(tok)
    assert_logits_match(gguf_logits(first, ids), gguf_logits(again, ids), TOL_F32)
    a, b = gguf.GGUFReader(first), gguf.GGUFReader(again)
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.chat_template"):
        assert a.fields[key].contents() == b.fields[key].contents(), key


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64, "rope_theta": 10000.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0},
])
def test_rope_scaling(tok, tmp_path, rope):
    model = tiny_model(tok, rope_parameters=rope)
    plain = tiny_model(tok)  # same seed, same weights, no scaling
    src = save(model, tok, tmp_path / "rope")
    out = export(ExportConfig(source=src, qtype="F32", out=tmp_path / "rope.gguf")).path
    ids = text_ids(tok)
    ref = hf_logits(model, ids)
    assert np.abs(ref - hf_logits(plain, ids)).max() > 0.1 * np.abs(ref).max()  # the scaling matters here
    assert_logits_match(ref, gguf_logits(out, ids), TOL_F32)


# -- LoRA ----------------------------------------------------------------------------------------------------


ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_lora(base, tok, **lora):
    """``base`` wrapped in a peft LoRA adapter (all projections unless ``target_modules`` is given) after 4 AdamW
    steps on SENTENCES' tokens in reverse order (new to the base); asserts the loss fell."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(**{"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                               "target_modules": ALL_PROJECTIONS, **lora}))
    batch = torch.tensor([text_ids(tok)[::-1][:64]])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    return model


def test_lora_adapter_is_merged_before_export(llama_dir, tok, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    model = train_lora(AutoModelForCausalLM.from_pretrained(llama_dir), tok)
    run = tmp_path / "run"
    model.save_pretrained(run / "adapter")  # a training run directory: RUN/adapter/adapter_config.json
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(llama_dir)
    merged = model.merge_and_unload().eval()

    out = tmp_path / "lora.F16.gguf"
    export(ExportConfig(source=run, qtype="F16", out=out))
    ids = text_ids(tok)
    ref = hf_logits(merged, ids)
    plain = hf_logits(AutoModelForCausalLM.from_pretrained(llama_dir).eval(), ids)
    assert np.abs(ref - plain).max() > 0.05 * np.abs(ref).max()  # the adapter changed the model
    assert_logits_match(ref, gguf_logits(out, ids), TOL_F16)
    manifest = read_manifest(out)
    assert manifest["source"]["kind"] == "adapter" and manifest["source"]["adapter"] == str((run / "adapter").resolve())
    assert manifest["source"]["base"] == str(llama_dir.resolve())
    (r,) = check(CheckConfig(ggufs=[out], text_path=text_file, tokens=200, window=100, decode_tokens=0))
    assert r.top1_agreement == 1.0  # against the merged model, rebuilt from the manifest


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_lora_adapter_kept_apart_is_applied_by_llama_cpp_as_peft_applies_it(llama_dir, tok, tmp_path, arch):
    import gguf
    from transformers import AutoModelForCausalLM

    from dca.llm import LlamaCppLLM
    from dca.llm.sampling import sample_parallel

    if arch == "gemma3":  # no q/k permutation, Gemma's norms; a SentencePiece-style vocabulary
        tok = sentencepiece_style_tokenizer()
        base_dir = save(tiny_gemma3(tok, sliding_window=8), tok, tmp_path / "gemma3")
    else:  # q/k rows permuted: so must the rows of their lora_b be
        base_dir = llama_dir
    # rsLoRA and rank/alpha patterns: four different peft scales, one alpha in the GGUF
    model = train_lora(AutoModelForCausalLM.from_pretrained(base_dir), tok, use_rslora=True,
                       rank_pattern={"o_proj": 2}, alpha_pattern={"v_proj": 2})
    run = tmp_path / "run"
    model.save_pretrained(run / "adapter")
    result = export(ExportConfig(source=run, qtype="F32", out=tmp_path / "student.F32.gguf", adapter_mode="separate"))
    assert result.lora_path == tmp_path / "student.F32.lora.gguf"
    reader = gguf.GGUFReader(result.lora_path)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["general.architecture"].contents() == arch
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8 / 2 * 4)  # alpha / sqrt(r) * r
    names = {t.name for t in reader.tensors}
    n_layers = model.config.num_hidden_layers
    assert len(names) == 2 * 7 * n_layers and {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b"} <= names
    lora = read_manifest(result.path)["lora"]
    assert (lora["rank"], lora["weights"], lora["type"]) == (4, 7 * n_layers, "F32")

    ids = text_ids(tok)
    ref_base = hf_logits(AutoModelForCausalLM.from_pretrained(base_dir).eval(), ids)
    ref = hf_logits(model.merge_and_unload().eval(), ids)
    assert np.abs(ref - ref_base).max() > 0.05 * np.abs(ref).max()  # the adapter changed the model
    tol = 5e-4 if arch == "gemma3" else TOL_F32
    assert_logits_match(ref_base, gguf_logits(result.path, ids), tol)  # OUT.gguf: the base alone
    assert_logits_match(ref, gguf_logits(result.path, ids, lora=result.lora_path), tol)

    llm = LlamaCppLLM(result.path, n_ctx=256)  # finds the adapter through the manifest
    try:
        assert llm.lora_path == result.lora_path.resolve()
        prompt = tok.decode(ids[:20])
        greedy = "".join(llm.generate(prompt, max_tokens=16))
        # the parallel sampler's own llama.cpp context applies the adapter too
        assert [o.text for o in sample_parallel(llm.llama, prompt, n=2, max_tokens=16, temperature=0)] == [greedy] * 2
    finally:
        llm.close()
    import llama_cpp

    plain = llama_cpp.Llama(model_path=str(result.path), n_ctx=256, verbose=False)  # the base alone
    try:
        assert plain.create_completion(prompt, max_tokens=16, temperature=0)["choices"][0]["text"] != greedy
    finally:
        plain.close()
    (r,) = check(CheckConfig(ggufs=[result.path], text_path=None, tokens=60, window=60, decode_tokens=0))
    assert r.top1_agreement == 1.0  # against the merged model, rebuilt from the manifest


def test_adapters_llama_cpp_cannot_apply_at_run_time_are_merged_or_refused(llama_dir, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from dca.quant.source import unseparable_reason

    model = train_lora(AutoModelForCausalLM.from_pretrained(llama_dir), tok, modules_to_save=["lm_head"])
    run = tmp_path / "run"
    model.save_pretrained(run / "adapter")
    assert "lm_head" in unseparable_reason(run / "adapter")
    with pytest.raises(ConfigError, match="--adapter-mode merge"):
        export(ExportConfig(source=run, qtype="F16", out=tmp_path / "a.gguf", adapter_mode="separate"))
    assert export(ExportConfig(source=run, qtype="F16", out=tmp_path / "b.gguf")).lora_path is None  # auto: merged
    embeddings = train_lora(AutoModelForCausalLM.from_pretrained(llama_dir), tok,
                            target_modules=["q_proj", "embed_tokens"])
    embeddings.save_pretrained(tmp_path / "emb")
    assert "embeddings or the output matrix" in unseparable_reason(tmp_path / "emb")
    with pytest.raises(ConfigError, match="is a whole model"):
        export(ExportConfig(source=llama_dir, qtype="F16", out=tmp_path / "c.gguf", adapter_mode="separate"))
    with pytest.raises(ConfigError, match="--adapter-mode must be one of"):
        ExportConfig(source=run, adapter_mode="apart")


def test_a_missing_adapter_file_is_named_when_the_base_is_loaded(llama_dir, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from dca.errors import ModelError
    from dca.llm import LlamaCppLLM

    model = train_lora(AutoModelForCausalLM.from_pretrained(llama_dir), tok, target_modules=["q_proj"])
    run = tmp_path / "run"
    model.save_pretrained(run / "adapter")
    result = export(ExportConfig(source=run, qtype="F16", out=tmp_path / "s.gguf", adapter_mode="separate"))
    for f in ("s.gguf", "s.manifest.json"):
        (tmp_path / f).rename(tmp_path / f"kept-{f}")
    with pytest.raises(ConfigError, match=r"s\.lora\.gguf, beside -o/--out .* exists; pass --force"):
        export(ExportConfig(source=run, qtype="F16", out=tmp_path / "s.gguf", adapter_mode="separate"))
    for f in ("s.gguf", "s.manifest.json"):
        (tmp_path / f"kept-{f}").rename(tmp_path / f)

    # transformers would load the base alone: training from it, or exporting it again, is refused
    from dca.distill.stamps import fingerprint
    from dca.distill.train import resolve_base

    with pytest.raises(ConfigError, match="kept apart.*--adapter-mode merge"):
        resolve_base(str(result.path))
    with pytest.raises(QuantError, match="kept apart"):
        export(ExportConfig(source=result.path, qtype="F16", out=tmp_path / "again.gguf"))
    # a stage whose input is the base runs again when only its adapter changed
    before = fingerprint(result.path)
    assert before["lora"]["sha256"] == read_manifest(result.path)["lora"]["sha256"]
    with open(result.lora_path, "ab") as f:
        f.write(b"\0")
    assert fingerprint(result.path) != before
    result.lora_path.unlink()
    with pytest.raises(ModelError, match=r"s\.lora\.gguf is missing.*put the adapter beside it"):
        LlamaCppLLM(result.path, n_ctx=64)
    apart = export(ExportConfig(source=run, qtype="F16", out=tmp_path / "s.gguf", adapter_mode="separate", force=True))
    assert apart.lora_path.is_file()
    merged = export(ExportConfig(source=run, qtype="F16", out=tmp_path / "s.gguf", force=True))
    assert merged.lora_path is None and "lora" not in merged.manifest
    assert not apart.lora_path.exists()  # the earlier export's adapter does not belong to the merged model
    LlamaCppLLM(merged.path, n_ctx=64).close()  # a whole model again: no adapter asked for


def _metadata_only_gguf(path: Path, file_type: int) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_file_type(file_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("base_type, qtype, warns", [
    (15, "Q4_K_M", True), (2, "Q4_0", True),  # a 2-6-bit target of the base's own type: each tensor on its grid
    (15, "Q5_K_M", False), (3, "Q4_K_M", False),  # another type: the rounding does not return to the base
    (15, "Q8_0", False), (15, "F16", False),  # fine enough steps, or no quantization
    (1, "Q4_K_M", False), (0, "Q4_K_M", False), (7, "Q4_K_M", False),  # an F16, F32 or Q8_0 base
])
def test_requantization_warning_names_the_base_type_and_the_way_out(tmp_path, base_type, qtype, warns):
    from dca.quant.export import requantization_warning

    msg = requantization_warning(_metadata_only_gguf(tmp_path / "base.gguf", base_type), qtype)
    assert (msg is not None) == warns
    if warns:
        assert f"is {qtype} too" in msg and "-t Q8_0" in msg and "--adapter-mode separate" in msg
    assert requantization_warning(tmp_path, qtype) is None  # an HF directory base


def test_adapter_over_a_quantized_gguf_base_is_kept_apart_or_warns_on_requantization(llama_dir, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    base = export(ExportConfig(source=llama_dir, qtype="Q4_0", out=tmp_path / "base.Q4_0.gguf")).path
    model = train_lora(AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=base.name), tok)
    run = tmp_path / "run"
    model.save_pretrained(run / "adapter")
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(tmp_path)  # transformers names the directory: the GGUF is given with --base-path, as users do
    merged = export(ExportConfig(source=run, base=base, qtype="Q4_0", out=tmp_path / "merged.Q4_0.gguf",
                                 adapter_mode="merge"))
    assert len(merged.warnings) == 1 and "base.Q4_0.gguf is Q4_0 too" in merged.warnings[0]
    assert read_manifest(merged.path)["warnings"] == merged.warnings and merged.lora_path is None
    # auto (the default): merging would lose the adapter, so it is kept apart, over the base's own tensors
    apart = export(ExportConfig(source=run, base=base, qtype="Q4_0", out=tmp_path / "student.Q4_0.gguf"))
    assert apart.warnings == [] and apart.lora_path == tmp_path / "student.Q4_0.lora.gguf"
    assert read_manifest(apart.path)["lora"]["gguf"] == "student.Q4_0.lora.gguf"
    assert read_manifest(apart.path)["tensors_from"] == str(base.resolve())
    import gguf

    ours, theirs = ({t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(f).tensors}
                    for f in (apart.path, base))
    assert ours == theirs  # byte for byte: the weights the adapter was trained over, not re-quantized
    ids = text_ids(tok)
    ref_base = hf_logits(AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=base.name).eval(), ids)
    ref = hf_logits(model.merge_and_unload().eval(), ids)
    scale = np.abs(ref).max()
    # llama.cpp runs Q4_0 with 8-bit activations: the base's own distance from transformers is the floor
    floor = np.abs(gguf_logits(base, ids) - ref_base).max()
    with_adapter = np.abs(gguf_logits(apart.path, ids, lora=apart.lora_path) - ref).max()
    assert with_adapter <= max(2 * floor, TOL_F16 * scale), (with_adapter, floor)
    assert np.abs(ref - ref_base).max() > 10 * with_adapter  # the adapter matters, and llama.cpp applies it
    assert np.abs(gguf_logits(merged.path, ids) - ref).max() > 5 * with_adapter  # merging lost much of it
    fine = export(ExportConfig(source=run, base=base, qtype="Q8_0", out=tmp_path / "student.Q8_0.gguf"))
    assert fine.warnings == [] and "warnings" not in read_manifest(fine.path) and fine.lora_path is None

    # `dca distill run`'s chain: an F16 export (merged: nothing lost at 16 bits), then quantized to the base's type
    from dca.quant import quantize_export

    f16 = export(ExportConfig(source=run, base=base, qtype="F16", out=tmp_path / "chain.F16.gguf"))
    assert f16.lora_path is None and f16.warnings == []
    quantized = quantize_export(f16.path, tmp_path / "chain.Q4_0.gguf", "Q4_0")  # re-exported with the adapter apart
    assert quantized.lora_path == tmp_path / "chain.Q4_0.lora.gguf" and quantized.warnings == []
    again = np.abs(gguf_logits(quantized.path, ids, lora=quantized.lora_path) - ref).max()
    assert again == pytest.approx(with_adapter, rel=1e-3)
    run.rename(tmp_path / "gone")  # the training run is no longer there: quantized as merged, with the warning
    lost = quantize_export(f16.path, tmp_path / "chain.Q4_0.gguf", "Q4_0")
    assert lost.lora_path is None and not (tmp_path / "chain.Q4_0.lora.gguf").exists()
    assert len(lost.warnings) == 1 and read_manifest(lost.path)["warnings"] == lost.warnings


def test_run_directory_records_the_base_when_the_adapter_names_a_hub_id(llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(run / "adapter")
    cfg_path = run / "adapter" / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model_name_or_path": "org/tiny-llama"}))
    # dca distill train's manifest records the base (dca/distill/rundir.py)
    (run / "manifest.json").write_text(json.dumps({"format": "dca-train", "base": {"path": str(llama_dir), "kind": "hf"}}))
    out = export(ExportConfig(source=run, qtype="F16", out=tmp_path / "m.gguf")).path
    assert read_manifest(out)["source"]["base"] == str(llama_dir.resolve())


def test_full_fine_tuning_run_directory_exports_its_model(llama_dir, tok, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(llama_dir, run / "model")
    (run / "manifest.json").write_text(json.dumps({"format": "dca-train", "output": "model"}))
    out = export(ExportConfig(source=run, qtype="F32", out=tmp_path / "m.gguf")).path
    from transformers import AutoModelForCausalLM

    ids = text_ids(tok)
    assert_logits_match(hf_logits(AutoModelForCausalLM.from_pretrained(llama_dir).eval(), ids), gguf_logits(out, ids),
                        TOL_F32)


def test_adapter_whose_base_is_not_local_asks_for_base_path(llama_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/not-here"}))
    with pytest.raises(QuantError, match="--base"):
        export(ExportConfig(source=adapter, qtype="F16", out=tmp_path / "x.gguf"))
    assert not (tmp_path / "x.gguf").exists()


# -- bad input -----------------------------------------------------------------------------------------------


def test_directory_without_weights(llama_dir, tmp_path):
    src = tmp_path / "empty-model"
    src.mkdir()
    (src / "config.json").write_text((llama_dir / "config.json").read_text())
    with pytest.raises(QuantError, match="no weights"):
        export(ExportConfig(source=src, qtype="F16", out=tmp_path / "x.gguf"))
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(QuantError, match="holds no model"):
        export(ExportConfig(source=nothing, qtype="F16", out=tmp_path / "x.gguf"))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors(llama_dir, tmp_path, damage):
    import shutil

    src = shutil.copytree(llama_dir, tmp_path / "broken")
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x00garbage" * 100 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(QuantError, match="model.safetensors"):
        export(ExportConfig(source=src, qtype="F16", out=tmp_path / "x.gguf"))
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_and_imatrix_quant_types_are_refused(llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="Q4_K_M") as e:
        ExportConfig(source=llama_dir, qtype="Q4_K_Z", out=tmp_path / "x.gguf")
    assert "--type" in str(e.value) and "Q8_0" in str(e.value)
    with pytest.raises(ConfigError, match="importance matrix"):
        ExportConfig(source=llama_dir, qtype="IQ2_XXS", out=tmp_path / "x.gguf")
    with pytest.raises(ConfigError, match="--out"):
        ExportConfig(source=llama_dir, qtype="F16", out=tmp_path / "x.bin")
    assert ExportConfig(source=llama_dir, qtype="q4_k", out=tmp_path / "x.gguf").qtype == "Q4_K_M"


def test_unsupported_architecture_lists_the_supported_ones(tok, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    src = save(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tok))), tok, tmp_path / "gpt2")
    with pytest.raises(QuantError, match="GPT2LMHeadModel") as e:
        export(ExportConfig(source=src, qtype="F16", out=tmp_path / "x.gguf"))
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"):
        assert name in str(e.value)


def test_existing_output_is_refused_without_force(llama_dir, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    with pytest.raises(ConfigError, match="--force"):
        export(ExportConfig(source=llama_dir, qtype="F16", out=out))
    assert out.read_bytes() == b"old"
    export(ExportConfig(source=llama_dir, qtype="F16", out=out, force=True))
    assert out.read_bytes()[:4] == b"GGUF" and manifest_path(out).exists()


@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_disk_full_mid_write_leaves_no_partial_file(llama_dir, tmp_path, monkeypatch, qtype):
    import gguf

    real = gguf.GGUFWriter.write_tensors_to_file

    def full_disk(self, *args, **kwargs):
        self.write_ti_data_to_file()
        self.fout[0].write(b"\0" * 4096)  # some tensor bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(QuantError, match="No space left on device"):
        export(ExportConfig(source=llama_dir, qtype=qtype, out=out))
    assert list(out.parent.iterdir()) == []
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", real)
    export(ExportConfig(source=llama_dir, qtype=qtype, out=out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf", "m.manifest.json"]


def test_temporaries_of_a_killed_export_are_cleaned_up(llama_dir, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    left = tmp_path / f".m.gguf.tmp-{dead}.f16"
    left.write_bytes(b"GGUF partial")
    export(ExportConfig(source=llama_dir, qtype="F16", out=tmp_path / "m.gguf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.manifest.json"]


def test_missing_gguf_package_gives_the_install_hint(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(MissingDependencyError, match=r"dca\[quant\]"):
        export(ExportConfig(source=llama_dir, qtype="F16", out=tmp_path / "x.gguf"))


def test_check_without_manifest_needs_a_reference(llama_dir, tmp_path):
    out = export(ExportConfig(source=llama_dir, qtype="F16", out=tmp_path / "m.gguf")).path
    manifest_path(out).unlink()
    with pytest.raises(QuantError, match="--reference"):
        check(CheckConfig(ggufs=[out], tokens=50, window=50))


def test_quant_type_table_matches_llama_cpp():
    import llama_cpp

    from dca.cli.quant import _TYPES_HELP
    from dca.quant.quantize import LLAMA_CPP_TYPES, NEEDS_IMATRIX, QUANT_TYPES, WRITE_TYPES

    for name, value in {**LLAMA_CPP_TYPES, **NEEDS_IMATRIX}.items():
        assert getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}") == value, name
    assert WRITE_TYPES == {"F32": llama_cpp.LLAMA_FTYPE_ALL_F32, "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
                           "BF16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16}
    listed = set(re.findall(r"\b(?:BF|IQ|TQ|F|Q)\d[0-9A-Z_]*\b", _TYPES_HELP))
    assert listed == set(QUANT_TYPES)  # --help lists exactly the accepted names


# -- CLI -----------------------------------------------------------------------------------------------------


def test_cli_export_and_check(llama_dir, text_file, tmp_path):
    from typer.testing import CliRunner

    from dca.cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["quant", "--help"], env={"COLUMNS": "200"}).output
    assert "export" in help_text and "check" in help_text
    export_help = runner.invoke(app, ["quant", "export", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--out", "--type", "Q4_K_M", "--base-path", "--dtype", "--force", "--config",
                 "--token-embedding-type", "--output-tensor-type"):
        assert flag in export_help, flag
    check_help = runner.invoke(app, ["quant", "check", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--reference", "--text-path", "--tokens", "--window"):
        assert flag in check_help, flag
    out = tmp_path / "m.gguf"
    r = runner.invoke(app, ["quant", "export", str(llama_dir), "-t", "F16", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "manifest" in r.output and out.exists()
    r = runner.invoke(app, ["quant", "export", str(llama_dir), "-t", "F16", "-o", str(out)])
    assert r.exit_code == 1 and "--force" in r.output
    r = runner.invoke(app, ["quant", "export", str(llama_dir), "-t", "Q9_9", "-o", str(tmp_path / "n.gguf")])
    assert r.exit_code == 1 and "Q4_K_M" in r.output
    r = runner.invoke(app, ["quant", "check", str(out), "--text-path", str(text_file), "--tokens", "200",
                            "--window", "100", "--decode-tokens", "4"])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if "m.gguf" in line)  # stdout: the table, not progress
    assert "F16" in row and "same" in row and "100.00%" in row


# -- the bundled SmolLM2-135M-Instruct, round-tripped ------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_round_trip_f16_q8_q4(tmp_path):
    from conftest import bundled_gguf

    src = bundled_gguf()
    paths = {}
    for qtype in ("F16", "Q8_0", "Q4_K_M"):
        result = export(ExportConfig(source=src, qtype=qtype, out=tmp_path / f"smollm2.{qtype}.gguf"))
        assert result.seconds["total"] < 60
        paths[qtype] = result.path
    results = {r.quant_type: r for r in check(CheckConfig(ggufs=list(paths.values()), tokens=2048, window=512,
                                                          decode_tokens=0))}
    assert results["F16"].tokens >= 2000
    assert results["F16"].top1_agreement >= 0.99
    # Measured 0.960 (Q8_0) and 0.891 (Q4_K_M). llama.cpp quantizes activations for quantized weights: the
    # bundled Q4_1 file itself, whose weights are exactly the reference's, agrees on 0.967 only, and a Q8_0 file
    # against its own dequantized weights on 0.964; so these bounds sit just under those floors.
    assert results["Q8_0"].top1_agreement >= 0.95
    assert results["Q4_K_M"].top1_agreement >= 0.87
    assert results["F16"].mean_kl < results["Q8_0"].mean_kl < results["Q4_K_M"].mean_kl
    assert all(r.chat_template.match for r in results.values())
    dca = Path(sys.executable).with_name("dca")
    run = subprocess.run([str(dca), "chat", "-m", str(paths["Q4_K_M"]), "What is the capital of France?",
                          "--max-tokens", "32"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.split()) >= 3


def test_the_command_line_prints_dca_output_only(llama_dir, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "m.Q8_0.gguf"
    r = subprocess.run([sys.executable, "-m", "dca.cli", "quant", "export", str(llama_dir), "-t", "Q8_0", "-o", str(out)],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out} (Q8_0") and out.exists()
    # no library bars ("Loading weights: 100%|...") or warnings: only dca's progress lines, one per phase
    assert [line.split()[:2] for line in r.stderr.splitlines()] == [
        ["export", "load"], ["export", "write"], ["export", "quantize"], ["export", "manifest"]]
