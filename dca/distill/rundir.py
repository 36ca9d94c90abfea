"""The training run directory of ``dca distill train``: its files, checkpoints, metrics log, plot and manifest.

A run directory (format ``dca-train``, version 1) holds, under fixed names:

``config.yaml``
    the :class:`~dca.distill.train.TrainConfig` that made the run, as ``field: value`` pairs (``resume`` and
    ``force`` left out): ``dca distill train -c RUN/config.yaml`` runs it again.
``manifest.json``
    ``{"format": "dca-train", "version": 1, "status": "running"|"interrupted"|"complete", "step",
    "total_steps", "base": {"path", "kind", fingerprint}, "data": [fingerprints], "eval_data", "stats"
    (:class:`~dca.distill.data.DataStats`), "method", "params": {"trainable", "total"}, "device", "precision",
    "last": {"loss", "eval_loss", "tokens_per_s"}, "tokens_seen", "train_seconds", "output": "adapter"|"model",
    "dca_version", "created", "updated"}``. Rewritten atomically at every checkpoint and at the end.
``metrics.jsonl``
    one object per logged step: ``step``, ``epoch``, ``loss`` (mean token cross-entropy of the steps since the
    last line, nats), ``lr``, ``grad_norm`` (before clipping), ``tokens`` (real tokens trained on so far),
    ``tokens_per_s``, ``elapsed_s``; ``eval_loss`` on the steps the held-out split was evaluated. With a
    held-out split the first line is ``{"step": 0, "epoch": 0.0, "eval_loss"}``: the untrained model's loss.
``loss.png``
    training and eval loss against the step.
``adapter/``
    LoRA/QLoRA runs: the peft adapter (``adapter_config.json``, ``adapter_model.safetensors``; its
    ``base_model_name_or_path`` is the base model's absolute path) and the tokenizer, chat template included;
    ``dca quant export RUN`` merges it into the base. ``model/`` instead for full fine-tuning: the model and
    tokenizer, ``save_pretrained`` format.
``checkpoints/step-N/``
    ``trainable.pt`` (the trainable parameters), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (torch CPU and
    CUDA generator states), ``state.json`` (``step``, ``tokens_seen``, ``train_seconds``). A checkpoint is
    written under a temporary name and renamed, so ``step-N`` is complete or absent; the newest
    ``keep_checkpoints`` are kept.

The run is finished when ``manifest.json`` says ``"complete"``; ``adapter/`` (or ``model/``) is written
before that. There is no ``config.json`` at the top: ``dca quant export`` reads one as an HF model.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from ..errors import ConfigError, ManifestError
from ..paths import atomic_path, atomic_write_json, atomic_write_text
from ..paths import read_manifest as _read_manifest

log = logging.getLogger(__name__)

TRAIN_FORMAT, TRAIN_VERSION = "dca-train", 1
CONFIG, MANIFEST, METRICS, LOSS_PLOT = "config.yaml", "manifest.json", "metrics.jsonl", "loss.png"
ADAPTER, MODEL, CHECKPOINTS = "adapter", "model", "checkpoints"
RUN_FILES = (CONFIG, MANIFEST, METRICS, LOSS_PLOT, ADAPTER, MODEL, CHECKPOINTS)


def read_manifest(run_dir: Path) -> dict | None:
    """The manifest of a run directory, or None when it has none or it is unreadable or of another format."""
    try:
        return _read_manifest(run_dir / MANIFEST, TRAIN_FORMAT)
    except ManifestError:
        return None


def write_manifest(run_dir: Path, manifest: dict) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(run_dir / MANIFEST, manifest)


def read_config(run_dir: Path) -> dict | None:
    """The settings in ``config.yaml``, or None when absent or unreadable."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def write_config(run_dir: Path, settings: dict) -> None:
    import yaml

    atomic_write_text(run_dir / CONFIG, yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))


def clear_run(run_dir: Path) -> None:
    """Delete the files of the contract (:data:`RUN_FILES`) in ``run_dir``; other files are left alone."""
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def settings_diff(old: dict, new: dict, flags: dict, ignore: set) -> list[str]:
    """``"FLAG was A, now B"`` for every setting (not in ``ignore``) that differs between two config mappings."""
    return [f"{flags.get(k, k)} was {old.get(k)!r}, now {new.get(k)!r}"
            for k in sorted(set(old) | set(new)) if k not in ignore and old.get(k) != new.get(k)]


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run, oldest first, as (step, directory)."""
    found = []
    for p in (run_dir / CHECKPOINTS).glob("step-*"):
        if p.is_dir() and p.name[5:].isdigit() and (p / "state.json").is_file():
            found.append((int(p.name[5:]), p))
    return sorted(found)


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, rng: dict, state: dict, keep: int) -> Path:
    """Write ``checkpoints/step-STEP`` (layout in the module docstring) and delete all but the newest ``keep``."""
    import torch

    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    with atomic_path(final) as tmp:
        tmp.mkdir()
        trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(trainable, tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n", encoding="utf-8")
    for _, old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, device) -> tuple[dict, dict]:
    """Load a checkpoint into ``model``, ``optimizer`` and ``scheduler``; return (state, rng).

    Raises:
        ConfigError: the checkpoint does not fit the model (other trainable parameters); the message says to
            start over with ``--force``.
    """
    import torch

    try:
        trainable = torch.load(path / "trainable.pt", map_location=device, weights_only=True)
        own = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(trainable) != own:
            raise ConfigError(f"{path}: the checkpoint's trainable parameters do not match the model "
                              f"({len(trainable)} saved, {len(own)} now); start over with --force")
        model.load_state_dict(trainable, strict=False)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = torch.load(path / "rng.pt", weights_only=True)
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(f"{path}: unreadable checkpoint ({e}); delete it to resume from an earlier one, or start "
                          "over with --force") from e
    return state, rng


class MetricsLog:
    """``metrics.jsonl``, one flushed line per record; opening it for a resumed run drops lines after ``step``."""

    def __init__(self, run_dir: Path, resume_step: int):
        self.path = run_dir / METRICS
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step] if resume_step else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (a partial last line left by a kill is skipped)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def plot_loss(run_dir: Path) -> None:
    """Write ``loss.png``: training loss (and eval loss, when there is one) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    held = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", color="#2a9d8f")
    if held:
        ax.plot(*zip(*held), "o-", label="eval (held out)", color="#e76f51")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean token cross-entropy, nats)")
    ax.set_title(f"Training loss: {run_dir.name}")
    if train or held:
        ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(run_dir / LOSS_PLOT) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def save_final(run_dir: Path, model, tokenizer, *, method: str, base_path: Path,
               state_dict: dict | None = None) -> Path:
    """Write ``adapter/`` (LoRA) or ``model/`` (full) atomically, with the tokenizer; returns the directory.

    ``state_dict``: the model's weights gathered from a sharded run (FSDP, DeepSpeed ZeRO-3), None to take them
    from ``model``."""
    name = ADAPTER if method == "lora" else MODEL
    final = run_dir / name
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    with atomic_path(final) as tmp:
        if method == "lora":
            model.peft_config["default"].base_model_name_or_path = str(base_path)
            model.save_pretrained(str(tmp), save_embedding_layers=False, **extra)  # False: no Hub lookup of the base
        else:
            model.save_pretrained(str(tmp), **extra)
        tokenizer.save_pretrained(str(tmp))
    return final
