"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize`` through llama-cpp-python).

The names are llama.cpp's (``llama-quantize --help``); the numbers are its ``enum llama_ftype``, kept here so
that validating ``--type`` does not import llama_cpp (a test checks them against ``llama_cpp.LLAMA_FTYPE_*``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError, QuantError

log = logging.getLogger(__name__)

#: Types our own writer produces directly (no llama.cpp pass): name -> ``general.file_type``.
WRITE_TYPES: dict[str, int] = {"F32": 0, "F16": 1, "BF16": 32}

#: Types llama.cpp's quantizer produces from an F16/BF16/F32 GGUF: name -> ``llama_ftype``.
LLAMA_CPP_TYPES: dict[str, int] = {
    "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18,
    "IQ3_XS": 22, "IQ3_XXS": 23, "IQ4_NL": 25, "IQ3_S": 26, "IQ3_M": 27, "IQ4_XS": 30,
    "TQ1_0": 36, "TQ2_0": 37,
}

#: Types llama.cpp refuses to make without an importance matrix, which dca does not compute.
NEEDS_IMATRIX: dict[str, int] = {"IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21, "IQ1_S": 24, "IQ2_S": 28, "IQ2_M": 29,
                                 "IQ1_M": 31}

#: ``llama-quantize`` accepts these short names too.
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

#: Every name ``--type`` accepts, in the order ``--help`` lists them.
QUANT_TYPES: tuple[str, ...] = (*WRITE_TYPES, *LLAMA_CPP_TYPES)

#: Per-tensor types ``--token-embedding-type``/``--output-tensor-type`` accept: name -> ``enum ggml_type`` (ggml.h;
#: a test checks them against ``gguf.GGMLQuantizationType``). These are tensor types, not file types: ``Q4_K``,
#: not ``Q4_K_M``.
TENSOR_TYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "BF16": 30, "Q8_0": 8, "Q6_K": 14, "Q5_K": 13, "Q4_K": 12, "Q3_K": 11, "Q2_K": 10,
    "Q5_0": 6, "Q5_1": 7, "Q4_0": 2, "Q4_1": 3, "IQ4_NL": 20, "IQ4_XS": 23,
}


def normalize_qtype(name: str, flag: str = "--type") -> str:
    """The canonical spelling of a quantization type name (case-insensitive, aliases resolved).

    Raises:
        ConfigError: an unknown name (the message lists the valid ones), or one that needs an importance
            matrix.
    """
    key = str(name).strip().upper().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in NEEDS_IMATRIX:
        raise ConfigError(f"{flag} {name}: llama.cpp makes this very-low-bit type only with an importance matrix "
                          f"(imatrix), which dca does not compute; choose one of {', '.join(QUANT_TYPES)}")
    if key not in WRITE_TYPES and key not in LLAMA_CPP_TYPES:
        raise ConfigError(f"{flag} {name}: unknown quantization type; choose one of {', '.join(QUANT_TYPES)}")
    return key


def normalize_tensor_type(name: str, flag: str) -> str:
    """The canonical spelling of a per-tensor type name (:data:`TENSOR_TYPES`, case-insensitive).

    Raises:
        ConfigError: an unknown name; the message names ``flag`` and lists the valid ones (and says so when a
            file type such as ``Q4_K_M`` was given instead of a tensor type).
    """
    key = str(name).strip().upper().replace("-", "_")
    if key in TENSOR_TYPES:
        return key
    hint = ""
    if key in LLAMA_CPP_TYPES:
        stem = key.rsplit("_", 1)[0] if key.endswith(("_S", "_M", "_L")) else None
        near = f"{stem}, " if stem in TENSOR_TYPES else ""
        hint = f" ({name} is a file type, for --type; tensor types are {near}Q8_0, F16...)"
    raise ConfigError(f"{flag} {name}: unknown tensor type{hint}; choose one of {', '.join(TENSOR_TYPES)}")


def resolve_tensor_types(token_embedding_type: str | None, output_tensor_type: str | None, *, tied: bool,
                         source: object = "the model") -> tuple[str | None, str | None]:
    """The ``(token_embedding_type, output_tensor_type)`` to hand llama.cpp's quantizer for a model.

    llama.cpp quantizes a tied embedding/output matrix (``token_embd.weight`` with no ``output.weight``) with the
    output type, so a tied model's ``--token-embedding-type`` is passed as the output type too.

    Raises:
        ConfigError: the model is tied and the two types differ; the message names ``source`` and both flags.
    """
    embedding, output = token_embedding_type, output_tensor_type
    if not tied or embedding is None:
        return embedding, output
    if output is not None and output != embedding:
        raise ConfigError(f"--token-embedding-type {embedding} and --output-tensor-type {output}: {source} ties "
                          "its output matrix to its token embedding, one tensor that takes one type; give one flag")
    return embedding, embedding


