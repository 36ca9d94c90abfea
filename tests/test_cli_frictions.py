"""What a new user meets on the command line (issue 25): the default store, messages, tables as JSON, Ctrl-C,
self-consistency output, the model list. Fast: a scripted model and a hashing embedder through the real CLI."""

from __future__ import annotations

import json

import pytest
from conftest import HashEmbedder
from typer.testing import CliRunner

from dca.cli import app

runner = CliRunner()
DOC = "The Zorblax river flows through the city of Quenton and ends in the Amber sea."


@pytest.fixture
def offline(monkeypatch, scripted_llm):
    """dca chat/eval/rag with a scripted model and the hashing embedder instead of the bundled ones."""
    from dca.rag import Store

    llm = scripted_llm("The Zorblax flows through Quenton.")
    monkeypatch.setattr("dca.assistant.core.load_llm", lambda model, **kw: llm)
    monkeypatch.setattr("dca.rag.open_store", lambda path, embedder=None, **kw: Store.open(path, HashEmbedder()))
    monkeypatch.setattr("dca.cli.rag.embedder", lambda path: HashEmbedder())
    return llm


def ingest_default_store(tmp_path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "rivers.txt").write_text(DOC)
    (tmp_path / "docs" / "photo.png").write_bytes(b"\x89PNG not a document")
    result = runner.invoke(app, ["rag", "ingest", str(tmp_path / "docs")])
    assert result.exit_code == 0, result.output
    # a file of another type in a folder is named, not passed over in silence (and not an error)
    assert "left out 1 file(s) of a type dca does not read (photo.png)" in result.output


def test_chat_answers_from_the_default_store_and_says_so(offline, tmp_path, dca_home):
    ingest_default_store(tmp_path)
    result = runner.invoke(app, ["chat", "Where does the Zorblax flow?"])
    assert result.exit_code == 0, result.output
    assert f"store: {dca_home / 'store'} (1 files, 1 chunks)" in result.output
    assert "Passages" in offline.prompts[-1] and DOC in offline.prompts[-1]  # retrieval happened
    assert "[1] cited" in result.output
    result = runner.invoke(app, ["chat", "Where does the Zorblax flow?", "--no-store"])
    assert result.exit_code == 0 and "no store: answering from the model alone" in result.output
    assert DOC not in offline.prompts[-1]


def test_without_a_default_store_chat_says_it_answers_alone(offline):
    result = runner.invoke(app, ["chat", "hi"])
    assert result.exit_code == 0 and "no store: answering from the model alone" in result.output


def test_help_and_messages_keep_square_brackets():
    result = runner.invoke(app, ["distill", "train", "--help"], env={"COLUMNS": "300"})
    assert "pip install 'dca[qlora]'" in result.output
    result = runner.invoke(app, ["chat", "--help"], env={"COLUMNS": "300"})
    assert "[default: $DCA_HOME/store when it holds one]" in result.output


def test_version():
    from dca import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"dca {__version__}"


def test_json_outputs_of_models_and_rag_info(offline, tmp_path, dca_home):
    models = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    assert {m["name"] for m in models} >= {"smollm2-135m-instruct", "all-MiniLM-L6-v2"}
    ingest_default_store(tmp_path)
    info = json.loads(runner.invoke(app, ["rag", "info", "--json"]).stdout)
    assert (info["files"], info["chunks"], info["dim"]) == (1, 1, 64)
    assert info["file_paths"] == [str((tmp_path / "docs" / "rivers.txt").resolve())]
    listed = runner.invoke(app, ["rag", "info", "--files"]).stdout
    assert str((tmp_path / "docs" / "rivers.txt").resolve()) in listed and "64-d" in listed


