"""``dca quant export``: load (and merge) a model, write it as GGUF, quantize it with llama.cpp, record a manifest.

Output contract, for ``-o OUT.gguf``:

* ``OUT.gguf``: the model, complete or absent: it is written under a temporary name in the same directory
  (``.OUT.gguf.tmp-PID...``), fsynced, then renamed (``os.replace``), so a failed or interrupted export never
  leaves a partial file there. A temporary file left by a killed export is deleted by the next export to ``OUT``.
* ``OUT.manifest.json`` (:func:`manifest_path`): ``{"format": "dca-quant-export", "version": 1, "gguf",
  "source": {"path", "kind", "base", "adapter"}, "architecture", "gguf_architecture", "quant_type",
  "intermediate_type", "tokenizer": {"model", "pre"}, "sizes": {"gguf_bytes", "parameters", "source_bytes"},
  "sha256", "seconds": {"load", "merge", "write", "quantize"}, "config", "dca_version", "created"}``, and for a
  LoRA adapter kept apart, ``"lora": {"gguf", "bytes", "sha256", "type", "rank", "alpha", "weights", "parameters"}``.
* ``OUT.lora.gguf`` (:func:`lora_path`), only when a LoRA adapter is kept apart (``--adapter-mode separate``, or
  ``auto`` over a quantized GGUF base): the adapter as a llama.cpp LoRA adapter GGUF, which llama.cpp applies at
  run time over ``OUT.gguf`` (then the base alone, with the student's tokenizer and chat template). dca's loader
  finds it through the manifest; llama.cpp's tools take it with ``--lora``. Written atomically, before ``OUT.gguf``.

An existing ``OUT.gguf`` is replaced only with ``force``.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError, ManifestError, ModelError, QuantError
from ..llm.registry import EXPORT_MANIFEST_FORMAT, export_manifest_path, exported_lora
from ..paths import atomic_path, atomic_write_text, remove_stale_temporaries, sha256_file, temporary_sibling
from ..paths import read_manifest as _read
from ..progress import Progress, ProgressFn, emitter
from .quantize import WRITE_TYPES, check_row_sizes, normalize_qtype, normalize_tensor_type, resolve_tensor_types
from .source import LOAD_DTYPES

log = logging.getLogger(__name__)

MANIFEST_FORMAT = EXPORT_MANIFEST_FORMAT
MANIFEST_VERSION = 1
#: ``--adapter-mode``: how a LoRA adapter source is exported.
ADAPTER_MODES = ("auto", "merge", "separate")


def manifest_path(gguf_path: str | Path) -> Path:
    """The manifest beside an exported GGUF: ``model.Q8_0.gguf`` -> ``model.Q8_0.manifest.json``."""
    return export_manifest_path(gguf_path)


def lora_path(gguf_path: str | Path) -> Path:
    """The LoRA adapter GGUF beside an exported base: ``model.Q4_K_M.gguf`` -> ``model.Q4_K_M.lora.gguf``."""
    p = Path(gguf_path)
    return p.with_name(p.name.removesuffix(".gguf") + ".lora.gguf")


def read_manifest(gguf_path: str | Path) -> dict | None:
    """The manifest of an exported GGUF, or None when it has none.

    Raises:
        QuantError: the manifest exists but is not a dca export manifest.
    """
    path = manifest_path(gguf_path)
    try:
        return _read(path, MANIFEST_FORMAT)
    except ManifestError as e:
        raise QuantError(f"{path} is not a dca quant export manifest ({e.reason})") from e


@dataclass
class ExportConfig:
    """Settings of :func:`export`; the arguments and flags of ``dca quant export`` resolve into this.

    Args:
        source: the model (SRC): an HF model directory, a LoRA adapter directory or a training run directory
            holding one, or a GGUF file (loaded through transformers, so a GGUF can be re-exported).
        out: the GGUF to write (``-o/--out``), ending in ``.gguf``; None makes ``./NAME.QTYPE.gguf``.
        qtype: ``F32``/``F16``/``BF16`` (written by dca) or a llama.cpp type such as ``Q8_0``, ``Q6_K``,
            ``Q5_K_M``, ``Q4_K_M``, ``Q4_0`` (``--type``); see :data:`dca.quant.QUANT_TYPES`.
        base: the base model of an adapter, when ``adapter_config.json`` does not name a local one (``--base``).
        dtype: precision the weights are loaded and the LoRA merged in: ``float32`` (default), ``bfloat16`` or
            ``float16`` (``--dtype``). Never 4-bit.
        intermediate: type of the GGUF written before llama.cpp quantizes it: ``F16`` (llama.cpp's usual
            input), ``BF16`` or ``F32`` (``--intermediate``). Unused for F32/F16/BF16 outputs.
        name: ``general.name`` in the GGUF; None uses the source's name (``--name``).
        tokenizer_pre: llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``) when dca cannot recognise it:
            ``gpt-2``, ``llama-bpe``, ``qwen2``, ``smollm``... (``--tokenizer-pre``). None detects it.
        threads: quantizer threads; None uses all (``--threads``).
        token_embedding_type: type of ``token_embd.weight`` instead of llama.cpp's choice for ``qtype``: a tensor
            type such as ``Q8_0``, ``F16``, ``Q6_K`` (``--token-embedding-type``; see
            :data:`dca.quant.quantize.TENSOR_TYPES`). Only for llama.cpp types.
        output_tensor_type: type of the output matrix likewise (``--output-tensor-type``). When the model ties its
            output matrix to the embedding (one tensor), either flag sets that tensor.
        adapter_mode: for a LoRA adapter source (``--adapter-mode``): ``merge`` writes base + adapter as one model;
            ``separate`` writes the base as ``out`` and the adapter beside it (:func:`lora_path`) for llama.cpp to
            apply at run time; ``auto`` (default) is ``separate`` where merging would lose the adapter (a quantized
            GGUF base exported to its own 2-6-bit type: :func:`requantization_warning`) and the adapter is LoRA
            pairs on linear weights only, else ``merge``.
        force: replace an existing ``out`` (``--force``).

    Raises:
        ConfigError: a value is out of range; the message names the flag.
    """

    source: Path
    out: Path | None = None
    qtype: str = "Q8_0"
    base: Path | None = None
    dtype: str = "float32"
    intermediate: str = "F16"
    name: str | None = None
    tokenizer_pre: str | None = None
    threads: int | None = None
    token_embedding_type: str | None = None
    output_tensor_type: str | None = None
    adapter_mode: str = "auto"
    force: bool = False

    def __post_init__(self):
        self.source = Path(self.source).expanduser()
        if not self.source.exists():
            raise ConfigError(f"SRC {self.source}: no such file or directory")
        self.qtype = normalize_qtype(self.qtype)
        self.intermediate = normalize_qtype(self.intermediate, "--intermediate")
        if self.intermediate not in WRITE_TYPES:
            raise ConfigError(f"--intermediate must be one of {', '.join(WRITE_TYPES)}, got {self.intermediate}")
        if self.dtype not in LOAD_DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(LOAD_DTYPES)}, got {self.dtype!r}")
        for attr, flag in (("token_embedding_type", "--token-embedding-type"),
                           ("output_tensor_type", "--output-tensor-type")):
            value = getattr(self, attr)
            if value is None:
                continue
            setattr(self, attr, normalize_tensor_type(value, flag))
            if self.qtype in WRITE_TYPES:
                raise ConfigError(f"{flag} applies to llama.cpp's types (Q8_0, Q4_K_M...), not to --type "
                                  f"{self.qtype}, which dca writes whole in one type")
        if self.adapter_mode not in ADAPTER_MODES:
            raise ConfigError(f"--adapter-mode must be one of {', '.join(ADAPTER_MODES)}, got {self.adapter_mode!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.base is not None:
            self.base = Path(self.base).expanduser()
        if self.out is None:
            stem = self.source.name.removesuffix(".gguf")
            self.out = Path.cwd() / f"{stem}.{self.qtype}.gguf"
        self.out = Path(self.out).expanduser()
        if not self.out.name.endswith(".gguf"):
            raise ConfigError(f"-o/--out must name a .gguf file, got {self.out}")
        if self.out.is_dir():
            raise ConfigError(f"-o/--out {self.out} is a directory; name the .gguf file to write")


@dataclass
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: the GGUF.
        manifest_path: its manifest.
        qtype: the quantization type.
        size_bytes: size of the GGUF.
        sha256: hex SHA-256 of the GGUF.
        seconds: wall time per stage: ``load``, ``merge``, ``write``, ``quantize`` (0 when not run), ``total``.
        manifest: the manifest's content.
        warnings: what the user should know about the file (:func:`requantization_warning`), also in the manifest.
        lora_path: the LoRA adapter GGUF written beside ``path`` (:func:`lora_path`), or None.
    """

    path: Path
    manifest_path: Path
    qtype: str
    size_bytes: int
    sha256: str
    seconds: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    lora_path: Path | None = None


