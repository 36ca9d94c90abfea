"""The training loop of ``dca distill train`` and the :class:`TrainConfig` it reads: batches, loss, optimizer
steps, evaluation, checkpoints, metrics.

:func:`dca.distill.train.train` prepares the model and data and calls :func:`run_loop`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import Cancelled, ConfigError
from ..progress import Progress, ProgressFn, emitter
from . import rundir
from .data import IGNORE, DataStats, Row
from .traces import BadLine

log = logging.getLogger(__name__)

METHODS = ("lora", "full")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
CHECKPOINT_POLICIES = ("auto", "full", "selective")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
# Settings a continued run may change: they do not change the weights. resume/force are actions, not settings.
_FREE = {"resume", "force", "log_every", "save_every", "keep_checkpoints", "eval_every", "checkpoint_policy"}
_FLAGS = {"data": "DATA", "out_dir": "-o/--out-dir", "model": "-m/--model", "qlora": "--qlora",
          "packing": "--packing/--no-packing",
          "gradient_checkpointing": "--gradient-checkpointing/--no-gradient-checkpointing"}


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
            alpha / r) and dropout probability (``--lora-r``, ``--lora-alpha``, ``--lora-dropout``). Dropout is 0
            by default (Unsloth's default): a dropout on each adapted projection's input keeps one more copy of that
            input per projection for the backward pass, for regularisation that short SFT runs rarely need.
        target_modules: names of the linear layers to adapt (``--target-modules``, comma-separated), or
            ``["all-linear"]`` (peft's every linear layer but the LM head).
        seq_len: tokens per row; longer examples are cut to it (``--seq-len``).
        packing: pack several examples into each row (``--packing/--no-packing``); without it one example a row.
        batch_size: rows per micro-batch (``--batch-size``).
        grad_accum: micro-batches per optimizer step (``--grad-accum``). A step trains on ``batch_size x
            grad_accum`` rows (4 by default) with its loss normalised by the step's labeled tokens, so only memory
            and speed depend on how they are split; one row a micro-batch keeps the activations small.
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
        chat_template: ``gemma``, ``chatml`` (:data:`dca.llm.templates.NAMED_TEMPLATES`) or a Jinja chat template
            file, for tokenizers without one (a base model) or to replace it (``--chat-template``); it is saved
            with the adapter's tokenizer, so ``dca quant export`` writes it into the student's GGUF.
        precision: ``auto`` (bf16 where the hardware computes in it natively: a CUDA GPU that has it, or a CPU
            with AVX512-BF16 or AMX; else fp32), ``fp32`` or ``bf16`` (``--precision``). On a 2-core AMD EPYC
            with AVX512-BF16, bf16 trained SmolLM2-135M's LoRA at 210 tokens/s against 120 in fp32.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (``--device``).
        gradient_checkpointing: recompute each decoder layer's activations in the backward pass instead of keeping
            them (``--gradient-checkpointing/--no-gradient-checkpointing``; on by default). With the defaults'
            micro-batch of one row it bounds a LoRA step of the bundled model to under 3 GB at about the
            throughput of four-row micro-batches without it (benchmarks/README.md, "Training memory").
        checkpoint_policy: what the recomputation keeps (``--checkpoint-policy``): ``full`` keeps each layer's
            input only and recomputes the rest; ``selective`` also keeps the outputs of attention and of the matrix
            products no wider than the hidden size, and recomputes the wide MLP projections and the element-wise
            work: selective activation recomputation (Korthikanti et al. 2022, "Reducing Activation Recomputation
            in Large Transformer Models"; :func:`dca.distill.train._selective_contexts`); ``auto`` (default) is
            ``selective`` except for LoRA in fp32 (:func:`dca.distill.train.checkpoint_policy`). On the bundled
            model ``selective`` trained at 1.0-1.2x the tokens/s of ``full`` for 0.2-0.7 GB more
            (benchmarks/README.md, "Training memory").
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
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    seq_len: int = 1024
    packing: bool = True
    batch_size: int = 1
    grad_accum: int = 4
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
    chat_template: Path | str | None = None
    precision: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = True
    checkpoint_policy: str = "auto"
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
        from ..llm.templates import NAMED_TEMPLATES

        if self.chat_template is not None and str(self.chat_template) not in NAMED_TEMPLATES:
            self.chat_template = files(self.chat_template, "chat_template")[0]
        self.model = str(self.model)
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        self.target_modules = list(self.target_modules)
        choices = {"method": METHODS, "schedule": SCHEDULES, "precision": PRECISIONS,
                   "checkpoint_policy": CHECKPOINT_POLICIES}
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




@dataclass
class TrainResult:
    """What :func:`dca.distill.train.train` did.

    Attributes:
        run_dir: the run directory; output: its ``adapter/`` or ``model/``.
        steps, total_steps: steps done (all invocations together) and planned.
        resumed_from: the checkpoint step this invocation started from; None for a fresh start.
        already_complete: the run had finished before; nothing was trained.
        first_loss, loss, eval_loss: first and last logged training loss, last eval loss (nats; None if none).
        tokens_seen: real tokens trained on; tokens_per_s: their rate in this invocation (in the first one for
            an already complete run).
        train_seconds: training time, all invocations; wall_s: this invocation's wall time.
        trainable_params, total_params: parameter counts (LoRA: adapter weights only are trainable).
        stats: the data preparation's counts (:meth:`DataStats.to_dict`); bad: skipped input lines.
    """

    run_dir: Path
    output: Path
    steps: int
    total_steps: int
    resumed_from: int | None = None
    already_complete: bool = False
    first_loss: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_seen: int = 0
    tokens_per_s: float | None = None
    train_seconds: float = 0.0
    wall_s: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    stats: dict = field(default_factory=dict)
    bad: list[BadLine] = field(default_factory=list)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based): linear warmup over ``warmup`` steps
    (``(step + 1) / warmup``, so the first step does not run at 0), then ``schedule`` (cosine, linear or
    constant) from 1 down to ``min_ratio`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def collate(rows: list[Row], pad_id: int, device):
    """Tensors of a micro-batch, cut to its longest real content.

    Returns:
        ``(input_ids, position_ids, targets)``, int64 tensors of shape (B, T): ``targets[:, t]`` is the label of
        token ``t + 1`` (IGNORE past the end), so the logits at ``t`` are scored against it.
    """
    import torch

    width = max(r.tokens for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        n = min(width, len(r.input_ids))
        ids[i, :n] = torch.tensor(r.input_ids[:n])
        pos[i, :n] = torch.tensor(r.position_ids[:n])
        labels[i, :n] = torch.tensor(r.labels[:n])
        if n < width:  # an unpacked row: its padding is a sequence of its own (positions restart at 0)
            pos[i, n:] = torch.arange(width - n)
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]
    return ids.to(device), pos.to(device), targets.to(device)


def _split_head(model):
    """(decoder, LM head) when the logits are ``head(decoder(x))`` with nothing in between, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    c = base.config
    if any(getattr(c, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return (decoder, head) if decoder is not None and head is not None else None


LOSS_CHUNK = 1024  # labeled positions whose logits exist at once (a (1024, vocab) float32 block: 200 MB for 49k)


def _head_loss(head, hidden, labels):
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), labels, reduction="sum")


