"""Quantization: merge a LoRA adapter, export to GGUF with dca's own writer, quantize with llama.cpp, check.

``import dca.quant`` is cheap: torch, transformers, gguf and llama_cpp are imported when a function runs.

Example:
    >>> from dca.quant import ExportConfig, export, CheckConfig, check
    >>> result = export(ExportConfig(source="runs/sft-1", qtype="Q4_K_M", out="model.Q4_K_M.gguf"))
    >>> [r.top1_agreement for r in check(CheckConfig(ggufs=[result.path]))]
"""

from __future__ import annotations

from .check import CHAT_PROBE, ChatTemplateCheck, CheckConfig, CheckResult, check, default_text
from .export import ExportConfig, ExportResult, export, manifest_path, quantize_export, read_manifest
from .gguf_writer import SUPPORTED_ARCHITECTURES, write_gguf
from .quantize import QUANT_TYPES, quantize_gguf
from .source import load_source

__all__ = [
    "CHAT_PROBE",
    "QUANT_TYPES",
    "SUPPORTED_ARCHITECTURES",
    "ChatTemplateCheck",
    "CheckConfig",
    "CheckResult",
    "ExportConfig",
    "ExportResult",
    "check",
    "default_text",
    "export",
    "load_source",
    "manifest_path",
    "quantize_export",
    "quantize_gguf",
    "read_manifest",
    "write_gguf",
]
