"""``dca distill rl``: reinforcement learning with verifiable rewards, GRPO through TRL's ``GRPOTrainer``.

GRPO (Group Relative Policy Optimization; Shao et al. 2024, arXiv 2402.03300, the RL of DeepSeek-R1): each
training question is answered ``samples`` times by the policy; each completion's reward is the shared answer
checker's verdict against the gold (:func:`dca.grading.is_equivalent` of :func:`dca.grading.extract_answer`: 1 or 0)
plus ``format_weight`` times a format reward (1 when the completion gives an answer in ``\\boxed{}``); its advantage
is the reward less the group's mean, over the group's standard deviation; the policy gradient is clipped as PPO's
and a KL penalty (``beta``) to the starting model keeps the policy near it. The loss is TRL's default, the
token-level normalization of DAPO (Yu et al. 2025, arXiv 2503.14476; ``loss_type="dapo"``), which does not favour
short wrong completions as the per-sequence mean of the GRPO paper does. The loop is TRL's (no RL loop of our
own); dca gives it the model (an HF directory, a GGUF dequantized, or a registered name), the data, the rewards,
the run directory and the progress.

The run directory:

``config.yaml``
    the :class:`RLConfig` (``dca distill rl -c RUN/config.yaml`` runs it again); a rerun under other settings
    is refused (``--force`` starts over).
``manifest.json``
    ``{"format": "dca-rl", "version": 1, "status": "running"|"complete", "step", "total_steps", "base": {"path",
    "kind"}, "method", "output", "train_seconds", "updated"}``.
``metrics.jsonl``
    one object per step: ``step``, ``reward`` (mean total reward of the step's completions), ``reward_std``,
    ``accuracy`` (share of completions the checker verified), ``format`` (share with an answer in ``\\boxed{}``), ``kl``
    (mean per-token KL to the starting model, with ``beta`` > 0), ``completion_length`` (mean tokens), ``loss``,
    ``lr``, ``grad_norm``, ``elapsed_s``, ``steps_per_s``, ``tokens_per_s`` (prompt and completion tokens
    processed per second).
``rewards.png``
    reward, accuracy, KL and completion length against the step.
``checkpoints/checkpoint-N/``
    TRL's (transformers') checkpoints every ``save_every`` steps (weights, optimizer, scheduler, RNG); the same
    command resumes from the newest, dropping the metrics lines written after it.
``adapter/`` or ``model/``
    the trained policy, as ``dca distill train`` writes it, so ``dca quant export RUN`` exports it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..assistant.config import GSM8K_SYSTEM_PROMPT
from ..errors import ConfigError, LoaderError, ModelError, missing
from ..paths import atomic_write_json, atomic_write_text
from ..progress import Progress, ProgressFn, emitter
from . import rundir

log = logging.getLogger(__name__)

__all__ = ["RLConfig", "RLResult", "correctness_rewards", "format_rewards", "run_rl"]

RL_FORMAT, RL_VERSION = "dca-rl", 1
PLOT, CHECKPOINTS = "rewards.png", "checkpoints"
_FREE = {"force", "max_steps"}  # may change between runs of one directory (max_steps: train further)


@dataclass
class RLConfig:
    """Settings of :func:`run_rl` (``dca distill rl``).

    Args:
        questions: JSONL training questions with gold answers (the shapes of ``dca distill generate``).
        out_dir: the run directory (``-o``).
        model: the starting policy: an HF directory, a GGUF (dequantized by transformers) or a registered name
            (``-m``; the bundled SmolLM2-135M-Instruct by default).
        method: ``lora`` or ``full`` (``--method``).
        lora_r, lora_alpha, lora_dropout, target_modules: the LoRA adapter, as ``dca distill train``'s.
        samples: G, completions per question, the group of GRPO (``--samples``).
        questions_per_step: questions per optimizer step on each process (``--questions-per-step``); a step
            trains on ``questions_per_step * samples`` completions per process.
        max_tokens: most tokens per completion (``--max-tokens``).
        temperature: the completions' temperature (``--temperature``).
        lr: the peak learning rate (``--lr``; None: 1e-6 for full, 1e-5 for LoRA).
        beta: the KL coefficient (``--beta``; GRPO's paper uses 0.04; 0 loads no reference model and logs no KL).
        format_weight: weight of the format reward beside the checker's 0/1 (``--format-weight``).
        max_steps: optimizer steps (``--max-steps``).
        save_every: checkpoint every N steps (``--save-every``).
        limit: the first N questions only (``--limit``).
        system_prompt: the system turn of every prompt (``--system-prompt``; the GSM8K task's by default).
        precision: ``auto`` (bf16 on CUDA with bf16, else fp32), ``bf16`` or ``fp32`` (``--precision``).
        seed: the data order's, the sampling's and the adapter's seed.
        force: start over, deleting what an earlier run wrote.
    """

    questions: Path
    out_dir: Path
    model: str = "smollm2-135m-instruct"
    method: str = "lora"
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])
    samples: int = 8
    questions_per_step: int = 1
    max_tokens: int = 256
    temperature: float = 0.7
    lr: float | None = None
    beta: float = 0.04
    format_weight: float = 0.1
    max_steps: int = 100
    save_every: int = 10
    limit: int | None = None
    system_prompt: str = GSM8K_SYSTEM_PROMPT
    precision: str = "auto"
    seed: int = 0
    force: bool = False

    def __post_init__(self):
        self.questions, self.out_dir = Path(self.questions), Path(self.out_dir)
        self.model = str(self.model)
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        if self.method not in ("lora", "full"):
            raise ConfigError(f"--method must be lora or full, got {self.method!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        for name, value in (("--samples", self.samples), ("--questions-per-step", self.questions_per_step),
                            ("--max-tokens", self.max_tokens), ("--max-steps", self.max_steps),
                            ("--save-every", self.save_every), ("--lora-r", self.lora_r)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.samples < 2:
            raise ConfigError("--samples must be >= 2: GRPO's advantage compares a completion with its group")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if self.beta < 0 or self.format_weight < 0:
            raise ConfigError("--beta and --format-weight must be >= 0")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-6 if self.method == "full" else 1e-5)

    def settings(self) -> dict:
        out = asdict(self)
        out.pop("force")
        return json.loads(json.dumps(out, default=str))


@dataclass
class RLResult:
    """What :func:`run_rl` did: steps done (of ``total_steps``), the last step's metrics, the policy's directory."""

    out_dir: Path
    steps: int = 0
    total_steps: int = 0
    last: dict = field(default_factory=dict)
    output: Path | None = None
    seconds: float = 0.0


def _text(completion) -> str:
    """A completion as text: TRL passes conversational completions as ``[{"role": "assistant", "content"}]``."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def correctness_rewards(completions: list, gold: list[str]) -> list[float]:
    """The checker's verdict per completion: 1.0 when the answer it ends with equals its question's gold, else 0.0.

    Args:
        completions: texts, or TRL's conversational completions; one per (question, sample).
        gold: the gold answer of each completion's question, aligned with ``completions``.
    """
    from ..grading import extract_answer, is_equivalent

    out = []
    for c, g in zip(completions, gold):
        answer = extract_answer(_text(c))
        out.append(1.0 if answer is not None and is_equivalent(answer, g) else 0.0)
    return out


def format_rewards(completions: list) -> list[float]:
    """1.0 per completion that gives an answer in ``\\boxed{}`` (the last one is the answer graded), else 0.0."""
    from ..grading import _last_boxed

    return [1.0 if _last_boxed(_text(c)) is not None else 0.0 for c in completions]


def _prepare_dir(cfg: RLConfig) -> bool:
    """Check ``out_dir``; True when a run is continued."""
    d = cfg.out_dir
    if d.exists() and not d.is_dir():
        raise ConfigError(f"-o/--out-dir {d} is a file; choose a directory")
    if d.exists() and any(d.iterdir()):
        if cfg.force:
            import shutil

            for name in (*rundir.RUN_FILES, PLOT):
                p = d / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            return False
        saved = rundir.read_config(d)
        if saved is None:
            raise ConfigError(f"-o/--out-dir {d} is not empty and holds no dca RL run; choose another, or --force")
        new = cfg.settings()
        diffs = [k for k in new if k not in _FREE and saved.get(k) != new[k]]
        if diffs:
            raise ConfigError(f"-o/--out-dir {d} holds a run with other settings ({', '.join(diffs)}); continue it "
                              "with the same flags (--max-steps may grow), start over with --force, or choose another "
                              "-o/--out-dir")
        return True
    return False


def _load(cfg: RLConfig, bf16: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .train import drop_gguf_quantizer, resolve_base

    path, kind = resolve_base(cfg.model)
    src, extra = (str(path.parent), {"gguf_file": path.name}) if kind == "gguf" else (str(path), {})
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **extra)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16 if bf16 and cfg.method == "lora"
                                                     else torch.float32, **extra)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for unloadable checkpoints
        raise ModelError(f"-m/--model {path}: transformers could not load it ({type(e).__name__}: {e})") from e
    if kind == "gguf":
        drop_gguf_quantizer(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    return model, tokenizer, path, kind


def _dataset(cfg: RLConfig):
    from datasets import Dataset

    from .generate import load_questions

    questions, bad = load_questions(cfg.questions, None)
    questions = [q for q in questions if q.gold is not None][:cfg.limit]
    if not questions:
        raise LoaderError(cfg.questions, "no question with a gold answer (GSM8K '#### N', MATH \\boxed{}, or gold)")
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return Dataset.from_list([{"prompt": [*system, {"role": "user", "content": q.question}], "gold": q.gold,
                               "id": q.id} for q in questions]), bad


def run_rl(cfg: RLConfig, *, progress: ProgressFn | None = None, callbacks: list | None = None) -> RLResult:
    """Train the policy with GRPO (module docstring), or continue the run in ``cfg.out_dir``.

    Run it under ``accelerate launch`` for several processes (DDP; FSDP or DeepSpeed through accelerate's own
    config): each process trains on its own ``questions_per_step`` questions per step, and only the main process
    writes the run directory.

    Args:
        cfg: the settings.
        progress: called with :class:`~dca.progress.Progress` (job ``rl``, unit ``steps``, metrics ``reward``,
            ``accuracy``, ``kl``) after each step, and with phases while loading.
        callbacks: more ``transformers.TrainerCallback`` objects for the trainer.

    Returns:
        the result; the policy is in ``RUN/adapter`` (LoRA) or ``RUN/model`` (full).

    Raises:
        ConfigError: settings out of range, or ``out_dir`` holds another run.
        LoaderError: the questions file has no question with a gold answer.
        ModelError: the model cannot be loaded.
        MissingDependencyError: TRL, datasets or peft is not installed (``pip install 'dca[rl]'``).
    """
    try:
        import torch
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise missing(e.name or "trl", "rl") from e
    from .parallel import setup
    from .train import _collective_device

    t0 = time.perf_counter()
    emit = emitter(progress)
    dp = setup()  # several processes under accelerate launch: rank 0 checks (and clears) the directory for all
    main = dp.main
    cfg.out_dir = cfg.out_dir.expanduser().resolve()
    resume = dp.decide(lambda: _prepare_dir(cfg), _collective_device(dp))
    dataset, bad = _dataset(cfg)
    for b in bad:
        log.warning("skipped %s", b)
    cuda = torch.cuda.is_available()
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    emit(Progress("rl", phase="loading the model"))
    model, tokenizer, base_path, kind = _load(cfg, bf16)
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    out = cfg.out_dir
    last_checkpoint = _last_checkpoint(out / CHECKPOINTS) if resume else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        rundir.write_config(out, cfg.settings())
        manifest = {"format": RL_FORMAT, "version": RL_VERSION, "status": "running",
                    "step": last_checkpoint[0] if last_checkpoint else 0,
                    "total_steps": cfg.max_steps, "base": {"path": str(base_path), "kind": kind},
                    "method": cfg.method, "output": rundir.ADAPTER if cfg.method == "lora" else rundir.MODEL}
        atomic_write_json(out / rundir.MANIFEST, manifest)
    args = GRPOConfig(
        output_dir=str(out / CHECKPOINTS), per_device_train_batch_size=cfg.questions_per_step * cfg.samples,
        gradient_accumulation_steps=1, num_generations=cfg.samples, max_completion_length=cfg.max_tokens,
        temperature=cfg.temperature, learning_rate=cfg.learning_rate, beta=cfg.beta, max_steps=cfg.max_steps,
        logging_steps=1, save_steps=cfg.save_every, save_total_limit=2, report_to="none", seed=cfg.seed,
        data_seed=cfg.seed, use_cpu=not cuda, bf16=bf16, disable_tqdm=True, lr_scheduler_type="constant",
        reward_weights=[1.0, cfg.format_weight], log_completions=False, dataloader_num_workers=0,
        save_only_model=False, top_k=0)
    if main:
        _trim_metrics(out, last_checkpoint[0] if last_checkpoint else 0)

    def correctness(prompts, completions, gold, **kwargs):
        return correctness_rewards(completions, gold)

    def format_(prompts, completions, **kwargs):
        return format_rewards(completions)

    correctness.__name__, format_.__name__ = "correctness", "format"
    logger = _MetricsLog(out, cfg, emit, main, TrainerCallback)
    trainer = GRPOTrainer(model=model, reward_funcs=[correctness, format_], args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config,
                          callbacks=[logger.callback, *(callbacks or [])])
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its dict per step on stdout: the progress and metrics.jsonl say it
    emit(Progress("rl", phase="training", done=last_checkpoint[0] if last_checkpoint else 0, total=cfg.max_steps,
                  unit="steps"))
    trainer.train(resume_from_checkpoint=str(last_checkpoint[1]) if last_checkpoint else None)
    result = RLResult(out, steps=trainer.state.global_step, total_steps=cfg.max_steps, last=logger.last)
    # every process takes part: under FSDP or DeepSpeed ZeRO-3 the full weights are gathered from all of them
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    result.output = out / (rundir.ADAPTER if cfg.method == "lora" else rundir.MODEL)
    if main:
        result.output = rundir.save_final(out, trainer.model, tokenizer, method=cfg.method, base_path=base_path,
                                          state_dict=weights)
        _plot(out)
        manifest.update(status="complete", step=result.steps, train_seconds=round(time.perf_counter() - t0, 3),
                        updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        atomic_write_json(out / rundir.MANIFEST, manifest)
    dp.barrier()
    result.seconds = time.perf_counter() - t0
    return result


def _last_checkpoint(d: Path) -> tuple[int, Path] | None:
    found = sorted((int(p.name.split("-")[1]), p) for p in d.glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file())
    return found[-1] if found else None


def _trim_metrics(out: Path, step: int) -> None:
    """Drop the metrics lines after ``step`` (written before a kill, after the checkpoint resumed from)."""
    path = out / rundir.METRICS
    if not path.exists():
        return
    keep = [r for r in rundir.read_metrics(out) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


class _MetricsLog:
    """Appends a line to ``metrics.jsonl`` on each of TRL's step logs and reports progress."""

    KEYS = {"reward": "reward", "reward_std": "reward_std", "rewards/correctness/mean": "accuracy",
            "rewards/format/mean": "format", "kl": "kl", "completions/mean_length": "completion_length",
            "loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "num_tokens": "tokens"}

    def __init__(self, out: Path, cfg: RLConfig, emit: Callable, main: bool, base_class):
        self.out, self.cfg, self.emit, self.main = out, cfg, emit, main
        self.last: dict = {}
        self.t0 = time.perf_counter()
        self.first_step: int | None = None
        self.prev = (0.0, self.t0)
        log_self = self

        class Callback(base_class):
            def on_train_begin(self, args, state, control, **kwargs):
                log_self.t0 = time.perf_counter()  # the rates count training, not loading
                log_self.prev = (0.0, log_self.t0)

            def on_log(self, args, state, control, logs=None, **kwargs):
                log_self.on_log(state, logs or {})

        self.callback = Callback()

    def on_log(self, state, logs: dict) -> None:
        if "reward" not in logs:
            return  # the end-of-training summary
        row = {"step": state.global_step}
        for key, name in self.KEYS.items():
            if key in logs:
                row[name] = round(float(logs[key]), 6)
        now = time.perf_counter()
        elapsed = now - self.t0
        if self.first_step is None:
            self.first_step = state.global_step - 1
            if self.first_step > 0:  # resumed: TRL's token count includes the steps before; rate from the next
                self.prev = (row.get("tokens", 0.0), now)
        row["elapsed_s"] = round(elapsed, 3)
        row["steps_per_s"] = round((state.global_step - self.first_step) / elapsed, 6) if elapsed > 0 else None
        if "tokens" in row:  # TRL's count of the prompt and completion tokens seen: a rate over this step
            since = now - self.prev[1]
            row["tokens_per_s"] = round((row["tokens"] - self.prev[0]) / since, 3) if since > 0 else None
            self.prev = (row["tokens"], now)
        self.last = row
        if self.main:
            with open(self.out / rundir.METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        self.emit(Progress("rl", done=state.global_step, total=self.cfg.max_steps, unit="steps",
                           metrics={k: row[k] for k in ("reward", "accuracy", "kl") if k in row}))


def _plot(out: Path) -> None:
    rows = rundir.read_metrics(out)
    if not rows:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    from ..paths import atomic_path

    panels = [("reward", "reward"), ("accuracy", "accuracy (checker)"), ("kl", "KL to the start"),
              ("completion_length", "completion tokens")]
    fig, axes = plt.subplots(2, 2, figsize=(8, 5), sharex=True)
    for ax, (key, title) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    try:
        with atomic_path(out / PLOT) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