def loss_sum(model, ids, pos, targets, split=None, chunk: int = LOSS_CHUNK):
    """Sum over labeled positions of the token cross-entropy (nats), a 0-d float32 tensor.

    With ``split`` (from :func:`_split_head`) the LM head runs only on labeled positions, ``chunk`` of them at a
    time: (N, H) -> (chunk, V) blocks instead of (B, T, V). While training with more than one block, each is
    checkpointed (its logits are recomputed in the backward pass rather than kept), so the head's memory is one block
    whatever the batch, as in the chunked fused linear cross-entropy of Liger-Kernel (Hsu et al. 2024). No
    attention mask is passed: restarting ``position_ids`` give the block-diagonal causal mask of packed rows
    (:mod:`dca.distill.data`).
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    mask = targets != IGNORE
    if split is None:
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[mask]
        return F.cross_entropy(logits.float(), targets[mask], reduction="sum")
    decoder, head = split
    hidden = decoder(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state[mask]  # (N, H)
    labels = targets[mask]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    blocks = range(0, len(labels), chunk)
    for i in blocks:
        h, y = hidden[i:i + chunk], labels[i:i + chunk]
        if len(blocks) > 1 and torch.is_grad_enabled() and h.requires_grad:  # one block: nothing to gain
            total = total + checkpoint(_head_loss, head, h, y, use_reentrant=False)
        else:
            total = total + _head_loss(head, h, y)
    return total


def evaluate(model, rows: list[Row], *, batch_size: int, pad_id: int, device, autocast, split) -> float | None:
    """Mean token cross-entropy (nats) over the labeled tokens of ``rows``; None without rows."""
    import torch

    if not rows:
        return None
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids, pos, targets = collate(rows[i:i + batch_size], pad_id, device)
            with autocast():
                total += loss_sum(model, ids, pos, targets, split).item()
            n += int((targets != IGNORE).sum())
    model.train()
    return total / n if n else None


def _rng_state(device) -> dict:
    import torch

    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}


class _NoMetrics:
    """``metrics.jsonl`` of a process that is not the main one: nothing is written."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _set_rng(rng: dict) -> None:
    import torch

    torch.set_rng_state(rng["torch"])
    if rng.get("cuda"):
        torch.cuda.set_rng_state_all(rng["cuda"])