def test_a_model_whose_file_is_gone_is_marked_and_can_be_forgotten(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    assert runner.invoke(app, ["models", "add", "tiny", str(gguf)]).exit_code == 0
    gguf.unlink()
    result = runner.invoke(app, ["models"])
    row = next(line for line in result.stdout.splitlines() if "tiny" in line)
    assert "missing" in row and "dca models remove --missing" in result.output
    result = runner.invoke(app, ["chat", "hi", "-m", "nope"])
    assert "known chat models: smollm2-135m-instruct." in result.output  # the missing one is not offered
    result = runner.invoke(app, ["models", "remove", "--missing"])
    assert result.exit_code == 0 and "forgot tiny" in result.output
    assert "tiny" not in runner.invoke(app, ["models"]).stdout
    result = runner.invoke(app, ["models", "remove", "smollm2-135m-instruct"])
    assert result.exit_code == 1 and "is bundled" in result.output


def test_a_cut_answer_is_marked(offline, monkeypatch, scripted_llm, tmp_path):
    long = scripted_llm("one two three four five six seven eight nine ten")
    monkeypatch.setattr("dca.assistant.core.load_llm", lambda model, **kw: long)
    result = runner.invoke(app, ["chat", "count", "--max-tokens", "4", "--no-store"])
    assert result.exit_code == 0 and "one two three four [cut at --max-tokens 4]" in result.stdout
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "Count.", "answer": "#### 10"}) + "\n")
    result = runner.invoke(app, ["eval", "--task", "gsm8k", "--data", str(data), "--max-tokens", "4",
                                 "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    (pred,) = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert pred["truncated"] is True
    result = runner.invoke(app, ["chat", "count", "--max-tokens", "40", "--no-store"])
    assert "[cut at" not in result.stdout


def test_the_vote_names_its_winner_the_others_and_ties(offline, monkeypatch, scripted_llm):
    voter = scripted_llm(sampled=[("The answer is 24 x 5 = 100, which is the total number of apples in the crates", -0.5),
                                  ("\\boxed{120}", -0.1), ("\\boxed{120}", -0.2), ("no idea", -0.3)])
    monkeypatch.setattr("dca.assistant.core.load_llm", lambda model, **kw: voter)
    result = runner.invoke(app, ["chat", "How many apples?", "--samples", "4", "--no-store"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("vote over"))
    # the worked expression's value, not its clause ("24 x 5 = 100, which is the total ... x1")
    assert line == "vote over 4 samples: 120 won (2 of 4); others: 100 x1; 1 without an answer"


def test_ctrl_c_says_what_was_kept_and_what_continues(offline, monkeypatch, tmp_path):
    traces = tmp_path / "t.jsonl"
    traces.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dca.distill.train.train", interrupted)
    result = runner.invoke(app, ["distill", "train", str(traces), "-o", str(tmp_path / "run")])
    assert result.exit_code == 130
    assert "before the first step: nothing to keep; run the same command to start again" in result.output
    monkeypatch.setattr("dca.distill.importers.import_traces", interrupted)
    result = runner.invoke(app, ["distill", "import", str(traces), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 130 and "out.jsonl was not written (it appears whole or not at all)" in result.output

    from dca.rag.store import Store

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(DOC)
    monkeypatch.setattr(Store, "ingest", interrupted)
    result = runner.invoke(app, ["rag", "ingest", str(tmp_path / "docs")])
    assert result.exit_code == 130
    assert "the store keeps 0 whole files (0 chunks); run the same command to continue" in result.output


def test_eval_takes_the_assistant_settings_the_readme_lists(scripted_llm, tmp_path, monkeypatch):
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}) + "\n")
    llm = scripted_llm("<think>two and two</think> so \\boxed{4}", think_tags=("<think>", "</think>"))
    monkeypatch.setattr("dca.assistant.core.load_llm", lambda model, **kw: llm)
    result = runner.invoke(app, ["eval", "--task", "gsm8k", "--data", str(data), "--vote", "logprob",
                                 "--min-thinking-tokens", "2", "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assistant = json.loads((tmp_path / "run" / "config.json").read_text())["settings"]["assistant"]
    assert (assistant["vote"], assistant["min_thinking_tokens"]) == ("logprob", 2)


def test_chat_keeps_its_prompt_prefix_states_in_dca_home(monkeypatch, scripted_llm, dca_home):
    seen = {}
    monkeypatch.setattr("dca.assistant.core.load_llm", lambda model, **kw: seen.update(kw) or scripted_llm("hi"))
    result = runner.invoke(app, ["chat", "hi", "--no-store"])
    assert result.exit_code == 0, result.output
    assert seen["prompt_cache"] == dca_home / "cache" / "prompts"  # a one-shot chat skips the shared prefix
    monkeypatch.setenv("DCA_PROMPT_CACHE", "off")
    seen.clear()
    assert runner.invoke(app, ["chat", "hi", "--no-store"]).exit_code == 0 and seen.get("prompt_cache") is None