def check_row_sizes(row: int, source: object, token_embedding_type: str | None = None,
                    output_tensor_type: str | None = None) -> None:
    """Refuse a per-tensor type whose blocks do not tile the embedding and output matrices' rows of ``row`` weights:
    llama.cpp's quantizer aborts the process on such a type (``GGML_ASSERT ... tensor row size not divisible by
    block size``) instead of returning an error.

    Raises:
        ConfigError: ``row`` is not a multiple of a given type's block size; the message names the flag and the
            types whose blocks fit.
    """
    import gguf

    def block(name: str) -> int:
        return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(TENSOR_TYPES[name])][0]

    for tensor_type, flag in ((token_embedding_type, "--token-embedding-type"),
                              (output_tensor_type, "--output-tensor-type")):
        if tensor_type and row % block(tensor_type):
            fits = [t for t in TENSOR_TYPES if row % block(t) == 0]
            raise ConfigError(f"{flag} {tensor_type}: the rows of {source}'s embedding and output matrices hold {row} "
                              f"weights, not a whole number of {tensor_type}'s {block(tensor_type)}-weight blocks; "
                              f"choose one of {', '.join(fits)}")


def _embedding_length(path: Path) -> int | None:
    """``{arch}.embedding_length`` of a GGUF (the row size of its embedding and output matrices), or None."""
    import gguf

    try:
        fields = gguf.GGUFReader(path).fields
        arch = fields["general.architecture"].contents()
        return int(fields[f"{arch}.embedding_length"].contents())
    except (KeyError, ValueError, OSError):
        return None


def quantize_gguf(src: Path, dst: Path, qtype: str, *, threads: int | None = None,
                  token_embedding_type: str | None = None, output_tensor_type: str | None = None) -> None:
    """Quantize the GGUF ``src`` (F32/F16/BF16) into ``dst`` with llama.cpp's quantizer.

    llama.cpp picks per-tensor types itself: e.g. ``Q4_K_M`` keeps some ``attn_v``/``ffn_down`` tensors and the
    output matrix at Q6_K, 1-D tensors stay F32, and a tensor whose rows do not fit the block size (256 for
    k-quants) falls back to a legacy type. ``token_embedding_type``/``output_tensor_type`` override its choice for
    ``token_embd.weight``/``output.weight``, as ``llama-quantize --token-embedding-type/--output-tensor-type`` do;
    in a model with tied embeddings (no ``output.weight``) llama.cpp gives the shared ``token_embd.weight`` the
    output type.

    Args:
        src: the input GGUF.
        dst: the file to write (overwritten).
        qtype: a name of :data:`LLAMA_CPP_TYPES`.
        threads: quantizer threads; None uses one per hardware thread.
        token_embedding_type: a name of :data:`TENSOR_TYPES`, or None for llama.cpp's choice.
        output_tensor_type: a name of :data:`TENSOR_TYPES`, or None for llama.cpp's choice.

    Raises:
        ConfigError: a per-tensor type whose blocks do not tile the matrices' rows (:func:`check_row_sizes`).
        MissingDependencyError: llama-cpp-python is not installed.
        QuantError: llama.cpp failed (unreadable input, unsupported architecture, a write error).
    """
    from ..llm.native import quantize_model

    row = _embedding_length(src) if token_embedding_type or output_tensor_type else None
    if row:
        check_row_sizes(row, src.name, token_embedding_type, output_tensor_type)

    log.info("quantizing %s -> %s (%s)", src, dst, qtype)
    try:
        errors = quantize_model(src, dst, LLAMA_CPP_TYPES[qtype], threads=threads,
                                token_embedding_type=None if token_embedding_type is None
                                else TENSOR_TYPES[token_embedding_type],
                                output_tensor_type=None if output_tensor_type is None
                                else TENSOR_TYPES[output_tensor_type])
    except OSError as e:  # a C++ exception surfaces as OSError through ctypes on some builds
        raise QuantError(f"llama.cpp could not quantize {src} to {qtype} ({e})") from e
    if errors:
        detail = " ".join(" ".join(errors).split())[-400:]
        raise QuantError(f"llama.cpp could not quantize {src} to {qtype}: {detail}")
