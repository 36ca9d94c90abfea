"""dca's GGUF writer against llama.cpp's own converter (``convert_hf_to_gguf.py``, kept by ``scripts/setup.sh`` from
the llama-cpp-python sources), for each family on a real model: the bundled SmolLM2-135M and the Gemma 3 270M base.

Both write the same HF directory (the GGUF read by transformers and saved, as ``dca distill train`` does for QLoRA on
a GGUF base); the two F16 files must hold the same tensors (names, shapes, types, bytes) and the same tokenizer and
architecture metadata, except the keys listed in :data:`ALLOWED` with why. llama.cpp then tokenizes 300 GSM8K texts
with dca's file exactly as the HF tokenizer does. The tests skip where the converter or a model is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bundled_gguf, gemma_base_gguf, shared_file

pytestmark = pytest.mark.slow

# Keys one file has and the other lacks or writes differently, and why that is no difference to llama.cpp.
ALLOWED = {
    # provenance the converter reads from an HF model card / name; dca names the model after its source
    "general.name", "general.basename", "general.finetune", "general.size_label", "general.type",
    "general.quantization_version", "general.license", "general.tags",
    "tokenizer.ggml.add_eos_token",  # dca writes the default (false); the converter leaves the key out
    "tokenizer.ggml.eot_token_id",  # dca marks <|im_end|>/<end_of_turn>; llama.cpp finds them by their text anyway
    "tokenizer.ggml.add_sep_token",  # the converter writes the default (false); dca leaves it out
}
VOCAB_SIZE_KEY = ".vocab_size"  # dca writes ARCH.vocab_size (the embedding rows); llama.cpp counts the token list


def converter() -> Path:
    env = os.environ.get("DCA_LLAMA_CPP_CONVERTER")
    candidates = [Path(env)] if env else sorted((Path.home() / ".cache" / "dca").glob("llama.cpp-convert-*"))
    for c in candidates:
        if (c / "convert_hf_to_gguf.py").is_file():
            return c / "convert_hf_to_gguf.py"
    pytest.skip("llama.cpp's convert_hf_to_gguf.py is not kept here (scripts/setup.sh keeps it)")


def read(path: Path):
    import gguf

    r = gguf.GGUFReader(path)
    fields = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (tuple(int(s) for s in t.shape), int(t.tensor_type), t.data.tobytes()) for t in r.tensors}
    return fields, tensors


def write_sentencepiece_model(gguf_path: Path, hf: Path) -> None:
    """The ``tokenizer.model`` an HF release of a SentencePiece model ships and transformers does not write back from
    a GGUF, rebuilt from the GGUF's pieces, scores and types (SentencePiece BPE), so that the converter takes its
    SentencePiece path as on the original release."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as spm

    r = gguf.GGUFReader(gguf_path)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    scores = r.fields["tokenizer.ggml.scores"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    for text, score, kind in zip(tokens, scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, float(score), int(kind)
    (hf / "tokenizer.model").write_bytes(proto.SerializeToString())


def hf_dir(gguf_path: Path, home: Path) -> Path:
    from dca.distill.train import gguf_as_hf_dir

    old = os.environ.get("DCA_HOME")
    os.environ["DCA_HOME"] = str(home)
    try:
        return gguf_as_hf_dir(gguf_path)
    finally:
        if old is None:
            os.environ.pop("DCA_HOME")
        else:
            os.environ["DCA_HOME"] = old


def both_exports(src: Path, tmp: Path) -> tuple[Path, Path]:
    from dca.quant import ExportConfig, export

    ref = tmp / "converter.gguf"
    run = subprocess.run([sys.executable, str(converter()), str(src), "--outfile", str(ref), "--outtype", "f16"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    ours = export(ExportConfig(source=src, qtype="F16", out=tmp / "dca.gguf")).path
    return ref, ours


def assert_same_file(ref: Path, ours: Path, arch: str, shifted: tuple[str, ...] = (),
                     allowed: frozenset[str] = frozenset()) -> list[str]:
    """Same tensors and metadata but for :data:`ALLOWED`; returns the allowed keys that differ (for the report).

    ``shifted``: suffixes of tensors the converter offsets in the checkpoint's 16-bit type (Gemma's norm + 1) where
    dca adds in float32: there the converter's value must be dca's rounded to float16, the only difference."""
    import numpy as np

    f_ref, t_ref = read(ref)
    f_ours, t_ours = read(ours)
    assert sorted(t_ref) == sorted(t_ours)
    rounded = 0
    for name in t_ref:
        assert t_ref[name][:2] == t_ours[name][:2], (name, t_ref[name][:2], t_ours[name][:2])
        if name.endswith(shifted) and t_ref[name][2] != t_ours[name][2]:
            a, b = (np.frombuffer(t[name][2], dtype="<f4") for t in (t_ref, t_ours))
            assert np.array_equal(a, b.astype(np.float16).astype(np.float32)), f"{name}: not float16 rounding"
            rounded += 1
            continue
        assert t_ref[name][2] == t_ours[name][2], f"{name}: the bytes differ"
    differing = sorted(k for k in set(f_ref) | set(f_ours) if f_ref.get(k) != f_ours.get(k))
    unexplained = [k for k in differing if k not in ALLOWED | allowed and k != arch + VOCAB_SIZE_KEY]
    assert not unexplained, {k: (str(f_ref.get(k))[:120], str(f_ours.get(k))[:120]) for k in unexplained}
    return differing


def assert_same_token_ids(gguf_path: Path, tokenizer_dir: Path, n: int = 300) -> None:
    import llama_cpp
    from transformers import AutoTokenizer

    texts = [json.loads(line)["question"] for line in shared_file("gsm8k_test.jsonl").read_text().splitlines()[:n]]
    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        mismatched = [t for t in texts if llm.tokenize(t.encode(), add_bos=False, special=False)
                      != hf(t, add_special_tokens=False)["input_ids"]]
    finally:
        llm.close()
    assert not mismatched, (len(mismatched), mismatched[:2])


def test_smollm2_matches_the_converter(tmp_path):
    src = hf_dir(bundled_gguf(), tmp_path / "home")
    ref, ours = both_exports(src, tmp_path)
    differing = assert_same_file(ref, ours, "llama")
    assert "tokenizer.ggml.pre" not in differing  # "smollm", kept from the GGUF through the HF directory
    assert_same_token_ids(ours, src)


def test_gemma3_matches_the_converter(tmp_path):
    gguf_path = gemma_base_gguf()
    src = hf_dir(gguf_path, tmp_path / "home")
    write_sentencepiece_model(gguf_path, src)
    ref, ours = both_exports(src, tmp_path)
    # The converter takes USER_DEFINED only from the added tokens of tokenizer_config.json, which a directory saved by
    # transformers from a GGUF does not list: it calls the GGUF's 165 user-defined pieces (runs of newlines and
    # spaces, [multimodal]...) NORMAL. dca writes the source GGUF's own types; checked below, entry by entry.
    assert_same_file(ref, ours, "gemma3", shifted=("norm.weight",), allowed=frozenset({"tokenizer.ggml.token_type"}))
    import gguf

    ref_types, our_types, source_types = (gguf.GGUFReader(p).fields["tokenizer.ggml.token_type"].contents()
                                          for p in (ref, ours, gguf_path))
    assert our_types == source_types
    assert all(r == o or (o == gguf.TokenType.USER_DEFINED and r == gguf.TokenType.NORMAL)
               for r, o in zip(ref_types, our_types))
    assert_same_token_ids(ours, src)
