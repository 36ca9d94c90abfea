"""Model registry: bundled models, registration, resolution by name or path, bad GGUF files."""

from __future__ import annotations

import pytest

from dca.errors import ModelError
from dca.llm import BUNDLED_CHAT_MODEL, check_gguf, list_models, register_model, resolve_model


@pytest.fixture
def fake_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def test_bundled_models_are_listed_and_resolve():
    entries = {e.name: e for e in list_models()}
    chat = entries[BUNDLED_CHAT_MODEL]
    assert chat.kind == "chat" and chat.origin == "bundled" and chat.path.endswith(".gguf") and chat.size_bytes > 50e6
    assert entries["all-MiniLM-L6-v2"].kind == "embedder"
    assert str(resolve_model(None)) == chat.path == str(resolve_model(BUNDLED_CHAT_MODEL))


def test_register_and_resolve_by_name(fake_gguf, dca_home):
    entry = register_model("tiny", fake_gguf)
    assert entry.origin == "registered" and (dca_home / "models.json").exists()
    assert resolve_model("tiny") == fake_gguf.resolve()
    assert any(e.name == "tiny" and e.origin == "registered" for e in list_models())
    with pytest.raises(ModelError, match="bundled"):
        register_model(BUNDLED_CHAT_MODEL, fake_gguf)


def test_a_gguf_used_by_path_is_remembered(fake_gguf):
    assert resolve_model(str(fake_gguf)) == fake_gguf.resolve()
    listed = [e for e in list_models() if e.path == str(fake_gguf.resolve())]
    assert len(listed) == 1 and listed[0].origin == "path" and listed[0].name == "tiny"
    resolve_model(str(fake_gguf))
    assert len([e for e in list_models() if e.path == str(fake_gguf.resolve())]) == 1


def test_bad_models_get_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'nope'.*smollm2-135m-instruct"):
        resolve_model("nope")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ModelError, match=r"weights.gguf is not a GGUF file"):
        check_gguf(not_gguf)
    with pytest.raises(ModelError, match="is a directory"):
        check_gguf(tmp_path)


def test_corrupt_registry_is_reported(dca_home):
    dca_home.mkdir(parents=True, exist_ok=True)
    (dca_home / "models.json").write_text("{not json")
    with pytest.raises(ModelError, match="models.json: unreadable model registry"):
        list_models()
