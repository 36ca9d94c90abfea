"""dca's exception hierarchy.

The library raises these; only :mod:`dca.cli` turns them into messages and exit codes. Each message says
what was received, what was expected, and, where there is one, the command that fixes it.
"""

from __future__ import annotations


class DcaError(Exception):
    """Base class of every error dca raises on purpose."""


class MissingDependencyError(DcaError, ImportError):
    """An optional stack is not installed; the message gives the ``pip install`` line."""


class ConfigError(DcaError, ValueError):
    """A setting is out of range; the message names the option (flag) to change."""


class LoaderError(DcaError):
    """A file could not be read as a document (binary, not UTF-8, empty, corrupt, unsupported).

    Attributes:
        path: the file that failed.
        reason: what was wrong with it, without the path.
    """

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ManifestError(LoaderError):
    """A JSON file dca wrote (a manifest, a stamp, a run's settings) is unreadable, not an object, or of
    another format (:func:`dca.paths.read_manifest`)."""


class StoreError(DcaError):
    """A RAG store directory is missing, corrupt, or incompatible with this version or embedder."""


class ModelError(DcaError):
    """A chat model could not be found or loaded (missing file, not a GGUF, unknown name)."""


class TeacherError(DcaError):
    """A teacher model failed to produce a completion (HTTP error, refused credentials, local model failure).

    Attributes:
        fatal: True when retrying or moving to the next sample cannot help (bad credentials, wrong base URL
            or model), so a generation run stops at once; False for a failure of one sample.
    """

    def __init__(self, message: str, *, fatal: bool = False):
        self.fatal = fatal
        super().__init__(message)


class QuantError(DcaError):
    """A model could not be exported to GGUF, quantized or checked (unsupported architecture or tokenizer,
    missing or corrupt weights, a failed write, llama.cpp refusing the file)."""


class Cancelled(DcaError):
    """A long job was cancelled through its cancel hook."""


def missing(package: str, extra: str) -> MissingDependencyError:
    """Build the error raised when an optional import fails.

    Args:
        package: the import name that failed, e.g. ``"faiss"``.
        extra: the dca extra that provides it, e.g. ``"rag"``.
    """
    return MissingDependencyError(
        f"{package} is not installed; it comes with dca's [{extra}] extra: pip install 'dca[{extra}]'"
    )
