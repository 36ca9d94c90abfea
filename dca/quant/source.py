"""Load what ``dca quant export`` exports: an HF model directory, a LoRA adapter (merged into its base, or kept
apart as its matrices), or a GGUF.

Weights are loaded in 32-bit (or 16-bit, on request) precision, never through a 4-bit quantizer, so a LoRA
adapter trained with QLoRA is merged into full-precision base weights.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ManifestError, ModelError, QuantError, missing
from ..paths import read_manifest

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
RUN_MODEL_DIR = "model"  # a full fine-tuning run of ``dca distill train`` saves its model here
LOAD_DTYPES = ("float32", "bfloat16", "float16")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class LoraMatrices:
    """A LoRA adapter as peft applies it to one weight: ``W' = W + scale * B @ A``.

    Attributes:
        a: float32 array of shape ``(r, in_features)`` (peft's ``lora_A``).
        b: float32 array of shape ``(out_features, r)`` (peft's ``lora_B``).
        scale: peft's ``scaling``: ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA), per module when the
            adapter has rank or alpha patterns.
    """

    a: Any
    b: Any
    scale: float


@dataclass
class LoadedModel:
    """A model ready to write, with where it came from.

    Attributes:
        model: the transformers causal LM, in eval mode, LoRA merged (or, when loaded with ``merge=False``, the
            base alone).
        tokenizer: its fast tokenizer.
        kind: ``"hf"``, ``"gguf"`` or ``"adapter"``.
        source: the path given.
        base: the base model of an adapter (HF dir or GGUF), else None.
        adapter: the adapter directory, else None.
        gguf_metadata: ``tokenizer.ggml.*`` fields of a GGUF source or base that transformers drops (the
            pre-tokenizer name); empty otherwise.
        seconds: wall time of ``"load"`` and ``"merge"`` (0 without an adapter).
        lora: with ``merge=False``, the adapter's matrices by the base weight they apply to (the transformers
            parameter name, e.g. ``model.layers.0.self_attn.q_proj.weight``); else None.
    """

    model: Any
    tokenizer: Any
    kind: str
    source: Path
    base: Path | None = None
    adapter: Path | None = None
    gguf_metadata: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    lora: dict[str, LoraMatrices] | None = None


def is_gguf(path: Path) -> bool:
    """True for a file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def find_adapter(path: Path) -> Path | None:
    """The LoRA adapter directory of ``path``: itself, or the one child directory holding ``adapter_config.json``
    (a training run directory, e.g. ``RUN/adapter``); None when there is none.

    Raises:
        QuantError: several child directories hold adapters (the message lists them).
    """
    if (path / ADAPTER_CONFIG).is_file():
        return path
    found = sorted(p.parent for p in path.glob(f"*/{ADAPTER_CONFIG}"))
    if len(found) > 1:
        preferred = [p for p in found if p.name in ("adapter", "final")]
        if len(preferred) == 1:
            return preferred[0]
        raise QuantError(f"{path} holds several adapters ({', '.join(p.name for p in found)}); pass one of them")
    return found[0] if found else None


def describe_source(src: Path) -> str:
    """``"gguf"``, ``"adapter"`` or ``"hf"``: what kind of model ``src`` is.

    Raises:
        QuantError: ``src`` is none of those (the message says what was expected).
    """
    if src.is_file():
        if is_gguf(src):
            return "gguf"
        raise QuantError(f"{src} is not a GGUF file; export takes an HF model directory, a LoRA adapter or "
                         "training run directory, or a .gguf file")
    if not src.is_dir():
        raise QuantError(f"{src}: no such file or directory")
    if (src / ADAPTER_CONFIG).is_file():
        return "adapter"
    if _is_hf_config(src / "config.json"):
        return "hf"
    if find_adapter(src) is not None:  # a training run directory (its config.json, if any, is dca's own)
        return "adapter"
    if _is_hf_config(src / RUN_MODEL_DIR / "config.json"):  # a full fine-tuning run: RUN/model/
        return "hf"
    raise QuantError(f"{src} holds no model: expected config.json and weights (an HF model directory), "
                     f"{ADAPTER_CONFIG} (a LoRA adapter, or a training run directory holding one), or a .gguf file")


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing or unreadable (the caller then looks elsewhere)."""
    try:
        return read_manifest(path) or {}
    except ManifestError:
        return {}


def _is_hf_config(path: Path) -> bool:
    """True for a transformers ``config.json`` (it names a ``model_type``), False for a missing or other file."""
    if not path.is_file():
        return False
    data = _read_json(path)
    return bool(data.get("model_type") or data.get("architectures")) or not data


def _run_base(run_dir: Path) -> Path | None:
    """The base model a training run directory records, when it is a local path; else None.

    Looks at ``manifest.json`` (``dca distill train``: ``"base": {"path": ...}``), then the keys ``base_model``,
    ``base`` and ``model`` of ``manifest.json``, ``config.json`` and ``config.yaml``.
    """
    import yaml

    for name in ("manifest.json", "config.json", "config.yaml"):
        path = run_dir / name
        if name.endswith(".yaml"):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
            except (OSError, yaml.YAMLError):
                data = {}
        else:
            data = _read_json(path)
        if not isinstance(data, dict):
            continue
        for key in ("base_model", "base", "model"):
            value = data.get(key)
            value = value.get("path") if isinstance(value, dict) else value
            if isinstance(value, str) and value and Path(value).expanduser().exists():
                return Path(value).expanduser()
    return None


def _check_hf_dir(path: Path) -> None:
    """Fail early, with the file named, on a directory without weights, with corrupt safetensors, or quantized."""
    try:
        config = read_manifest(path / "config.json") or {}
    except ManifestError as e:
        raise QuantError(f"{path / 'config.json'}: unreadable model config ({e.reason})") from e
    quant = config.get("quantization_config")
    if quant and quant.get("quant_method") != "gguf":
        raise QuantError(f"{path} holds {quant.get('quant_method')}-quantized weights; export needs 16- or 32-bit "
                         "weights: point at the unquantized base model")
    archs = config.get("architectures") or []
    from .gguf_writer import gguf_architecture

    if archs:
        gguf_architecture(archs[0])
    files = [f for g in _WEIGHT_GLOBS for f in sorted(path.glob(g))]
    if not files:
        raise QuantError(f"{path} has config.json but no weights (model.safetensors or pytorch_model.bin)")
    for f in files:
        if f.suffix == ".safetensors":
            _check_safetensors(f)


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:  # opening parses the header and checks that the data offsets cover the file exactly
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own SafetensorError, and OSError/ValueError
        raise QuantError(f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt") from e


def _torch_dtype(dtype: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _load_tokenizer(*candidates: tuple[Path, str | None]):
    from transformers import AutoTokenizer

    errors = []
    for path, gguf_file in candidates:
        if gguf_file is None and not any((path / f).is_file() for f in _TOKENIZER_FILES):
            continue
        try:
            return AutoTokenizer.from_pretrained(str(path), **({"gguf_file": gguf_file} if gguf_file else {}))
        except Exception as e:  # transformers raises OSError, ValueError, KeyError... for a bad tokenizer
            errors.append(f"{path}: {e}")
    raise QuantError("no loadable tokenizer: " + ("; ".join(errors) if errors else
                                                  f"none of {', '.join(str(p) for p, _ in candidates)} has one"))


# what transformers' GGUF loader drops or changes: the pre-tokenizer name, and a SentencePiece vocabulary's own
# scores and token types (its fast tokenizer is a BPE whose merge ranks and types differ from the GGUF's)
_CARRIED_KEYS = ("tokenizer.ggml.pre", "tokenizer.ggml.model")
# an HF directory written from a GGUF (dca.distill.train.gguf_as_hf_dir) keeps gguf_tokenizer_metadata() here
GGUF_TOKENIZER_FILE = "gguf_tokenizer.json"
_SPM_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
             "tokenizer.ggml.add_space_prefix")


def gguf_tokenizer_metadata(path: Path) -> dict:
    """The tokenizer values of a GGUF that transformers' GGUF loader drops: ``tokenizer.ggml.pre``/``model``, and
    for a SentencePiece (``llama``) vocabulary its tokens, scores, token types and space prefix, so that an export of
    the same vocabulary writes them back unchanged (:func:`dca.quant.gguf_writer.write_gguf`'s ``source_vocab``)."""
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    spm = reader.fields.get("tokenizer.ggml.model") is not None and \
        reader.fields["tokenizer.ggml.model"].contents() == "llama"
    for key in _CARRIED_KEYS + (_SPM_KEYS if spm else ()):
        f = reader.fields.get(key)
        if f is not None:
            out[key] = f.contents()
    return out


def _load_base(path: Path, dtype: str):
    """(model, tokenizer or None, gguf metadata) of an HF directory or a GGUF file."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise missing("transformers", "quant") from e
    from .gguf_writer import require_gguf

    kind = describe_source(path)
    if kind == "adapter":
        raise QuantError(f"{path} is a LoRA adapter; a base model must be an HF model directory or a GGUF file")
    meta: dict = {}
    try:
        if kind == "gguf":
            from ..llm.registry import kept_apart

            if reason := kept_apart(path):
                raise QuantError(reason)
            require_gguf()  # transformers needs it to read a GGUF
            meta = gguf_tokenizer_metadata(path)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                         dtype=_torch_dtype(dtype))
            tokenizer = _load_tokenizer((path.parent, path.name))
        else:
            _check_hf_dir(path)
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_torch_dtype(dtype))
            tokenizer = _load_tokenizer((path, None))
            if (path / GGUF_TOKENIZER_FILE).is_file():
                meta = json.loads((path / GGUF_TOKENIZER_FILE).read_text(encoding="utf-8"))
    except (QuantError, ModelError):
        raise
    except Exception as e:  # transformers/safetensors/torch raise many types for unreadable checkpoints
        raise QuantError(f"{path}: transformers could not load the model ({type(e).__name__}: {e})") from e
    return model.eval(), tokenizer, meta


def adapter_base(adapter: Path) -> str | None:
    """The base model an adapter names (``base_model_name_or_path`` of ``adapter_config.json``)."""
    try:
        cfg = read_manifest(adapter / ADAPTER_CONFIG)
        if cfg is None:
            raise ManifestError(adapter / ADAPTER_CONFIG, "no such file")
    except ManifestError as e:
        raise QuantError(f"{adapter / ADAPTER_CONFIG}: unreadable adapter config ({e.reason})") from e
    return cfg.get("base_model_name_or_path")


def _resize_for_adapter(model, adapter: Path) -> None:
    """Grow the base embeddings when the adapter saved embeddings for tokens it added (peft modules_to_save)."""
    files = sorted(adapter.glob("adapter_model*.safetensors"))
    if not files:
        return
    from safetensors import safe_open

    rows = None
    with safe_open(str(files[0]), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
            if "embed_tokens" in k and "lora_" not in k:
                rows = f.get_slice(k).get_shape()[0]
    if rows and rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows)


def resolve_adapter(src: Path, base: Path | None = None) -> tuple[Path, Path]:
    """The adapter directory of the adapter source ``src`` and its local base model (see :func:`load_source`).

    Raises:
        QuantError: the adapter config is unreadable, or the base is not a local directory or GGUF file.
    """
    adapter = find_adapter(src)
    if adapter is None:
        raise QuantError(f"{src} holds no LoRA adapter ({ADAPTER_CONFIG})")
    named = adapter_base(adapter)
    if base is not None:
        base_path = Path(base).expanduser()
    elif named and Path(named).expanduser().exists():
        base_path = Path(named).expanduser()
    else:
        base_path = _run_base(src) if adapter != src else None
    if base_path is None or not base_path.exists():
        raise QuantError(f"the adapter's base model {str(base) if base else named!r} is not a local directory or "
                         "GGUF file; pass it with --base PATH")
    return adapter, base_path


def unseparable_reason(adapter: Path) -> str | None:
    """Why llama.cpp could not apply the adapter at ``adapter`` at run time (as a LoRA adapter GGUF), or None when
    it could: llama.cpp applies low-rank pairs ``B @ A`` to linear weights with one scale, nothing else.

    Raises:
        QuantError: the adapter config is unreadable.
    """
    try:
        cfg = read_manifest(adapter / ADAPTER_CONFIG) or {}
    except ManifestError as e:
        raise QuantError(f"{adapter / ADAPTER_CONFIG}: unreadable adapter config ({e.reason})") from e
    reasons = []
    if cfg.get("peft_type", "LORA") != "LORA":
        reasons.append(f"it is a {cfg.get('peft_type')} adapter, not LoRA")
    if cfg.get("use_dora"):
        reasons.append("it is a DoRA adapter (a magnitude vector per weight)")
    if cfg.get("modules_to_save"):
        reasons.append(f"it saves whole modules ({', '.join(cfg['modules_to_save'])})")
    if cfg.get("trainable_token_indices"):
        reasons.append("it trains token embeddings (trainable_token_indices)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        reasons.append("it trains biases")
    if cfg.get("fan_in_fan_out"):
        reasons.append("its weights are stored transposed (fan_in_fan_out)")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    if any(key in t for t in targets for key in ("embed", "lm_head")):  # llama.cpp: linear weights of the blocks
        reasons.append(f"it adapts the embeddings or the output matrix ({', '.join(targets)})")
    return "; ".join(reasons) or None


def _lora_matrices(peft_model) -> dict[str, LoraMatrices]:
    """The LoRA pairs of an unmerged peft model, by the transformers name of the weight each applies to."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        if not hasattr(module.get_base_layer(), "in_features"):
            raise QuantError(f"the LoRA layer {name} is not on a linear weight (an embedding?); llama.cpp applies "
                             "LoRA adapters to linear weights only: export with --adapter-mode merge")
        weight = name.removeprefix("base_model.model.") + ".weight"
        out[weight] = LoraMatrices(
            a=module.lora_A["default"].weight.detach().float().cpu().numpy(),
            b=module.lora_B["default"].weight.detach().float().cpu().numpy(),
            scale=float(module.scaling["default"]))
    if not out:
        raise QuantError("the adapter has no LoRA layers to write")
    return out


def load_source(src: Path, *, base: Path | None = None, dtype: str = "float32", merge: bool = True) -> LoadedModel:
    """Load ``src`` as a transformers model in ``dtype``, merging a LoRA adapter into its base.

    Args:
        src: an HF model directory, a LoRA adapter directory, a training run directory (holding
            ``adapter/``, or ``model/`` after full fine-tuning), or a GGUF file (loaded and dequantized by
            transformers).
        base: the adapter's base model (HF directory or GGUF); None takes ``base_model_name_or_path`` from
            ``adapter_config.json`` when it is a local path, else the ``base_model``/``base``/``model`` path a
            training run directory records in its ``config.json`` or ``manifest.json``. Ignored for other sources.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``: precision of the loaded weights and of the
            merge.
        merge: False keeps an adapter apart: ``model`` is the base alone and ``lora`` the adapter's matrices (for
            a LoRA adapter GGUF that llama.cpp applies at run time). Ignored for other sources.

    Returns:
        The model, its tokenizer (the adapter's own when it saved one), and provenance.

    Raises:
        MissingDependencyError: transformers, peft or gguf is missing.
        QuantError: no model at ``src``; no weights, corrupt weights, quantized weights; an unsupported
            architecture; an adapter whose base cannot be found locally; with ``merge=False``, an adapter that is
            more than LoRA pairs on linear weights (:func:`unseparable_reason`).
    """
    src = Path(src).expanduser()
    kind = describe_source(src)
    t0 = time.perf_counter()
    if kind != "adapter":
        full_run = src.is_dir() and not _is_hf_config(src / "config.json")
        model, tokenizer, meta = _load_base(src / RUN_MODEL_DIR if full_run else src, dtype)
        from .gguf_writer import gguf_architecture

        gguf_architecture(type(model).__name__)
        return LoadedModel(model, tokenizer, kind, src, gguf_metadata=meta,
                           seconds={"load": time.perf_counter() - t0, "merge": 0.0})
    adapter, base_path = resolve_adapter(src, base)
    if not merge and (reason := unseparable_reason(adapter)):
        raise QuantError(f"{adapter} cannot be applied by llama.cpp at run time: {reason}; export it with "
                         "--adapter-mode merge")
    model, tokenizer, meta = _load_base(base_path, dtype)
    from .gguf_writer import gguf_architecture

    gguf_architecture(type(model).__name__)
    own = [(p, None) for p in (adapter, src) if any((p / f).is_file() for f in _TOKENIZER_FILES)]
    if own:
        tokenizer = _load_tokenizer(*own)
    t1 = time.perf_counter()
    try:
        from peft import PeftModel
    except ImportError as e:
        raise missing("peft", "quant") from e
    lora = None
    try:
        _resize_for_adapter(model, adapter)
        wrapped = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = wrapped.merge_and_unload()
        else:
            lora = _lora_matrices(wrapped)
            model = wrapped.unload()  # the base's own modules back, unchanged
    except QuantError:
        raise
    except Exception as e:  # peft raises ValueError/KeyError/RuntimeError for a mismatched or corrupt adapter
        raise QuantError(f"{adapter}: could not apply the LoRA adapter to {base_path} "
                         f"({type(e).__name__}: {e})") from e
    return LoadedModel(model.eval(), tokenizer, "adapter", src, base=base_path, adapter=adapter,
                       gguf_metadata=meta, seconds={"load": t1 - t0, "merge": time.perf_counter() - t1}, lora=lora)
