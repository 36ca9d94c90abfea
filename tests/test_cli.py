"""The command line: --help text, lazy imports, error messages and exit codes, rag commands end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dca.cli import app

runner = CliRunner()


def test_import_dca_and_help_do_not_import_heavy_stacks():
    code = (
        "import sys, dca, dca.cli, dca.rag, dca.assistant\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(dca.cli.app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'llama_cpp', 'sentence_transformers') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("args,expected", [
    (["--help"], ["chat", "rag", "models", "demo"]),
    (["rag", "--help"], ["ingest", "search", "info", "remove"]),
    (["rag", "ingest", "--help"], ["--store-dir", "--chunk-tokens", "--overlap-tokens", "--embedder"]),
    (["rag", "search", "--help"], ["--mode", "dense | lexical | hybrid", "-k"]),
    (["chat", "--help"], ["--think", "--no-think", "--thinking-budget", "--show-thinking", "-m", "--store-dir",
                          "/sources", "/reset", "/exit"]),
])
def test_help_text(args, expected):
    # what the help says, not how rich lays it out: a 40-column terminal folds the option names themselves
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for word in expected:
        assert word in result.output, word


def test_models_command_lists_bundled():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "smollm2-135m-instruct" in result.output and "all-MiniLM-L6-v2" in result.output


def test_bad_model_and_bad_flag_exit_nonzero_with_a_message(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all")
    result = runner.invoke(app, ["chat", "hi", "-m", str(bad)])
    assert result.exit_code == 1 and "broken.gguf is not a GGUF file" in result.output
    result = runner.invoke(app, ["chat", "hi", "-m", "no-such-model"])
    assert result.exit_code == 1 and "unknown model 'no-such-model'" in result.output
    result = runner.invoke(app, ["rag", "search", "q", "--store-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no dca store" in result.output
    result = runner.invoke(app, ["rag", "ingest", str(tmp_path), "--chunk-tokens", "4"])
    assert result.exit_code == 1 and "--chunk-tokens must be >= 16" in result.output


@pytest.mark.slow
def test_rag_commands_end_to_end_with_the_bundled_embedder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rivers.md").write_text("# Rivers\n\nThe Zorblax river flows through the city of Quenton.\n")
    (docs / "bread.txt").write_text("Knead the rye dough for ten minutes and let it rise for one hour.\n")
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    store = str(tmp_path / "store")
    env = {}
    result = runner.invoke(app, ["rag", "ingest", str(docs), "--store-dir", store], env=env)
    assert result.exit_code == 1  # one file failed; the others are ingested
    assert "latin1.txt" in result.output and "UTF-8" in result.output and "2 added" in result.output
    result = runner.invoke(app, ["rag", "search", "Which city is on the Zorblax river?", "--store-dir", store, "-k", "1"], env=env)
    assert result.exit_code == 0 and "rivers.md" in result.output and "bread.txt" not in result.output
    result = runner.invoke(app, ["rag", "info", "--store-dir", store], env=env)
    assert result.exit_code == 0 and "all-MiniLM-L6-v2 (384-d)" in result.output and "flat" in result.output
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["embedder"] == {"name": "all-MiniLM-L6-v2", "dim": 384, "backend": "llama.cpp"}
    result = runner.invoke(app, ["rag", "remove", str(docs / "bread.txt"), "--store-dir", store], env=env)
    assert result.exit_code == 0 and "removed 1 file" in result.output
    result = runner.invoke(app, ["rag", "remove", str(docs / "bread.txt"), "--store-dir", store], env=env)
    assert result.exit_code == 1 and "is in the store" in result.output


def test_config_file_resolves_under_flags(tmp_path):
    from dca.assistant import AssistantConfig
    from dca.config import load_config
    from dca.errors import ConfigError

    cfg = tmp_path / "chat.yaml"
    cfg.write_text("top_k: 2\ntemperature: 0.5\n")
    c = load_config(AssistantConfig, cfg, temperature=0.1, think=None)
    assert (c.top_k, c.temperature, c.max_tokens) == (2, 0.1, AssistantConfig().max_tokens)
    cfg.write_text("top_k: 2\nbogus: 1\n")
    with pytest.raises(ConfigError, match="unknown setting.*bogus"):
        load_config(AssistantConfig, cfg)
    cfg.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(AssistantConfig, cfg)
    cfg.write_text("top_k: -3\n")
    result = runner.invoke(app, ["chat", "hi", "-c", str(cfg)])
    assert result.exit_code == 1 and "-k must be >= 0" in result.output


@pytest.mark.slow
def test_chat_session_commands_with_the_bundled_gguf():
    script = "/sources\nSay hello.\n/sources\n/bogus\n/reset\n/exit\n"
    result = runner.invoke(app, ["chat", "--max-tokens", "8"], input=script)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "smollm2-135m-instruct" in out and "Commands: /sources /reset /exit" in out
    assert "no sources for the last answer" in out  # before any answer, and after one without a store
    assert "unknown command /bogus" in out and "conversation reset" in out
    assert "answer + 0 thinking tokens" in out


@pytest.mark.slow
def test_chat_self_consistency_reports_the_votes():
    result = runner.invoke(app, ["chat", "What is 12 plus 30? Answer with a number.", "--samples", "3",
                                 "--max-tokens", "24"])
    assert result.exit_code == 0, result.output
    assert "vote over 3 samples:" in result.output and " won (" in result.output
    result = runner.invoke(app, ["chat", "hi", "--effort", "extreme"])
    assert result.exit_code == 1 and "--effort must be one of low, medium, high" in result.output


def test_chat_with_a_verifier_that_is_not_a_gguf_names_the_file(tmp_path):
    bogus = tmp_path / "verifier.gguf"
    bogus.write_bytes(b"not a gguf at all")
    result = runner.invoke(app, ["chat", "What is 6 x 7?", "--samples", "2", "--max-tokens", "8", "--verifier",
                                 str(bogus)])
    assert result.exit_code == 1 and "--verifier" in result.output and "verifier.gguf is not a GGUF file" \
        in result.output, result.output
    result = runner.invoke(app, ["chat", "hi", "--tools", "abacus"])
    assert result.exit_code == 1 and "--tools: unknown tool 'abacus'; known: calculator" in result.output


# -- any terminal width ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", ["40", "80", "250"])
def test_errors_and_tables_are_whole_at_any_width(tmp_path, columns):
    bad = tmp_path / "a-rather-long-directory-name-for-a-model" / "broken.gguf"
    bad.parent.mkdir()
    bad.write_bytes(b"not a gguf at all")
    result = runner.invoke(app, ["chat", "hi", "-m", str(bad)], env={"COLUMNS": columns})
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if x.strip()]  # one line, never broken mid-sentence
    assert line.startswith("error: ") and f"{bad} is not a GGUF file" in line and line.endswith("MODEL.gguf")
    result = runner.invoke(app, ["models"], env={"COLUMNS": columns})
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 4}
    assert "smollm2-135m-instruct" in rows and "all-MiniLM-L6-v2" in rows  # no cell cut to "smol…"
    assert ".gguf" in rows["smollm2-135m-instruct"] and "…" not in result.output


def test_messages_keep_their_square_brackets(tmp_path, monkeypatch):
    from dca.errors import missing

    def no_stack(*args, **kwargs):
        raise missing("bitsandbytes", "qlora")

    monkeypatch.setattr("dca.llm.load_llm", no_stack)
    monkeypatch.setattr("dca.assistant.core.load_llm", no_stack)
    result = runner.invoke(app, ["chat", "hi"])
    assert result.exit_code == 1
    assert "it comes with dca's [qlora] extra: pip install 'dca[qlora]'" in result.output


def test_chat_and_eval_take_every_assistant_setting_from_one_definition():
    from dca.assistant.config import cli_settings

    flags = [flag for f in cli_settings() for flag in f.metadata["flags"]]
    assert {"--vote", "--min-thinking-tokens", "--mode", "--min-similarity", "--strategy", "--samples"} <= set(flags)
    for command in (["chat", "--help"], ["eval", "--help"]):
        result = runner.invoke(app, command, env={"COLUMNS": "250"})
        assert result.exit_code == 0
        for flag in flags:
            assert flag.split("/")[0] in result.output, (command, flag)
    assert "[default: 256]" in runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "250"}).output
