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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError, ModelError, missing
from . import rundir
from .data import DataStats, load_examples, prepare, split_examples
from .loop import TrainProgress, TrainResult, lr_factor, run_loop
from .stamps import fingerprint
from .traces import BadLine

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TARGETS", "METHODS", "TrainConfig", "TrainProgress", "TrainResult", "flag", "load_model", "lr_factor",
           "resolve_base", "train"]

METHODS = ("lora", "full")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
# Settings a continued run may change: they do not change the weights. resume/force are actions, not settings.
_FREE = {"resume", "force", "log_every", "save_every", "keep_checkpoints", "eval_every"}
_FLAGS = {"data": "DATA", "out_dir": "-o/--out-dir", "model": "-m/--model", "qlora": "--qlora",
          "packing": "--packing/--no-packing", "gradient_checkpointing": "--gradient-checkpointing"}


def flag(name: str) -> str:
    """The command-line flag of a :class:`TrainConfig` field."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass
class TrainConfig:
    """Settings of :func:`train`; ``dca distill train``'s arguments, flags and ``-c`` file resolve into this.

    Args:
        data: JSONL files of examples (DATA...): dca traces, ``messages``, ``conversations``,
            ``prompt``/``completion`` or ``text`` lines (:mod:`dca.distill.data`).
        out_dir: the run directory (``-o/--out-dir``; contract in :mod:`dca.distill.rundir`).
        model: the base (``-m/--model``): an HF model directory, a GGUF file (dequantized to full precision by
            transformers) or a name from ``dca models``; default the bundled SmolLM2-135M-Instruct.
        method: ``lora`` or ``full`` fine-tuning (``--method``).
        qlora: LoRA on a 4-bit NF4 base (``--qlora``); needs CUDA and bitsandbytes. A GGUF base is first written
            out as an HF model directory (:func:`gguf_as_hf_dir`, cached), which bitsandbytes then quantizes.
        lora_r, lora_alpha, lora_dropout: the adapter's rank, scale numerator (the update is scaled by
            alpha / r) and dropout probability (``--lora-r``, ``--lora-alpha``, ``--lora-dropout``).
        target_modules: names of the linear layers to adapt (``--target-modules``, comma-separated), or
            ``["all-linear"]`` (peft's every linear layer but the LM head).
        seq_len: tokens per row; longer examples are cut to it (``--seq-len``).
        packing: pack several examples into each row (``--packing/--no-packing``); without it one example a row.
        batch_size: rows per micro-batch (``--batch-size``).
        grad_accum: micro-batches per optimizer step (``--grad-accum``).
        epochs: passes over the training rows, rounded up to whole steps (``--epochs``).
        max_steps: optimizer steps; overrides ``epochs`` (``--max-steps``).
        lr: peak learning rate (``--lr``); None gives 2e-4 for LoRA, 2e-5 for full fine-tuning.
        schedule: ``cosine``, ``linear`` or ``constant`` after warmup (``--schedule``).
        warmup_ratio: fraction of the steps of linear warmup, in [0, 1) (``--warmup-ratio``).
        min_lr_ratio: the final learning rate as a fraction of ``lr`` (``--min-lr-ratio``).
        weight_decay: AdamW's decoupled weight decay (``--weight-decay``).
        max_grad_norm: clip the global gradient norm to this; 0 disables clipping (``--max-grad-norm``).
        eval_fraction: fraction of the question ids held out for the eval loss, in [0, 0.5]; 0 for none
            (``--eval-fraction``). Ignored when ``eval_data`` is given.
        eval_data: JSONL files for the eval loss instead of a held-out split (``--eval-data``).
        eval_every: evaluate every N steps (``--eval-every``); None: at every checkpoint and at the end.
        log_every: write a ``metrics.jsonl`` line every N steps (``--log-every``).
        save_every: write a checkpoint every N steps (``--save-every``); one is also written at the end.
        keep_checkpoints: newest checkpoints kept (``--keep-checkpoints``).
        system_prompt: system turn added to chat examples that have none (``--system-prompt``).
        chat_template: a Jinja chat template file, for tokenizers without one or to replace it
            (``--chat-template``); it is saved with the adapter's tokenizer.
        precision: ``auto`` (bf16 where the hardware computes in it natively: a CUDA GPU that has it, or a CPU
            with AVX512-BF16 or AMX; else fp32), ``fp32`` or ``bf16`` (``--precision``). On a 2-core AMD EPYC
            with AVX512-BF16, bf16 trained SmolLM2-135M's LoRA at 210 tokens/s against 120 in fp32.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (``--device``).
        gradient_checkpointing: recompute activations in the backward pass to save memory
            (``--gradient-checkpointing``).
        seed: seeds the adapter's initialisation, the split, the data order and dropout (``--seed``).
        resume: continue the run in ``out_dir`` (``--resume``); running the same command again does too.
        force: delete the run files in ``out_dir`` and start over (``--force``).

    Raises:
        ConfigError: a value is out of range or a file is missing; the message names the flag.
    """

    data: list[Path] = field(default_factory=list)
    out_dir: Path | None = None
    model: str = "smollm2-135m-instruct"
    method: str = "lora"
    qlora: bool = False
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    seq_len: int = 1024
    packing: bool = True
    batch_size: int = 4
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float | None = None
    schedule: str = "cosine"
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_fraction: float = 0.05
    eval_data: list[Path] = field(default_factory=list)
    eval_every: int | None = None
    log_every: int = 1
    save_every: int = 50
    keep_checkpoints: int = 2
    system_prompt: str | None = None
    chat_template: Path | None = None
    precision: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    resume: bool = False
    force: bool = False

    def __post_init__(self):
        def files(value, name):
            value = [value] if isinstance(value, (str, Path)) else list(value or [])
            paths = [Path(p).expanduser().resolve() for p in value]
            for p in paths:
                if not p.is_file():
                    raise ConfigError(f"{flag(name)} {p}: no such file")
            return paths

        self.data = files(self.data, "data")
        if not self.data:
            raise ConfigError("give at least one data file (DATA...)")
        self.eval_data = files(self.eval_data, "eval_data")
        if self.out_dir is None:
            raise ConfigError("-o/--out-dir is missing: name the run directory")
        self.out_dir = Path(self.out_dir).expanduser().resolve()
        if self.chat_template is not None:
            self.chat_template = files(self.chat_template, "chat_template")[0]
        self.model = str(self.model)
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        self.target_modules = list(self.target_modules)
        choices = {"method": METHODS, "schedule": SCHEDULES, "precision": PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.qlora and self.method != "lora":
            raise ConfigError("--qlora trains a LoRA adapter on a 4-bit base; it does not go with --method full")
        if self.method == "lora" and not self.target_modules:
            raise ConfigError("--target-modules is empty; name the linear layers to adapt, or all-linear")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        positive = ("lora_r", "seq_len", "batch_size", "grad_accum", "log_every", "save_every", "keep_checkpoints")
        for name in positive + ("max_steps", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{flag(name)} must be an integer >= 1, got {value!r}")
        checks = [("lr", self.lr > 0, "> 0"), ("lora_alpha", self.lora_alpha > 0, "> 0"),
                  ("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)"), ("epochs", self.epochs > 0, "> 0"),
                  ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"),
                  ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
                  ("weight_decay", self.weight_decay >= 0, ">= 0"), ("max_grad_norm", self.max_grad_norm >= 0, ">= 0"),
                  ("eval_fraction", 0 <= self.eval_fraction <= 0.5, "in [0, 0.5]")]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{flag(name)} must be {expected}, got {getattr(self, name)!r}")
        if self.seq_len < 16:
            raise ConfigError(f"--seq-len must be >= 16, got {self.seq_len}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.resume and self.force:
            raise ConfigError("--resume continues a run and --force starts it over: give one of them")

    def settings(self) -> dict:
        """The fields that define the run (``config.yaml``): all but ``resume`` and ``force``; paths as strings."""
        out = {}
        for f in fields(self):
            if f.name in ("resume", "force"):
                continue
            v = getattr(self, f.name)
            out[f.name] = [str(p) for p in v] if isinstance(v, list) and f.name != "target_modules" else \
                str(v) if isinstance(v, Path) else v
        return out


def resolve_base(model: str) -> tuple[Path, str]:
    """``(path, kind)`` of ``-m/--model``: kind ``"hf"`` for a directory with ``config.json``, else ``"gguf"``.

    Raises:
        ConfigError: a directory without ``config.json``, or an unknown name or file (the message lists the
            known names).
    """
    p = Path(model).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return p.resolve(), "hf"
        raise ConfigError(f"-m/--model {p} is a directory without config.json; expected an HF model directory, a "
                          "GGUF file or a name from: dca models")
    from ..models import resolve_model

    try:
        return resolve_model(model).resolve(), "gguf"
    except ModelError as e:
        raise ConfigError(f"-m/--model: {e}") from e


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
            if manifest.get("status") == "complete" and any(saved.get(k) != settings[k] for k in ("max_steps", "epochs")):
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


def gguf_as_hf_dir(path: Path) -> Path:
    """An HF model directory holding the GGUF ``path``'s model, dequantized to float16, and its tokenizer.

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
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..home import dca_home

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
    with rundir.atomic_dir(final) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
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
        tokenizer.chat_template = cfg.chat_template.read_text(encoding="utf-8")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not cfg.qlora:
        model.to(device)
    model.config.use_cache = False
    return model, tokenizer, path, kind


def _adapt(model, cfg: TrainConfig):
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
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def train(cfg: TrainConfig, *, progress: Callable[[TrainProgress], None] | None = None,
          cancel: Callable[[], bool] | None = None) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` and write the run directory ``cfg.out_dir``.

    A run directory holding this run (same settings, data and base) is continued from its last checkpoint;
    one that finished is reported without training again.

    Args:
        cfg: the settings.
        progress: called with a :class:`TrainProgress` before the first step and after each step.
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
        fps["chat_template"] = fingerprint(cfg.chat_template)
    state, checkpoint = _prepare_run_dir(cfg, fps)
    if state == "complete":
        return _completed(cfg, t_wall)
    _import_stack()
    import torch

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    if cfg.qlora:
        _check_qlora(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: no CUDA device is visible; use --device cpu")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and native_bf16(device))
    model, tokenizer, base_path, kind = load_model(cfg, device, bf16)
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
    model = _adapt(model, cfg)
    return run_loop(cfg, model, tokenizer, base={"path": str(base_path), "kind": kind}, inputs=fps, stats=stats,
                    train_rows=train_rows,
                    eval_rows=eval_rows, checkpoint=checkpoint, device=device, bf16=bf16, progress=progress,
                    cancel=cancel, t_wall=t_wall)


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

