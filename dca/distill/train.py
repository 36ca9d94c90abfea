"""``dca distill train``: supervised fine-tuning of a small model on reasoning traces: LoRA, QLoRA or full.

Data, chat template and loss mask: :mod:`dca.distill.data`. The run directory: :mod:`dca.distill.rundir`.

The loop is dca's own rather than transformers' ``Trainer``: AdamW (Loshchilov & Hutter 2019), linear warmup
then cosine or linear decay to ``min_lr_ratio x lr``, gradient accumulation with the loss normalised by the
labeled tokens of the whole optimizer step (so accumulation does not change the loss's scale), clipping by
global gradient norm. Rows are packed (no compute spent on padding) and the LM head runs only on positions
that carry a label, not on the prompt. LoRA: Hu et al. 2021, adapters on every linear projection of the
attention and MLP blocks by default; QLoRA: Dettmers et al. 2023, the base in 4-bit NF4 with double
quantization (bitsandbytes, CUDA only).

Resuming: the data order of step ``s`` depends only on the seed and ``s`` (each epoch is a permutation seeded
with ``seed + epoch``), and a checkpoint holds the trainable weights, the optimizer and scheduler states and
the RNG states at the end of its step; training on from it gives the weights, losses and learning rates of
an uninterrupted run with the same seed. Ctrl-C (or ``cancel``) writes a checkpoint of the last finished step.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from ..errors import ConfigError, ModelError, missing
from ..progress import Progress, ProgressFn, emitter
from . import rundir
from .data import DataStats, load_examples, prepare, split_examples
from .loop import _FREE, DEFAULT_TARGETS, METHODS, TrainConfig, TrainResult, flag, lr_factor, run_loop
from .stamps import fingerprint
from .traces import BadLine

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TARGETS", "METHODS", "TrainConfig", "TrainResult", "flag", "load_model", "lr_factor",
           "resolve_base", "train"]

def resolve_base(model: str) -> tuple[Path, str]:
    """``(path, kind)`` of ``-m/--model``: kind ``"hf"`` for a directory with ``config.json``, else ``"gguf"``.

    Raises:
        ConfigError: a directory without ``config.json``, or an unknown name or file (the message lists the
            known names), or a base whose student's adapter is kept apart (:func:`dca.llm.registry.kept_apart`).
    """
    p = Path(model).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return p.resolve(), "hf"
        raise ConfigError(f"-m/--model {p} is a directory without config.json; expected an HF model directory, a "
                          "GGUF file or a name from: dca models")
    from ..llm import resolve_model
    from ..llm.registry import kept_apart

    try:
        path = resolve_model(model).resolve()
        reason = kept_apart(path)
    except ModelError as e:
        raise ConfigError(f"-m/--model: {e}") from e
    if reason:
        raise ConfigError(f"-m/--model: {reason}")
    return path, "gguf"


def _prepare_run_dir(cfg: TrainConfig, fingerprints: dict) -> tuple[str, Path | None]:
    """``("new" | "continue" | "complete", checkpoint to load or None)``, after the checks on ``out_dir``."""
    d = cfg.out_dir
    if d.exists() and not d.is_dir():
        raise ConfigError(f"-o/--out-dir {d} is a file; choose a directory")
    if d.exists() and any(d.iterdir()):
        if cfg.force:
            rundir.clear_run(d)
            return "new", None
        saved, manifest = rundir.read_config(d), rundir.read_manifest(d)
        if saved is None or manifest is None:
            raise ConfigError(f"-o/--out-dir {d} is not empty and holds no dca training run; choose another "
                              "-o/--out-dir, or add --force to write the run there")
        settings = cfg.settings()
        diffs = rundir.settings_diff(saved, settings, {f.name: flag(f.name) for f in fields(cfg)}, _FREE)
        saved_inputs = manifest.get("inputs", {})
        diffs += [f"the content of {flag(k)} changed" for k, v in fingerprints.items() if saved_inputs.get(k) != v]
        if diffs:
            further = ""
            if (manifest.get("status") == "complete"
                    and any(saved.get(k) != settings[k] for k in ("max_steps", "epochs"))):
                model = (f"-m {d / rundir.MODEL}" if saved.get("method") == "full" else
                         f"dca quant export {d} -t F16 -o {d.name}.F16.gguf, then -m {d.name}.F16.gguf")
                further = (f". To train a finished run further, start a new run (another -o/--out-dir) from its "
                           f"weights: {model}")
                if saved.get("eval_fraction") and not saved.get("eval_data"):
                    further += (f", with --seed {saved.get('seed')} --eval-fraction {saved['eval_fraction']} so that "
                                "the held-out questions stay ones it never trained on")
            raise ConfigError(f"-o/--out-dir {d} holds a run with other settings: {'; '.join(dict.fromkeys(diffs))}. "
                              "Continue it with the same flags and data, start over with --force, or choose another "
                              f"-o/--out-dir{further}")
        if manifest.get("status") == "complete":
            return "complete", None
        found = rundir.checkpoints(d)
        return "continue", found[-1][1] if found else None
    if cfg.resume:
        raise ConfigError(f"--resume: {d} holds no run to continue; drop --resume to start one")
    return "new", None


def _import_stack():
    try:
        import torch  # noqa: F401 (availability check)
        import transformers  # noqa: F401
    except ImportError as e:
        raise missing(e.name or "transformers", "distill") from e
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise missing("peft", "distill") from e


def _check_qlora(device) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise missing("bitsandbytes", "qlora") from e
    if device.type != "cuda":
        raise ConfigError("--qlora needs a CUDA GPU (bitsandbytes' 4-bit kernels) and none is in use; drop --qlora to "
                          "train LoRA on the full-precision base, or pass --device cuda on a machine with one")


MMAP_THRESHOLD = 4 << 20  # bytes; see bound_heap_growth
_M_MMAP_THRESHOLD = -3  # malloc.h


def bound_heap_growth() -> int | None:
    """Make glibc return freed tensor buffers to the system, so that training's resident memory stays near what it
    uses; returns the threshold set, or None when left alone.

    glibc serves a block above its mmap threshold with ``mmap`` and unmaps it when freed, but it raises that
    threshold to the size of every such block freed (up to 32 MiB). After the first training step the activations
    (a few to tens of MB each) then come from the heap, whose fragments are kept: the resident size of a LoRA step of
    the bundled model grew to 4x what the tensors needed (benchmarks/README.md, "Training memory"). Fixing the
    threshold (``mallopt(M_MMAP_THRESHOLD)``, which also stops the raising) keeps large blocks on ``mmap``. It applies
    to the whole process from then on. ``DCA_MALLOC_MMAP_THRESHOLD`` (bytes) sets another value, 0 leaves glibc's
    dynamic threshold; a ``MALLOC_MMAP_THRESHOLD_`` set by the user, or a C library other than glibc, is left alone.
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    try:
        threshold = int(os.environ.get("DCA_MALLOC_MMAP_THRESHOLD", MMAP_THRESHOLD))
    except ValueError:
        raise ConfigError("DCA_MALLOC_MMAP_THRESHOLD must be a number of bytes (0: glibc's own threshold)") from None
    if threshold <= 0:
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return None
    return threshold if mallopt(_M_MMAP_THRESHOLD, threshold) == 1 else None