def requantization_warning(base: Path | None, qtype: str) -> str | None:
    """Why exporting a LoRA adapter merged into the quantized GGUF ``base`` as ``qtype`` would lose the adapter, or
    None when it would not.

    A quantized base's weights lie on its quantization grid, and a LoRA adapter moves them by much less than one
    step of a 2-6-bit grid, so quantizing base + adapter again with the base's own type (llama.cpp then gives every
    tensor the type it has in the base) rounds most of the adapter back onto the base (measured in
    benchmarks/README.md: a Gemma 3 270M student trained from its Q4_K_M GGUF and merged into Q4_K_M answered like
    the base; as Q8_0, like the student). Into another type the rounding does not return to the base's values and the
    adapter survives as well as it does at run time (measured: a SmolLM2 student over the Q4_1 base merged into
    Q4_K_M, top-1 89.8% / KL 0.044 against the fp32 student; kept apart, 90.2% / 0.046). Q8_0's steps are fine
    enough; F16/BF16/F32 are written unquantized. Only the base's ``general.file_type`` is read.
    """
    from .quantize import LLAMA_CPP_TYPES

    if base is None or qtype not in LLAMA_CPP_TYPES or qtype == "Q8_0" or gguf_quant_type(base) != qtype:
        return None
    return (f"the adapter's base {base.name} is {qtype} too: its weights lie on that quantization's grid and the "
            f"adapter moves them by less than a step, so re-quantizing base + adapter to {qtype} rounds most of the "
            "adapter away and the student answers like its base; keep the adapter apart (--adapter-mode separate), "
            "export -t Q8_0 (or F16), or train from a full-precision base")


