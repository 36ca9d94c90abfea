"""Chat templates: a GGUF without one is prompted as plain text with a notice (never a guessed template), a user
can name one (gemma, chatml, a file), and llama.cpp's log stays off the terminal."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from dca.errors import ConfigError
from dca.llm.templates import COMPLETION_STOPS, GEMMA_TEMPLATE, completion_prompt, resolve_template

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."}, {"role": "user", "content": " And of Italy? "}]


def render(template: str, messages, bos="<bos>") -> str:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token="<eos>", bos_token=bos,
                               add_generation_prompt=True)(messages=messages).prompt


def test_resolution_order_and_errors(tmp_path):
    assert resolve_template(None, "{{ x }}").source == "gguf"
    bare = resolve_template(None, None)
    assert bare.source == "completion" and bare.stops == COMPLETION_STOPS
    named = resolve_template("gemma", "{{ x }}")  # a named template replaces the GGUF's
    assert (named.source, named.template, named.stops) == ("named", GEMMA_TEMPLATE, ("<end_of_turn>",))
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert resolve_template(str(f), None).source == "file"
    with pytest.raises(ConfigError, match="--chat-template nope: neither a template name"):
        resolve_template("nope", None)
    (tmp_path / "empty.jinja").write_text(" \n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_template(tmp_path / "empty.jinja", None)


def test_the_gemma_template_renders_gemma_turns():
    assert render(GEMMA_TEMPLATE, CONVERSATION) == (
        "<bos><start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n"
        "<start_of_turn>user\nAnd of Italy?<end_of_turn>\n<start_of_turn>model\n")
    assert render(GEMMA_TEMPLATE, CONVERSATION[1:2]) == (
        "<bos><start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n")


def test_completion_prompting_writes_questions_and_answers():
    assert completion_prompt(CONVERSATION) == (
        "Be brief.\n\nQuestion: Capital of France?\nAnswer: Paris.\n\nQuestion: And of Italy?\nAnswer:")
    assert completion_prompt(CONVERSATION[1:2]) == "Question: Capital of France?\nAnswer:"


@pytest.fixture(scope="module")
def templateless_gguf(tmp_path_factory):
    """A tiny Llama written to GGUF with a tokenizer that has no chat template (as a base model's)."""
    from test_quant import sentencepiece_style_tokenizer, tiny_model

    from dca.quant.gguf_writer import write_gguf

    tok = sentencepiece_style_tokenizer()
    assert not getattr(tok, "chat_template", None)
    path = tmp_path_factory.mktemp("base") / "base.gguf"
    write_gguf(tiny_model(tok), tok, path, out_type="F32", name="tiny base")
    return path


def test_a_gguf_without_a_template_is_prompted_as_text_unless_one_is_named(templateless_gguf):
    from dca.llm import load_llm

    llm = load_llm(templateless_gguf, n_ctx=256)
    assert llm.template.source == "completion"
    assert llm.render(CONVERSATION) == completion_prompt(CONVERSATION)
    chatml = load_llm(templateless_gguf, n_ctx=256, chat_template="chatml")
    assert chatml.template.source == "named"
    assert chatml.render(CONVERSATION[1:2]).endswith("<|im_start|>user\nCapital of France?<|im_end|>\n"
                                                     "<|im_start|>assistant\n")


def test_dca_chat_says_so_and_keeps_llama_cpps_log_off_the_terminal(templateless_gguf):
    # a subprocess: llama.cpp writes to file descriptor 2 itself, past anything Python could capture in-process
    # (this tiny model's 256-token training context makes llama.cpp warn about the 4096-token window)
    cmd = [sys.executable, "-m", "dca.cli", "chat", "-m", str(templateless_gguf), "--no-store", "--max-tokens", "4",
           "Capital of France?"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "has no chat template in its GGUF" in run.stderr and "--chat-template gemma|chatml|FILE" in run.stderr
    assert not re.search(r"llama_|n_ctx|print_info|load_tensors", run.stderr), run.stderr
    verbose = subprocess.run([sys.executable, "-m", "dca.cli", "--verbose", *cmd[3:]], capture_output=True, text=True,
                             timeout=120)
    assert verbose.returncode == 0 and "llama.cpp: " in verbose.stderr


def test_a_student_of_a_base_model_trained_with_a_named_template_exports_it_into_its_gguf(tmp_path):
    """dca distill train --chat-template gemma on a base without a template: the exported GGUF carries the template,
    so the student is prompted in the format it was trained in."""
    import json

    from test_distill_train import cfg_for, make_tokenizer, trace
    from transformers import LlamaConfig, LlamaForCausalLM

    from dca.distill.train import train
    from dca.llm import load_llm
    from dca.quant.export import ExportConfig, export

    base = tmp_path / "base"
    tok = make_tokenizer()
    tok.chat_template = None
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                                 tie_word_embeddings=False)).save_pretrained(base)
    tok.save_pretrained(base)
    data = tmp_path / "traces.jsonl"
    data.write_text("".join(json.dumps(trace(i).to_dict()) + "\n" for i in range(8)))
    with pytest.raises(ConfigError, match="--chat-template"):  # without one, chat-shaped data cannot be rendered
        train(cfg_for(base, data, tmp_path / "no-template"))
    cfg = cfg_for(base, data, tmp_path / "run", chat_template="gemma")
    train(cfg)
    out = tmp_path / "student.gguf"
    export(ExportConfig(source=cfg.out_dir, out=out, qtype="F32"))
    student = load_llm(out, n_ctx=256)
    assert student.template.source == "gguf" and student.template.template == GEMMA_TEMPLATE
    assert student.render([{"role": "user", "content": "hi"}]).endswith(
        "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n")


@pytest.mark.slow
def test_the_gemma_3_base_model_answers_as_a_completion_without_a_template_echo():
    from conftest import gemma_base_gguf

    gguf = gemma_base_gguf()
    run = subprocess.run([sys.executable, "-m", "dca.cli", "chat", "-m", str(gguf), "--no-store", "--max-tokens", "32",
                          "What is the capital of France?"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    answer = run.stdout.splitlines()[0]
    assert "Paris" in answer and not re.search(r"<\|im_|<start_of_turn>|<end_of_turn>|Question:", run.stdout)
    assert "has no chat template in its GGUF" in run.stderr and not re.search(r"llama_|n_ctx", run.stderr)