def native_bf16(device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX tiles (oneDNN then runs bf16 matmuls faster than fp32; elsewhere bf16 is emulated and slower)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so probe for them
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def drop_gguf_quantizer(model) -> None:
    """Make a model transformers loaded from a GGUF a plain one, in place.

    transformers dequantizes a GGUF's tensors on load but keeps its ``gguf`` quantizer on the model, and
    ``save_pretrained`` then refuses the model ("quantized with gguf and is not serializable"). The weights
    are ordinary full-precision tensors, so dropping the quantizer (transformers' own
    ``HfQuantizer.remove_quantization_config``) loses nothing. A model without it is left as it is.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is not None and str(getattr(method, "value", method)) == "gguf":
        quantizer.remove_quantization_config(model)


def restore_pre_tokenizer(tokenizer, pre: str | None) -> None:
    """Give a fast tokenizer transformers read from a GGUF the pre-tokenizer llama.cpp applies for ``pre``, where
    transformers' GGUF reader leaves it out, so that training and inference split text alike.

    ``smollm`` (SmolLM/SmolLM2: each digit on its own, then GPT-2's split) is read back as GPT-2's split alone: the
    two differ on spaces before a digit ("and  2" is "and", "  ", "2" for llama.cpp and SmolLM2's own
    tokenizer.json, "and", " ", " 2" without the digit step). Other names are left as they are.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if pre != "smollm" or backend is None:
        return
    from tokenizers import pre_tokenizers

    if json.loads(backend.to_str()).get("pre_tokenizer", {}).get("type") == "ByteLevel":
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def gguf_as_hf_dir(path: Path) -> Path:
    """An HF model directory holding the GGUF ``path``'s model, dequantized to float16, and its tokenizer (with
    the GGUF's tokenizer values transformers drops, in :data:`dca.quant.source.GGUF_TOKENIZER_FILE`).

    bitsandbytes quantizes to 4-bit NF4 while it loads an HF directory, and cannot start from a GGUF, so
    ``--qlora`` on a GGUF base goes through this directory. It is written once, atomically, under
    ``$DCA_HOME/hf-from-gguf/``, keyed by the GGUF's :func:`~dca.distill.stamps.fingerprint` (path and content
    hash; path, size and modification time above its hashing limit), and reused. float16
    holds an F16 GGUF's weights exactly and a quantized GGUF's dequantized ones to within float16 rounding,
    far below the NF4 quantization's own error.

    Raises:
        ModelError: transformers cannot load the GGUF (unknown architecture, corrupt file).
    """
    import hashlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..paths import atomic_path, dca_home

    key = hashlib.sha256(json.dumps(fingerprint(path), sort_keys=True).encode()).hexdigest()[:16]
    final = dca_home() / "hf-from-gguf" / f"{path.stem}-{key}"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("writing %s as an HF model directory in %s (once)", path, final)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float16)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for unloadable checkpoints
        raise ModelError(f"-m/--model {path}: transformers could not load it ({type(e).__name__}: {e})") from e
    drop_gguf_quantizer(model)
    from ..quant.source import GGUF_TOKENIZER_FILE, gguf_tokenizer_metadata

    restore_pre_tokenizer(tokenizer, gguf_tokenizer_metadata(path).get("tokenizer.ggml.pre"))
    with atomic_path(final) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        # what transformers drops from the GGUF's tokenizer (pre-tokenizer name, SentencePiece scores and types), so
        # that an export from this directory writes the GGUF's tokenizer back
        (tmp / GGUF_TOKENIZER_FILE).write_text(json.dumps(gguf_tokenizer_metadata(path)), encoding="utf-8")
    return final


def load_model(cfg: TrainConfig, device, bf16: bool):
    """``(model, tokenizer, base path, kind)``: the base model in training precision on ``device``.

    A GGUF base is loaded dequantized (a plain model, see :func:`drop_gguf_quantizer`); under ``--qlora`` it
    goes through :func:`gguf_as_hf_dir` first. The base path is the GGUF's in either case.

    Raises:
        ModelError: transformers cannot load the model or its tokenizer.
        ConfigError: the tokenizer is not a fast one (offsets are needed for the loss mask).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, kind = resolve_base(cfg.model)
    src, extra = (str(path.parent), {"gguf_file": path.name}) if kind == "gguf" else (str(path), {})
    dtype = torch.bfloat16 if bf16 and cfg.method == "lora" else torch.float32  # full FT: fp32 master weights
    if cfg.qlora:
        from transformers import BitsAndBytesConfig

        if kind == "gguf":
            src, extra = str(gguf_as_hf_dir(path)), {}
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16)
        extra["device_map"] = {"": device.index or 0}
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **{k: v for k, v in extra.items() if k == "gguf_file"})
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **extra)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for unloadable checkpoints
        raise ModelError(f"-m/--model {path}: transformers could not load it ({type(e).__name__}: {e})") from e
    if kind == "gguf" and not cfg.qlora:
        drop_gguf_quantizer(model)  # else save_pretrained refuses the fully fine-tuned model
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"-m/--model {path}: its tokenizer is not a fast (Rust) tokenizer; the loss mask needs "
                          "token offsets")
    if cfg.chat_template is not None:
        from ..llm.templates import resolve_template

        tokenizer.chat_template = resolve_template(cfg.chat_template, None).template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not cfg.qlora:
        model.to(device)
    model.config.use_cache = False
    return model, tokenizer, path, kind


def _selective_contexts(hidden_size: int, keep_attention: bool = True):
    """``context_fn`` of ``torch.utils.checkpoint.checkpoint`` for ``checkpoint_policy="selective"``: selective
    activation recomputation (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
    Models"), through PyTorch's ``create_selective_checkpoint_contexts``.

    Kept: the outputs of fused attention (unless ``keep_attention`` is False: attention dropout draws random numbers
    that the recomputation must draw again) and of the linear layers' matrix products (``mm``, ``addmm``) no wider
    than ``hidden_size`` (the q, k, v, o and down projections, a LoRA adapter's rank-r products). Recomputed in the
    backward pass: the wide MLP projections (gate and up, 2.7x the hidden size in SmolLM2: 59% of the products'
    output bytes, half their FLOPs), batched products (``bmm``: eager attention's scores, which its softmax path
    then changes in place), and the element-wise work (norms, activation functions, casts). Measured against
    recomputing everything (benchmarks/README.md, "Training memory").
    """
    import torch
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    aten = torch.ops.aten
    products = {aten.mm.default, aten.addmm.default}
    attention = {getattr(aten, n).default for n in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
        if keep_attention and hasattr(aten, n)}

    def policy(ctx, op, *args, **kwargs):
        if op in products:  # mm(a, b), addmm(bias, a, b): the output is as wide as b
            keep = args[-1].shape[-1] <= hidden_size
        else:
            keep = op in attention
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def checkpoint_policy(cfg: TrainConfig, bf16: bool) -> str:
    """The checkpointing policy a run uses: ``cfg.checkpoint_policy``, with ``auto`` resolved: ``selective``, except
    for LoRA trained in 32-bit (or fp16 QLoRA: not bf16), whose kept products (twice the bytes of bf16's) took the
    bundled model's step past 3 GB (3.05-3.13 GB; benchmarks/README.md, "Training memory"): ``full`` there."""
    if cfg.checkpoint_policy != "auto":
        return cfg.checkpoint_policy
    return "full" if cfg.method == "lora" and not bf16 else "selective"


def _adapt(model, cfg: TrainConfig, bf16: bool = False):
    """Attach the LoRA adapter (or unfreeze everything for full fine-tuning)."""
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        if cfg.qlora:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ConfigError(f"--target-modules {','.join(cfg.target_modules)}: {e}") from e
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if checkpoint_policy(cfg, bf16) == "selective":
            config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            hidden = getattr(config, "hidden_size", None)
            if hidden is None:
                log.warning("the model's config names no hidden_size: recomputing everything "
                            "(--checkpoint-policy full)")
            else:
                dropout = float(getattr(config, "attention_dropout", 0.0) or 0.0)
                kwargs["context_fn"] = functools.partial(_selective_contexts, int(hidden),
                                                         keep_attention=dropout == 0)
        # transformers >= 5.2 names it activation checkpointing (the old name warns of its removal in v6)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    return model


def train(cfg: TrainConfig, *, progress: ProgressFn | None = None,
          cancel: Callable[[], bool] | None = None) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` and write the run directory ``cfg.out_dir``.

    A run directory holding this run (same settings, data and base) is continued from its last checkpoint;
    one that finished is reported without training again.

    Args:
        cfg: the settings.
        progress: called with a :class:`~dca.progress.Progress` (job ``train``, unit ``steps``) before the first
            step and after each step (see :func:`dca.distill.loop.run_loop` for its metrics).
        cancel: polled after each step; when it returns True a checkpoint is written and :class:`Cancelled`
            is raised.

    Returns:
        The run's figures; the adapter (LoRA) or model (full) is in ``result.output``.

    Raises:
        ConfigError: a setting is out of range, the run directory holds another run or foreign files
            (without ``force``), ``--qlora`` without CUDA, or a checkpoint that does not fit.
        MissingDependencyError: torch, transformers or peft (``dca[distill]``), or bitsandbytes
            (``dca[qlora]``) is missing.
        LoaderError: a data file is unreadable or holds no example.
        ModelError: the base model cannot be loaded.
        Cancelled: ``cancel`` returned True (the run continues when the same command is run again).
    """
    t_wall = time.perf_counter()
    path, kind = resolve_base(cfg.model)
    fps = {"data": [fingerprint(p) for p in cfg.data], "eval_data": [fingerprint(p) for p in cfg.eval_data],
           "model": fingerprint(path)}
    if cfg.chat_template is not None:
        fps["chat_template"] = fingerprint(cfg.chat_template) if isinstance(cfg.chat_template, Path) \
            else cfg.chat_template
    from .parallel import setup

    dp = setup()  # several processes under accelerate launch: rank 0 checks (and clears) the directory for all
    state, checkpoint = dp.decide(lambda: _prepare_run_dir(cfg, fps), _collective_device(dp))
    if state == "complete":
        return _completed(cfg, t_wall)
    _import_stack()
    import torch

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    if dp.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dp.local_rank)
    if cfg.qlora:
        _check_qlora(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: no CUDA device is visible; use --device cpu")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and native_bf16(device))
    emit = emitter(progress)
    bound_heap_growth()
    emit(Progress("train", phase="loading the model"))
    model, tokenizer, base_path, kind = load_model(cfg, device, bf16)
    emit(Progress("train", phase="preparing the data"))
    bad: list[BadLine] = []
    examples = load_examples(cfg.data, bad, system=cfg.system_prompt)
    if cfg.eval_data:
        train_ex, held = examples, load_examples(cfg.eval_data, bad, system=cfg.system_prompt)
    else:
        train_ex, held = split_examples(examples, cfg.eval_fraction, cfg.seed)
    stats = DataStats(bad=bad)
    train_rows, eval_rows = prepare(tokenizer, train_ex, held, seq_len=cfg.seq_len, packing=cfg.packing, stats=stats)
    torch.manual_seed(cfg.seed)  # the adapter's initialisation
    if device.type == "cuda":
        torch.cuda.manual_seed_all(cfg.seed)
    model = _adapt(model, cfg, bf16)
    return run_loop(cfg, model, tokenizer, base={"path": str(base_path), "kind": kind}, inputs=fps, stats=stats,
                    train_rows=train_rows,
                    eval_rows=eval_rows, checkpoint=checkpoint, device=device, bf16=bf16, progress=progress,
                    cancel=cancel, t_wall=t_wall, dp=dp)


def _collective_device(dp):
    """The CUDA device of this process when its process group is NCCL's (which needs one), else None."""
    if dp.world == 1:
        return None
    import torch
    import torch.distributed as dist

    return torch.device("cuda", dp.local_rank) if dist.get_backend() == "nccl" else None


def _completed(cfg: TrainConfig, t_wall: float) -> TrainResult:
    m = rundir.read_manifest(cfg.out_dir) or {}
    last = m.get("last", {})
    return TrainResult(run_dir=cfg.out_dir, output=cfg.out_dir / m.get("output", rundir.ADAPTER),
                       steps=m.get("step", 0), total_steps=m.get("total_steps", 0), already_complete=True,
                       first_loss=last.get("first_loss"), loss=last.get("loss"), eval_loss=last.get("eval_loss"),
                       tokens_seen=m.get("tokens_seen", 0), tokens_per_s=last.get("tokens_per_s"),
                       train_seconds=m.get("train_seconds", 0.0), wall_s=time.perf_counter() - t_wall,
                       trainable_params=m.get("params", {}).get("trainable", 0),
                       total_params=m.get("params", {}).get("total", 0), stats=m.get("stats", {}))

