"""``dca quant ...``: export a model to GGUF and check it against its source (a thin layer over :mod:`dca.quant`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from ..quant import CheckConfig, ExportConfig
from .common import err, handles_errors, interrupted, not_written, out, print_json, print_table, table
from .options import config_option, json_option, with_default
from .progress import ProgressView

app = typer.Typer(
    help="Quantization: merge a LoRA adapter, export to GGUF (F16, Q8_0, Q4_K_M...), check it against its source.",
    no_args_is_help=True,
)

# The names --type accepts, kept in sync with dca.quant.quantize.QUANT_TYPES by a test (no heavy import here).
_TYPES_HELP = ("F32 | F16 | BF16 (written by dca) | Q8_0 | Q6_K | Q5_K_M | Q5_K_S | Q4_K_M | Q4_K_S | Q3_K_L | Q3_K_M | "
               "Q3_K_S | Q2_K | Q5_0 | Q5_1 | Q4_0 | Q4_1 | IQ4_NL | IQ4_XS | IQ3_M | IQ3_S | IQ3_XS | IQ3_XXS | TQ1_0 | "
               "TQ2_0 (llama.cpp's quantizer).")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@app.command("export")
@handles_errors
def quant_export(
    source: Path = typer.Argument(..., help="HF model directory, LoRA adapter directory (or a training run directory holding one), or a .gguf file."),
    out_path: Optional[Path] = typer.Option(None, "-o", "--out", help="GGUF file to write \\[default: ./NAME.TYPE.gguf]."),
    qtype: Optional[str] = typer.Option(None, "-t", "--type", help=with_default(_TYPES_HELP, ExportConfig, "qtype")),
    base_path: Optional[Path] = typer.Option(None, "--base-path", help="Base model of an adapter (HF directory or GGUF) \\[default: adapter_config.json's base_model_name_or_path]."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=with_default("Precision to load and merge in: float32 | bfloat16 | float16.", ExportConfig, "dtype")),
    intermediate: Optional[str] = typer.Option(None, "--intermediate", help=with_default("GGUF type llama.cpp quantizes from: F16 | BF16 | F32.", ExportConfig, "intermediate")),
    name: Optional[str] = typer.Option(None, "--name", help="general.name in the GGUF \\[default: the source's name]."),
    tokenizer_pre: Optional[str] = typer.Option(None, "--tokenizer-pre", help="llama.cpp pre-tokenizer name when dca cannot recognise it (gpt-2, llama-bpe, qwen2, smollm...)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Quantizer threads \\[default: all]."),
    token_embedding_type: Optional[str] = typer.Option(None, "--token-embedding-type", help="Tensor type of the token embedding (token_embd.weight), as llama-quantize's flag: F16 | Q8_0 | Q6_K | Q4_K ... \\[default: llama.cpp's choice for --type]."),
    output_tensor_type: Optional[str] = typer.Option(None, "--output-tensor-type", help="Tensor type of the output matrix (output.weight) likewise; a model whose output is tied to the embedding has one tensor, set by either flag."),
    adapter_mode: Optional[str] = typer.Option(None, "--adapter-mode", help=with_default("A LoRA adapter: merge (one model) | separate (the base as OUT.gguf, the adapter as OUT.lora.gguf, applied by llama.cpp at run time) | auto (separate where merging would lose it: a quantized GGUF base exported to its own 2-6-bit type).", ExportConfig, "adapter_mode")),
    force: bool = typer.Option(False, "--force", help="Replace an existing -o/--out file.", metavar=""),
    config_path: Optional[Path] = config_option("ExportConfig"),
):
    """Export a model to GGUF: merge a LoRA adapter (or keep it apart), write F16/BF16/F32, quantize with llama.cpp.

    Writes OUT.gguf (atomically: never a partial file under that name) and OUT.manifest.json (source, base model, adapter, quant type, sizes, sha256, dca version); with a LoRA adapter kept apart, also OUT.lora.gguf, which dca chat/eval/serve apply by themselves (llama.cpp: llama-cli -m OUT.gguf --lora OUT.lora.gguf). Supported: Llama, SmolLM/SmolLM2, Mistral, Qwen2/2.5, Qwen3, Gemma 3. Check the result with: dca quant check OUT.gguf
    """
    from ..config import load_config
    from ..quant import ExportConfig, export

    cfg = load_config(ExportConfig, config_path, source=source, out=out_path, qtype=qtype, base=base_path, dtype=dtype,
                      intermediate=intermediate, name=name, tokenizer_pre=tokenizer_pre, threads=threads,
                      token_embedding_type=token_embedding_type, output_tensor_type=output_tensor_type,
                      adapter_mode=adapter_mode, force=force or None)
    with ProgressView(err, transient=True) as view:
        try:
            result = export(cfg, progress=view)
        except KeyboardInterrupt:
            raise interrupted(not_written(cfg.out)) from None
    s = result.seconds
    out.print(f"wrote {result.path} ({result.qtype}, {_mb(result.size_bytes)}, sha256 {result.sha256[:16]}...) in "
              f"{s['total']:.1f} s: load {s['load']:.1f} s, merge {s['merge']:.1f} s, write {s['write']:.1f} s, "
              f"quantize {s['quantize']:.1f} s")
    if result.lora_path is not None:
        lora = result.manifest["lora"]
        out.print(f"LoRA adapter (applied by llama.cpp at run time over {result.path.name}): {result.lora_path} "
                  f"(rank {lora['rank']}, {lora['weights']} weights, {_mb(lora['bytes'])})")
    out.print(f"manifest: {result.manifest_path}")
    for w in result.warnings:
        err.print(f"warning: {w}", markup=False)


@app.command("check")
@handles_errors
def quant_check(
    ggufs: List[Path] = typer.Argument(..., help="GGUF files to compare (several make a table across quant types)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="The model they came from, as export takes it \\[default: the source in each GGUF's manifest]."),
    base_path: Optional[Path] = typer.Option(None, "--base-path", help="Base model of an adapter reference."),
    text_path: Optional[Path] = typer.Option(None, "--text-path", help="UTF-8 text to evaluate on \\[default: Python's topic help, pydoc_data.topics]."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help=with_default("Tokens of text to evaluate.", CheckConfig, "tokens")),
    window: Optional[int] = typer.Option(None, "--window", help=with_default("Tokens per teacher-forced window.", CheckConfig, "window")),
    decode_tokens: Optional[int] = typer.Option(None, "--decode-tokens", help=with_default("Tokens generated to time decoding, 0 skips.", CheckConfig, "decode_tokens")),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp threads \\[default: one per CPU]."),
    as_json: bool = json_option(),
):
    """Compare GGUFs with their source model: top-1 agreement, KL, perplexity, speed, chat template.

    Both models read the same tokens of real text (teacher forcing); the table gives the share of positions where they predict the same next token, the mean KL divergence of the next-token distributions (reference || GGUF), each perplexity, and llama.cpp's speed. The chat template is rendered for a conversation with a think block in transformers and in llama.cpp, and the token ids compared.
    """
    from ..quant import CheckConfig, check

    given = {"reference": reference, "base": base_path, "text_path": text_path, "tokens": tokens, "window": window,
             "decode_tokens": decode_tokens, "threads": threads}
    cfg = CheckConfig(ggufs=ggufs, **{k: v for k, v in given.items() if v is not None})
    with ProgressView(err, transient=True) as view:
        results = check(cfg, progress=view)
    if as_json:
        print_json(results)
        return
    t = table("GGUF", "type", "MB", "top-1", "KL", "PPL", "ref PPL", "eval tok/s", "gen tok/s", "chat ids")
    for r in results:
        chat = r.chat_template
        verdict = ("-" if chat.match is None else "same" if chat.match
                   else Text(f"differ at {chat.first_difference}", style="red"))
        t.add_row(r.path.name, r.quant_type, f"{r.size_bytes / 1e6:.1f}", f"{r.top1_agreement:.2%}", f"{r.mean_kl:.4f}",
                      f"{r.perplexity:.2f}", f"{r.reference_perplexity:.2f}", f"{r.eval_tokens_per_s:.0f}",
                      f"{r.decode_tokens_per_s:.1f}", verdict)
    refs = sorted({r.reference for r in results})
    out.print(f"reference: {', '.join(refs)}; text: {results[0].text}, {results[0].tokens} tokens")
    print_table(t)
