"""The training loop of ``dca distill train``: batches, loss, optimizer steps, evaluation, checkpoints, metrics.

:func:`dca.distill.train.train` prepares the model and data and calls :func:`run_loop`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Cancelled
from . import rundir
from .data import IGNORE, DataStats, Row
from .traces import BadLine

if TYPE_CHECKING:
    from .train import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainProgress:
    """Reported after each optimizer step (and once before the first, with ``loss`` None).

    Attributes:
        step, total_steps: optimizer steps done and planned.
        epoch: passes over the training rows so far (fractional).
        loss: mean token cross-entropy of this step (nats); lr: the learning rate it used.
        tokens_per_s: real (non-padding) tokens trained on per second in this invocation; None before a step.
        eval_loss: the latest held-out loss, or None.
        elapsed_s: training seconds so far (earlier invocations included); eta_s: estimated seconds left.
        tokens_seen: real tokens trained on so far.
    """

    step: int
    total_steps: int
    epoch: float
    loss: float | None
    lr: float
    tokens_per_s: float | None
    eval_loss: float | None
    elapsed_s: float
    eta_s: float | None
    tokens_seen: int


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


def loss_sum(model, ids, pos, targets, split=None):
    """Sum over labeled positions of the token cross-entropy (nats), a 0-d float32 tensor.

    With ``split`` (from :func:`_split_head`) the LM head runs only on labeled positions: (N, H) -> (N, V)
    instead of (B, T, V). No attention mask is passed: restarting ``position_ids`` give the block-diagonal
    causal mask of packed rows (:mod:`dca.distill.data`).
    """
    import torch.nn.functional as F

    mask = targets != IGNORE
    if split is not None:
        decoder, head = split
        hidden = decoder(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state  # (B, T, H)
        logits = head(hidden[mask])  # (N, V)
    else:
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[mask]
    return F.cross_entropy(logits.float(), targets[mask], reduction="sum")


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


def _set_rng(rng: dict) -> None:
    import torch

    torch.set_rng_state(rng["torch"])
    if rng.get("cuda"):
        torch.cuda.set_rng_state_all(rng["cuda"])


def run_loop(cfg: TrainConfig, model, tokenizer, *, base: dict, inputs: dict, stats: DataStats,
             train_rows: list[Row], eval_rows: list[Row], checkpoint: Path | None, device, bf16: bool,
             progress: Callable[[TrainProgress], None] | None, cancel: Callable[[], bool] | None,
             t_wall: float) -> TrainResult:
    """Train ``model`` on ``train_rows`` as ``cfg`` says, writing ``cfg.out_dir`` (see :mod:`dca.distill.rundir`).

    Raises:
        Cancelled: ``cancel`` returned True (after writing a checkpoint).
        KeyboardInterrupt: re-raised after writing a checkpoint of the last finished step.
        ConfigError: ``checkpoint`` does not fit the model.
    """
    import torch

    from .. import __version__

    run_dir = cfg.out_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
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
    rundir.write_config(run_dir, cfg.settings())
    rundir.write_manifest(run_dir, manifest)
    metrics = rundir.MetricsLog(run_dir, step)
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

    def report(loss):
        if progress is not None:
            rate = this_tokens / this_s if this_s else None
            eta = (total - step) * this_s / this_steps if this_steps else None
            progress(TrainProgress(step, total, step * rows_per_step / n_rows, loss, lr, rate, eval_loss,
                                   train_s, eta, tokens_seen))

    def save():
        nonlocal saved_step
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
        rundir.write_manifest(run_dir, manifest)
        metrics.close()
        rundir.plot_loss(run_dir)

    if step == 0 and eval_rows:  # the untrained model's held-out loss: where the curve starts
        eval_loss = evaluate(model, eval_rows, batch_size=cfg.batch_size, pad_id=pad_id, device=device,
                             autocast=autocast, split=split)
        metrics.write({"step": 0, "epoch": 0.0, "eval_loss": eval_loss})
    report(None)
    try:
        while step < total:
            rows = rows_of(step)
            n_labels = sum(1 for r in rows for x in r.labels if x != IGNORE)
            n_tokens = sum(r.tokens for r in rows)
            t0 = time.perf_counter()
            loss_value = 0.0
            for i in range(0, len(rows), cfg.batch_size):
                ids, pos, targets = collate(rows[i:i + cfg.batch_size], pad_id, device)
                with autocast():
                    loss = loss_sum(model, ids, pos, targets, split) / n_labels
                loss.backward()
                loss_value += loss.item()
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).item() if cfg.max_grad_norm > 0
                         else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item())
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
    output = rundir.save_final(run_dir, model, tokenizer, method=cfg.method, base_path=Path(base["path"]))
    manifest["status"] = "complete"
    rundir.write_manifest(run_dir, manifest)
    metrics.close()
    rundir.plot_loss(run_dir)
    return TrainResult(run_dir=run_dir, output=output, steps=step, total_steps=total, resumed_from=resumed_from,
                       first_loss=first_loss, loss=last_loss, eval_loss=eval_loss, tokens_seen=tokens_seen,
                       tokens_per_s=this_tokens / this_s if this_s else None, train_seconds=train_s,
                       wall_s=time.perf_counter() - t_wall, trainable_params=n_trainable,
                       total_params=manifest["params"]["total"], stats=stats.to_dict(), bad=list(stats.bad))