def run_loop(cfg: TrainConfig, model, tokenizer, *, base: dict, inputs: dict, stats: DataStats,
             train_rows: list[Row], eval_rows: list[Row], checkpoint: Path | None, device, bf16: bool,
             progress: ProgressFn | None, cancel: Callable[[], bool] | None,
             t_wall: float, dp=None) -> TrainResult:
    """Train ``model`` on ``train_rows`` as ``cfg`` says, writing ``cfg.out_dir`` (see :mod:`dca.distill.rundir`).

    ``progress`` gets a :class:`~dca.progress.Progress` (job ``train``, unit ``steps``) before the first step and
    after each: metrics ``epoch`` (passes over the training rows), ``lr``, ``elapsed_s`` (training seconds, earlier
    invocations included), ``tokens_seen``, and once known ``loss`` (this step's mean token cross-entropy, nats),
    ``eval_loss`` (the latest held-out loss), ``tokens_per_s`` (this invocation) and ``eta_s``.

    With ``dp`` (:class:`~dca.distill.parallel.DataParallel`) of several processes, each trains on its share of a
    step's rows and the gradients are summed across them (:mod:`dca.distill.parallel`); only the main process
    writes the run directory and reports progress.

    Raises:
        Cancelled: ``cancel`` returned True (after writing a checkpoint).
        KeyboardInterrupt: re-raised after writing a checkpoint of the last finished step.
        ConfigError: ``checkpoint`` does not fit the model.
    """
    import torch

    from .. import __version__
    from .parallel import DataParallel

    dp = dp or DataParallel()

    run_dir = cfg.out_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel updates each parameter in one pass: on this 2-core CPU a step of all 135M parameters of
    # SmolLM2 took 0.14 s against 0.77 s for the default multi-tensor one, without its full-size temporaries
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    rows_per_step = cfg.batch_size * cfg.grad_accum
    n_rows = len(train_rows)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * n_rows / rows_per_step))
    warmup = round(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule, cfg.min_lr_ratio))
    split = _split_head(model)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    every_eval = cfg.eval_every or cfg.save_every

    step, tokens_seen, train_s, resumed_from = 0, 0, 0.0, None
    if checkpoint is not None:
        state, rng = rundir.load_checkpoint(checkpoint, model, optimizer, scheduler, device)
        step, tokens_seen, train_s = state["step"], state["tokens_seen"], state["train_seconds"]
        _set_rng(rng)
        resumed_from = step
        log.info("resuming %s from step %d", run_dir, step)
    old = rundir.read_manifest(run_dir) or {}
    n_trainable = sum(p.numel() for p in params)
    manifest = {
        "format": rundir.TRAIN_FORMAT, "version": rundir.TRAIN_VERSION, "status": "running", "step": step,
        "total_steps": total, "inputs": inputs, "base": base, "stats": stats.to_dict(),
        "method": "qlora" if cfg.qlora else cfg.method,
        "params": {"trainable": n_trainable, "total": sum(p.numel() for p in model.parameters())},
        "device": str(device), "precision": "bf16" if bf16 else "fp32", "last": old.get("last", {}),
        "tokens_seen": tokens_seen, "train_seconds": train_s,
        "output": rundir.ADAPTER if cfg.method == "lora" else rundir.MODEL,
        "dca_version": __version__, "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
    }
    if dp.main:
        rundir.write_config(run_dir, cfg.settings())
        rundir.write_manifest(run_dir, manifest)
    metrics = rundir.MetricsLog(run_dir, step) if dp.main else _NoMetrics()
    past = [r for r in rundir.read_metrics(run_dir) if r.get("loss") is not None]
    first_loss = past[0]["loss"] if past else None
    eval_loss = next((r["eval_loss"] for r in reversed(rundir.read_metrics(run_dir)) if r.get("eval_loss") is not None),
                     None)

    perms: dict[int, list[int]] = {}

    def rows_of(s: int) -> list[Row]:
        out = []
        for p in range(s * rows_per_step, (s + 1) * rows_per_step):
            epoch, i = divmod(p, n_rows)
            if epoch not in perms:
                g = torch.Generator().manual_seed(cfg.seed + epoch)
                perms[epoch] = torch.randperm(n_rows, generator=g).tolist()
            out.append(train_rows[perms[epoch][i]])
        return out

    rng_after = _rng_state(device)  # the RNG state at the end of the last finished step
    saved_step, updating = step, False
    this_tokens, this_s, this_steps = 0, 0.0, 0
    window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
    last_loss, lr = (past[-1]["loss"] if past else None), scheduler.get_last_lr()[0]

    emit = emitter(progress if dp.main else None)

    def report(loss):
        metrics = {"epoch": step * rows_per_step / n_rows, "lr": lr, "elapsed_s": train_s, "tokens_seen": tokens_seen}
        for name, value in (("loss", loss), ("eval_loss", eval_loss),
                            ("tokens_per_s", this_tokens / this_s if this_s else None),
                            ("eta_s", (total - step) * this_s / this_steps if this_steps else None)):
            if value is not None:
                metrics[name] = value
        emit(Progress("train", done=step, total=total, unit="steps", metrics=metrics))

    def save():
        nonlocal saved_step
        if not dp.main:
            saved_step = step
            return
        rundir.save_checkpoint(run_dir, step, model, optimizer, scheduler, rng_after,
                               {"tokens_seen": tokens_seen, "train_seconds": train_s}, cfg.keep_checkpoints)
        saved_step = step
        manifest.update(step=step, tokens_seen=tokens_seen, train_seconds=round(train_s, 3),
                        last={"first_loss": first_loss, "loss": last_loss, "eval_loss": eval_loss,
                              "tokens_per_s": round(this_tokens / this_s, 2) if this_s else None})
        rundir.write_manifest(run_dir, manifest)

    def stop(status: str):
        if not updating and step > saved_step:
            save()
        manifest["status"] = status
        metrics.close()
        if dp.main:
            rundir.write_manifest(run_dir, manifest)
            rundir.plot_loss(run_dir)

    if step == 0 and eval_rows:  # the untrained model's held-out loss: where the curve starts
        eval_loss = evaluate(model, eval_rows, batch_size=cfg.batch_size, pad_id=pad_id, device=device,
                             autocast=autocast, split=split)
        metrics.write({"step": 0, "epoch": 0.0, "eval_loss": eval_loss})
    report(None)
    try:
        while step < total:
            rows = rows_of(step)
            n_labels = sum(1 for r in rows for x in r.labels if x != IGNORE)  # of the whole step, every process's
            n_tokens = sum(r.tokens for r in rows)
            t0 = time.perf_counter()
            loss_value = 0.0
            mine = rows[dp.rank::dp.world]
            for i in range(0, len(mine), cfg.batch_size):
                ids, pos, targets = collate(mine[i:i + cfg.batch_size], pad_id, device)
                with autocast():
                    loss = loss_sum(model, ids, pos, targets, split) / n_labels
                loss.backward()
                loss_value += loss.item()
            if dp.world > 1:
                dp.sum_gradients(params)
                loss_value = dp.sum(loss_value, device if device.type == "cuda" else None)
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).item() if cfg.max_grad_norm > 0
                         else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params
                                                                    if p.grad is not None])).item())
            lr = scheduler.get_last_lr()[0]
            updating = True  # between here and the step count, weights and step disagree: no checkpoint
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            updating = False
            rng_after = _rng_state(device)
            dt = time.perf_counter() - t0
            train_s += dt
            this_s, this_tokens, this_steps = this_s + dt, this_tokens + n_tokens, this_steps + 1
            tokens_seen += n_tokens
            last_loss = loss_value
            first_loss = loss_value if first_loss is None else first_loss
            for k, v in (("loss", loss_value), ("steps", 1), ("tokens", n_tokens), ("seconds", dt)):
                window[k] += v
            evaluated = step % every_eval == 0 or step == total
            if evaluated and eval_rows:
                eval_loss = evaluate(model, eval_rows, batch_size=cfg.batch_size, pad_id=pad_id, device=device,
                                     autocast=autocast, split=split)
            if step % cfg.log_every == 0 or evaluated:
                record = {"step": step, "epoch": round(step * rows_per_step / n_rows, 4),
                          "loss": window["loss"] / window["steps"], "lr": lr, "grad_norm": grad_norm,
                          "tokens": tokens_seen, "tokens_per_s": round(window["tokens"] / window["seconds"], 2),
                          "elapsed_s": round(train_s, 3)}
                if evaluated and eval_rows:
                    record["eval_loss"] = eval_loss
                metrics.write(record)
                window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
            if step % cfg.save_every == 0 or step == total:
                save()
            report(loss_value)
            if cancel is not None and cancel():
                stop("interrupted")
                raise Cancelled(f"training cancelled at step {step} of {total}; run the same command to continue")
    except KeyboardInterrupt:
        stop("interrupted")
        raise
    output = run_dir / (rundir.ADAPTER if cfg.method == "lora" else rundir.MODEL)
    metrics.close()
    if dp.main:
        output = rundir.save_final(run_dir, model, tokenizer, method=cfg.method, base_path=Path(base["path"]))
        manifest["status"] = "complete"
        rundir.write_manifest(run_dir, manifest)
        rundir.plot_loss(run_dir)
    dp.barrier()  # the other processes return once the model is written
    return TrainResult(run_dir=run_dir, output=output, steps=step, total_steps=total, resumed_from=resumed_from,
                       first_loss=first_loss, loss=last_loss, eval_loss=eval_loss, tokens_seen=tokens_seen,
                       tokens_per_s=this_tokens / this_s if this_s else None, train_seconds=train_s,
                       wall_s=time.perf_counter() - t_wall, trainable_params=n_trainable,
                       total_params=manifest["params"]["total"], stats=stats.to_dict(), bad=list(stats.bad))