def gguf_quant_type(path: Path) -> str | None:
    """The llama.cpp quantization type (``general.file_type``, e.g. ``"Q4_K_M"``) of the GGUF ``path``; None for a
    directory, an F32/F16/BF16 file, or a header that cannot be read."""
    from .quantize import LLAMA_CPP_TYPES
    from .source import is_gguf

    if not is_gguf(path):
        return None
    import gguf

    try:
        field = gguf.GGUFReader(path).fields.get("general.file_type")
        ftype = int(field.contents()) if field is not None else None
    except Exception:  # an unreadable header: the load before this would have failed; say nothing here
        return None
    return {v: k for k, v in LLAMA_CPP_TYPES.items()}.get(ftype)


def _source_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export(cfg: ExportConfig, progress: ProgressFn | None = None) -> ExportResult:
    """Export ``cfg.source`` to the GGUF ``cfg.out`` in ``cfg.qtype``, with a manifest beside it.

    Stages: load (transformers; a GGUF source is dequantized), merge (LoRA, ``merge_and_unload`` in
    ``cfg.dtype``; or, with the adapter kept apart, its matrices written as a LoRA adapter GGUF), write (dca's GGUF
    writer, :mod:`dca.quant.gguf_writer`), quantize (llama.cpp's ``llama_model_quantize``, for types other than
    F32/F16/BF16).

    Args:
        cfg: the settings.
        progress: called with a :class:`~dca.progress.Progress` (job ``export``) as each phase starts: ``load``,
            ``write``, ``quantize`` (for llama.cpp's types), ``manifest``; None for none.

    Returns:
        The paths, size, checksum and stage timings.

    Raises:
        ConfigError: ``cfg.out`` (or its LoRA adapter GGUF) exists and ``cfg.force`` is False; the model ties its
            output matrix to its token embedding and ``cfg`` gives them different types; ``--adapter-mode
            separate`` for a source that is no LoRA adapter.
        QuantError: the source cannot be loaded or written (see :func:`dca.quant.source.load_source` and
            :func:`dca.quant.gguf_writer.write_gguf`), llama.cpp failed, or the disk is full; nothing is left
            under ``cfg.out`` then.
        MissingDependencyError: transformers, gguf, peft or llama-cpp-python is missing.
    """
    from .gguf_writer import require_gguf, write_gguf, write_lora_gguf
    from .quantize import quantize_gguf
    from .source import load_source

    out = cfg.out
    if not cfg.force:
        _refuse_existing(out)
    separate = _keeps_adapter_apart(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    for tmp in remove_stale_temporaries(out) + remove_stale_temporaries(lora_path(out)):
        log.info("removed %s, left by an interrupted export", tmp)
    require_gguf()  # fail before the slow load, not after it
    emit = emitter(progress)

    def step(phase: str) -> None:
        emit(Progress("export", phase=phase))

    t_start = time.perf_counter()

    step("load")
    loaded = load_source(cfg.source, base=cfg.base, dtype=cfg.dtype, merge=not separate)
    seconds = {"load": loaded.seconds["load"], "merge": loaded.seconds["merge"], "write": 0.0, "quantize": 0.0}
    row = getattr(loaded.model.config, "hidden_size", None)
    if row and cfg.qtype not in WRITE_TYPES:  # before the write, not after it
        check_row_sizes(int(row), cfg.source.name, cfg.token_embedding_type, cfg.output_tensor_type)
    warning = requantization_warning(loaded.base, cfg.qtype) if loaded.kind == "adapter" and not separate else None
    warnings = [warning] if warning else []
    for w in warnings:
        log.info("%s", w)  # the CLI prints it; the result and the manifest carry it
    # a base kept apart from its adapter, already in the type asked for: its own tensors, byte for byte (the very
    # weights the adapter was trained over; quantizing their dequantized values again moves some of them)
    tensors_from = loaded.base if separate and cfg.token_embedding_type is None and cfg.output_tensor_type is None \
        and gguf_quant_type(loaded.base) == cfg.qtype else None
    direct = cfg.qtype in WRITE_TYPES or tensors_from is not None
    written_type = cfg.qtype if direct else cfg.intermediate
    name = cfg.name or (loaded.base or loaded.source).name.removesuffix(".gguf")
    pre = cfg.tokenizer_pre or loaded.gguf_metadata.get("tokenizer.ggml.pre")
    hf_arch = type(loaded.model).__name__
    lora_info = None
    lora_type = cfg.qtype if cfg.qtype in WRITE_TYPES else cfg.intermediate  # the adapter's own matrices
    # OUT (and its adapter) appear complete, or not at all: both are written under temporary names, then the
    # adapter is renamed into place, then OUT
    with atomic_path(out) as tmp_final, (atomic_path(lora_path(out)) if separate else nullcontext()) as tmp_lora:
        tmp_written = tmp_final if direct else temporary_sibling(out, written_type.lower())
        try:
            step("write")
            t0 = time.perf_counter()
            try:
                if tmp_lora is not None:
                    lora_info = write_lora_gguf(loaded.model, loaded.lora, tmp_lora, out_type=lora_type,
                                                name=(cfg.name or cfg.source.name) + " LoRA")
                info = write_gguf(loaded.model, loaded.tokenizer, tmp_written, out_type=written_type, name=name,
                                  tokenizer_pre=pre, source_vocab=loaded.gguf_metadata, tensors_from=tensors_from)
            except OSError as e:
                raise QuantError(f"writing {out} failed ({e.strerror or e}); "
                                 "nothing was written under that name") from e
            seconds["write"] = time.perf_counter() - t0
            loaded.model = None  # free the weights before llama.cpp reads the file
            if not direct:
                embedding_type, output_type = resolve_tensor_types(cfg.token_embedding_type, cfg.output_tensor_type,
                                                                   tied=info.tied_embeddings, source=cfg.source)
                step("quantize")
                t0 = time.perf_counter()
                quantize_gguf(tmp_written, tmp_final, cfg.qtype, threads=cfg.threads,
                              token_embedding_type=embedding_type, output_tensor_type=output_type)
                seconds["quantize"] = time.perf_counter() - t0
        finally:
            if tmp_written != tmp_final:
                tmp_written.unlink(missing_ok=True)
    if lora_info is None:
        lora_path(out).unlink(missing_ok=True)  # an adapter of an earlier export of OUT would not belong to it

    step("manifest")
    seconds["total"] = time.perf_counter() - t_start
    size = out.stat().st_size
    sha = sha256_file(out)
    manifest = _manifest(cfg, loaded, info, arch=hf_arch, direct=direct, tensors_from=tensors_from, size=size,
                         sha=sha, seconds=seconds, lora=(lora_info, lora_type), warnings=warnings)
    atomic_write_text(manifest_path(out), json.dumps(manifest, indent=2) + "\n")  # ASCII JSON, as before
    log.info("exported %s (%s, %d bytes) in %.1f s", out, cfg.qtype, size, seconds["total"])
    return ExportResult(path=out, manifest_path=manifest_path(out), qtype=cfg.qtype, size_bytes=size, sha256=sha,
                        seconds=seconds, manifest=manifest, warnings=warnings,
                        lora_path=lora_path(out) if lora_info is not None else None)


def _manifest(cfg: ExportConfig, loaded, info, *, arch: str, direct: bool, tensors_from: Path | None, size: int,
              sha: str, seconds: dict, lora: tuple, warnings: list[str]) -> dict:
    """The manifest written beside ``cfg.out`` (``lora``: the adapter GGUF's writer info and type, or None)."""
    from .. import __version__

    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "gguf": cfg.out.name,
        "source": {"path": str(cfg.source.resolve()), "kind": loaded.kind,
                   "base": str(loaded.base.resolve()) if loaded.base else None,
                   "adapter": str(loaded.adapter.resolve()) if loaded.adapter else None},
        "architecture": arch,
        "gguf_architecture": info.architecture,
        "quant_type": cfg.qtype,
        "intermediate_type": None if direct else cfg.intermediate,
        **({"tensors_from": str(tensors_from.resolve())} if tensors_from is not None else {}),
        "tokenizer": {"model": info.tokenizer_model, "pre": info.tokenizer_pre},
        "tied_embeddings": info.tied_embeddings,
        "sizes": {"gguf_bytes": size, "parameters": info.n_params, "source_bytes": _source_bytes(cfg.source)},
        "sha256": sha,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "dca_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if lora[0] is not None:
        manifest["lora"] = _lora_manifest(lora_path(cfg.out), *lora)
    if warnings:
        manifest["warnings"] = warnings
    return manifest


def _refuse_existing(out: Path) -> None:
    """Raise :class:`ConfigError` naming the first of ``out``, its manifest and its LoRA adapter GGUF that exists."""
    existing = next((p for p in (out, manifest_path(out), lora_path(out)) if p.exists()), None)
    if existing is not None:
        where = f"-o/--out {out}" if existing == out else f"{existing}, beside -o/--out {out},"
        raise ConfigError(f"{where} exists; pass --force to replace it, or choose another file")


def _lora_manifest(adapter_file: Path, info, lora_type: str) -> dict:
    """The manifest's ``"lora"`` entry for the adapter GGUF ``adapter_file`` that :func:`write_lora_gguf` wrote."""
    return {"gguf": adapter_file.name, "bytes": adapter_file.stat().st_size, "sha256": sha256_file(adapter_file),
            "type": lora_type, "rank": info.rank, "alpha": info.alpha, "weights": info.n_weights,
            "parameters": info.n_params}


def _keeps_adapter_apart(cfg: ExportConfig) -> bool:
    """Whether :func:`export` writes ``cfg.source``'s LoRA adapter as its own GGUF (see ``ExportConfig.adapter_mode``).

    Raises:
        ConfigError: ``--adapter-mode separate`` for a source that is no LoRA adapter, or for an adapter llama.cpp
            cannot apply at run time.
        QuantError: the adapter's base cannot be found.
    """
    from .source import describe_source, resolve_adapter, unseparable_reason

    if cfg.adapter_mode == "merge":
        return False
    if describe_source(cfg.source) != "adapter":
        if cfg.adapter_mode == "separate":
            raise ConfigError(f"--adapter-mode separate applies to a LoRA adapter (or a training run holding one); "
                              f"{cfg.source} is a whole model")
        return False
    adapter, base = resolve_adapter(cfg.source, cfg.base)
    reason = unseparable_reason(adapter)
    if cfg.adapter_mode == "separate":
        if reason:
            raise ConfigError(f"--adapter-mode separate: llama.cpp cannot apply {adapter} at run time ({reason}); "
                              "export it with --adapter-mode merge")
        return True
    return reason is None and requantization_warning(base, cfg.qtype) is not None


def quantize_export(src: Path, dst: Path, qtype: str, *, threads: int | None = None,
                    token_embedding_type: str | None = None, output_tensor_type: str | None = None,
                    progress: ProgressFn | None = None) -> ExportResult:
    """Quantize a GGUF that :func:`export` wrote (F16/BF16/F32) into ``dst``, with a manifest beside it.

    ``dst`` appears whole or not at all; its manifest is the source's with this file's quant type, sizes,
    checksum and timing, so ``dca quant check dst`` finds the same reference model. A LoRA adapter the source was
    merged from goes with it: one kept apart is copied beside ``dst``; one merged over a quantized GGUF base of
    type ``qtype`` itself, which quantizing would round away (:func:`requantization_warning`), is exported again
    from the adapter and its base, kept apart (:func:`export`, ``adapter_mode="auto"``), when both are still there,
    else quantized with the warning.

    Args:
        src: the exported GGUF (its manifest tells whether the output matrix is tied to the embedding).
        dst: the GGUF to write (replaced when it exists).
        qtype: a llama.cpp type (:data:`dca.quant.quantize.LLAMA_CPP_TYPES`).
        threads, token_embedding_type, output_tensor_type: as :class:`ExportConfig`'s.
        progress: called with a :class:`~dca.progress.Progress` (job ``quantize``) as the quantizer starts.

    Raises:
        ConfigError: a type name is unknown, or two types are given for a tied output and embedding.
        QuantError: llama.cpp failed, or ``src``'s manifest is not a dca export manifest.
    """
    from .. import __version__
    from .quantize import normalize_qtype, quantize_gguf

    qtype = normalize_qtype(qtype, "qtype")
    source = read_manifest(src) or {}
    types = {key: normalize_tensor_type(value, "--" + key.replace("_", "-")) if value else None
             for key, value in (("token_embedding_type", token_embedding_type),
                                ("output_tensor_type", output_tensor_type))}
    embedding_type, output_type = resolve_tensor_types(**types, tied=bool(source.get("tied_embeddings")), source=src)
    origin = source.get("source") or {}
    warning = None
    if origin.get("kind") == "adapter" and origin.get("base") and not source.get("lora"):
        warning = requantization_warning(Path(origin["base"]), qtype)
        if warning and origin.get("path") and Path(origin["path"]).exists() and Path(origin["base"]).exists():
            settings = source.get("config") or {}
            return export(ExportConfig(
                source=Path(origin["path"]), base=Path(origin["base"]), out=dst, qtype=qtype, force=True,
                dtype=settings.get("dtype", "float32"), intermediate=settings.get("intermediate", "F16"),
                name=settings.get("name"), tokenizer_pre=settings.get("tokenizer_pre"), threads=threads,
                token_embedding_type=token_embedding_type, output_tensor_type=output_tensor_type), progress=progress)
    emitter(progress)(Progress("quantize", phase="quantize"))
    t0 = time.perf_counter()
    adapter = source.get("lora")
    if adapter:
        try:
            adapter_src = exported_lora(src)
        except ModelError as e:
            raise QuantError(str(e)) from e
    # dst and the base's LoRA adapter GGUF (copied) appear complete or not at all, the adapter first
    with atomic_path(dst) as tmp, (atomic_path(lora_path(dst)) if adapter else nullcontext()) as tmp_lora:
        if tmp_lora is not None:
            import shutil

            shutil.copyfile(adapter_src, tmp_lora)
        quantize_gguf(src, tmp, qtype, threads=threads, token_embedding_type=embedding_type,
                      output_tensor_type=output_type)
    if adapter:
        adapter = {**adapter, "gguf": lora_path(dst).name}
    else:
        lora_path(dst).unlink(missing_ok=True)  # an adapter of an earlier file at dst would not belong to this one
    seconds = {"load": 0.0, "merge": 0.0, "write": 0.0, "quantize": time.perf_counter() - t0}
    seconds["total"] = seconds["quantize"]
    size, sha = dst.stat().st_size, sha256_file(dst)
    manifest = {**source, "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "gguf": dst.name,
                "quant_type": qtype, "intermediate_type": source.get("quant_type"), "quantized_from": str(src),
                "sizes": {**source.get("sizes", {}), "gguf_bytes": size}, "sha256": sha,
                "seconds": {k: round(v, 3) for k, v in seconds.items()}, "dca_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if adapter:
        manifest["lora"] = adapter
    if warning:
        manifest["warnings"] = [warning]
    atomic_write_text(manifest_path(dst), json.dumps(manifest, indent=2) + "\n")
    return ExportResult(path=dst, manifest_path=manifest_path(dst), qtype=qtype, size_bytes=size, sha256=sha,
                        seconds=seconds, manifest=manifest, warnings=[warning] if warning else [],
                        lora_path=lora_path(dst) if adapter else None)
