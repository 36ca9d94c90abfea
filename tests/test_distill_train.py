"""``dca distill train``: data shapes, the assistant-only loss mask, packing, LoRA/full training, resume, CLI.

Everything runs on a tiny random Llama (hidden 32, 2 layers, 4 heads, 2 KV heads) and a byte-level BPE
tokenizer trained in-process on a few sentences, with a ChatML template and <think>/</think> tokens.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from typer.testing import CliRunner

from dca.cli import app
from dca.distill.data import IGNORE, Example, encode_example, load_examples, pack, split_examples
from dca.distill.traces import Trace, to_messages
from dca.errors import ConfigError, MissingDependencyError

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
          "How many clips did Natalia sell altogether? The answer is 72.", "Weng earns 12 dollars an hour.",
          "Let me think step by step: 48 / 2 = 24 and 48 + 24 = 72. So the answer is \\boxed{72}.",
          "system user assistant question answer think"]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.add_tokens(["<think>", "</think>"])
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An HF model directory: a tiny random Llama and its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-llama")
    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def trace(i: int, thinking: str = "48 / 2 = 24 and 48 + 24 = 72.") -> Trace:
    return Trace(id=f"q{i}", sample=0, question=f"How many clips did Natalia sell in April and May? ({i})",
                 answer=f"So the answer is \\boxed{{{72 + i}}}.", thinking=thinking, gold=str(72 + i))


@pytest.fixture
def traces_file(tmp_path):
    p = tmp_path / "traces.jsonl"
    p.write_text("".join(json.dumps(trace(i).to_dict()) + "\n" for i in range(12)))
    return p


def cfg_for(tiny, data, out, **kw):
    from dca.distill.train import TrainConfig

    base = {"data": [data], "out_dir": out, "model": str(tiny), "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "seq_len": 128,
                "batch_size": 2, "max_steps": 2, "lr": 5e-3, "warmup_ratio": 0.0, "save_every": 1, "eval_fraction": 0.2}
    return TrainConfig(**{**base, **kw})


# -- data: shapes, mask, packing ---------------------------------------------------------------------------


def test_shapes_are_detected_by_key_and_bad_lines_reported(tmp_path):
    lines = [trace(0).to_dict(),
             {"messages": [{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "yo", "reasoning_content": "greet back"}], "id": "m"},
             {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
             {"prompt": "hi", "completion": "yo"},
             {"text": "just some text"},
             {"foo": 1},
             {"messages": [{"role": "user", "content": "no answer"}]}]
    p = tmp_path / "mixed.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    bad = []
    examples = load_examples([p], bad)
    assert [e.shape for e in examples] == ["trace", "messages", "sharegpt", "prompt-completion", "text"]
    assert examples[1].messages[-1]["content"] == "<think>\ngreet back\n</think>\n\nyo"
    assert examples[2].messages == ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"})
    assert [b.line for b in bad] == [6, 7, 8] and "no known shape" in bad[0].reason and "assistant" in bad[1].reason


def test_loss_mask_covers_the_assistant_turn_and_its_end_token_only():
    tok = make_tokenizer()
    msgs = to_messages(trace(1), system="Reason step by step.")
    [enc] = encode_example(tok, Example(tuple(msgs), None, "q1", "t:1", "trace"), 512)
    ids, labels = enc.input_ids, enc.labels
    labeled = [t for t, y in zip(ids, labels) if y != IGNORE]
    assert all(y in (IGNORE, t) for t, y in zip(ids, labels))
    assert tok.decode(labeled) == msgs[-1]["content"] + "<|im_end|>"  # think block, answer, end-of-turn token
    assert tok.convert_tokens_to_ids("<think>") in labeled and tok.convert_tokens_to_ids("</think>") in labeled
    first = labels.index(next(y for y in labels if y != IGNORE))
    prompt = tok.decode(ids[:first])
    assert prompt.endswith("<|im_start|>assistant\n") and "Reason step by step." in prompt and msgs[1]["content"] in prompt
    assert all(y == IGNORE for y in labels[:first]) and labels[-1] == IGNORE  # the newline after <|im_end|>


def test_multi_turn_masks_every_assistant_turn():
    tok = make_tokenizer()
    msgs = ({"role": "user", "content": "a"}, {"role": "assistant", "content": "one"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "two"})
    [enc] = encode_example(tok, Example(msgs, None, "g", "s", "messages"), 512)
    runs, cur = [], []
    for t, y in zip(enc.input_ids, enc.labels):
        if y != IGNORE:
            cur.append(t)
        elif cur:
            runs, cur = runs + [tok.decode(cur)], []
    assert runs == ["one<|im_end|>", "two<|im_end|>"]


def test_a_template_that_rewrites_earlier_turns_gives_one_example_per_assistant_turn():
    tok = make_tokenizer()
    # Like Qwen3's: earlier assistant turns lose their thinking; only the last keeps it.
    tok.chat_template = (
        "{% for m in messages %}{% set c = m['content'] %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{% set c = c.split('</think>')[-1].lstrip() %}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + c + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    msgs = ({"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\none"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "<think>\ny\n</think>\n\ntwo"})
    encs = encode_example(tok, Example(msgs, None, "g", "s", "messages"), 512)
    assert [tok.decode([t for t, y in zip(e.input_ids, e.labels) if y != IGNORE]) for e in encs] == \
        ["<think>\nx\n</think>\n\none<|im_end|>", "<think>\ny\n</think>\n\ntwo<|im_end|>"]
    assert "<think>\nx" not in tok.decode(encs[1].input_ids)  # turn 2 is trained in the context it sees at inference


def test_packing_keeps_every_label_and_separates_examples(tiny):
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    encs = [encode_example(tok, Example(tuple(to_messages(trace(i, "x " * (i * 5)))), None, "g", "s", "trace"), 256)[0]
            for i in range(6)]
    rows = pack(encs, 256, tok.pad_token_id)
    assert len(rows) < len(encs) and all(len(r.input_ids) == 256 for r in rows)
    assert sum(e.n_labels for e in encs) == sum(1 for r in rows for y in r.labels if y != IGNORE)
    for e in encs:  # each example sits whole in one row, labels included, its positions starting at 0
        hits = [(r, i) for r in rows for i in range(len(r.input_ids) - len(e.input_ids) + 1)
                if r.input_ids[i:i + len(e.input_ids)] == e.input_ids]
        assert any(r.labels[i:i + len(e.labels)] == e.labels and r.position_ids[i] == 0 for r, i in hits)
    # A packed row gives each example the logits it has alone: no attention across examples.
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    row = next(r for r in rows if len(r.lengths) > 1)
    with torch.no_grad():
        packed = model(input_ids=torch.tensor([row.input_ids]), position_ids=torch.tensor([row.position_ids]),
                       use_cache=False).logits[0]  # no cache: transformers then reads packing from position_ids
        start = 0
        for n in row.lengths:
            alone = model(input_ids=torch.tensor([row.input_ids[start:start + n]])).logits[0]
            assert torch.allclose(packed[start:start + n], alone, atol=1e-5)
            start += n


def test_split_keeps_a_question_s_samples_together():
    ex = [Example(None, "t", f"q{i // 3}", f"s{i}", "text") for i in range(30)]
    train, held = split_examples(ex, 0.2, seed=0)
    assert len(held) == 6 and {e.group for e in train}.isdisjoint({e.group for e in held})
    assert split_examples(ex, 0.2, seed=0) == (train, held) and split_examples(ex, 0.0, 0) == (ex, [])


# -- training ------------------------------------------------------------------------------------------


def initial_adapter(tiny, cfg):
    """The adapter weights before training: the same base, seed and LoRA config as the trainer's."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.target_modules,
                                             task_type="CAUSAL_LM"))
    return {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}


def adapter_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_lora_two_steps_change_every_adapter_weight(tiny, traces_file, tmp_path):
    from dca.distill.train import train

    cfg = cfg_for(tiny, traces_file, tmp_path / "run")
    result = train(cfg)
    before, after = initial_adapter(tiny, cfg), adapter_weights(cfg.out_dir)
    assert set(before) == set(after) and len(after) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    assert all(not torch.equal(before[k], after[k]) for k in after), [k for k in after if torch.equal(before[k], after[k])]
    h, kv, inter, r = 32, 2 * 32 // 4, 64, cfg.lora_r
    per_layer = r * ((h + h) + (h + kv) + (h + kv) + (h + h) + (h + inter) + (h + inter) + (inter + h))
    assert result.trainable_params == 2 * per_layer == sum(v.numel() for v in after.values())
    metrics = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2] and all(math.isfinite(m["loss"]) for m in metrics[1:])
    assert all(math.isfinite(m["eval_loss"]) for m in metrics) and all(m["tokens_per_s"] > 0 for m in metrics[1:])
    assert metrics[2]["eval_loss"] < metrics[0]["eval_loss"]  # two steps at lr 5e-3 already fit the held-out traces
    assert sorted(p.name for p in cfg.out_dir.iterdir()) == ["adapter", "checkpoints", "config.yaml", "loss.png",
                                                            "manifest.json", "metrics.jsonl"]
    assert sorted(p.name for p in (cfg.out_dir / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert {p.name for p in (cfg.out_dir / "checkpoints" / "step-2").iterdir()} == {
        "trainable.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
    manifest = json.loads((cfg.out_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["step"] == 2 and manifest["stats"]["eval_examples"] > 0
    adapter_cfg = json.loads((cfg.out_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny.resolve()) and adapter_cfg["r"] == 4
    assert (cfg.out_dir / "adapter" / "tokenizer.json").is_file()


def test_full_fine_tuning_trains_every_weight(tiny, traces_file, tmp_path):
    from safetensors.torch import load_file

    from dca.distill.train import train

    cfg = cfg_for(tiny, traces_file, tmp_path / "full", method="full", max_steps=1, eval_fraction=0.0)
    result = train(cfg)
    assert result.trainable_params == result.total_params and result.output.name == "model"
    before, after = load_file(tiny / "model.safetensors"), load_file(result.output / "model.safetensors")
    assert all(not torch.equal(before[k], after[k]) for k in before if "layernorm" not in k and "norm" not in k)


def test_selective_checkpointing_trains_the_same_weights_as_full_recomputation(tiny, traces_file, tmp_path,
                                                                              monkeypatch):
    import collections

    import torch.utils.checkpoint as checkpointing
    from safetensors.torch import load_file

    from dca.distill.train import train

    decisions = collections.Counter()
    real = checkpointing.create_selective_checkpoint_contexts

    def recording(policy, *args, **kwargs):
        def recorded(ctx, op, *a, **kw):
            verdict = policy(ctx, op, *a, **kw)
            width = a[-1].shape[-1] if "mm" in str(op) else None
            decisions[(str(op).split(".")[1], width, verdict.name)] += 1
            return verdict
        return real(recorded, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "create_selective_checkpoint_contexts", recording)
    weights = {}
    for policy in ("full", "selective"):
        cfg = cfg_for(tiny, traces_file, tmp_path / policy, method="full", max_steps=2, eval_fraction=0.0,
                      precision="fp32", checkpoint_policy=policy)
        weights[policy] = load_file(train(cfg).output / "model.safetensors")
    # hidden 32, MLP 64: q/o/down (32) and k/v (16) kept, gate/up (64) recomputed, attention kept
    kept = {(op, width) for op, width, verdict in decisions if verdict == "MUST_SAVE"}
    assert kept == {("mm", 32), ("mm", 16), ("_scaled_dot_product_flash_attention_for_cpu", None)}
    assert ("mm", 64, "PREFER_RECOMPUTE") in decisions
    before = load_file(tiny / "model.safetensors")
    for k, w in weights["full"].items():
        assert not torch.equal(w, before[k]) or "norm" in k
        assert torch.allclose(weights["selective"][k], w, atol=1e-6, rtol=1e-5), k
    with pytest.raises(ConfigError, match="--checkpoint-policy must be one of auto, full, selective"):
        cfg_for(tiny, traces_file, tmp_path / "x", checkpoint_policy="some")
    from dca.distill.train import checkpoint_policy

    auto = {(method, bf16): checkpoint_policy(cfg_for(tiny, traces_file, tmp_path / "x", method=method), bf16)
            for method in ("lora", "full") for bf16 in (False, True)}
    assert auto == {("lora", False): "full", ("lora", True): "selective", ("full", False): "selective",
                    ("full", True): "selective"}  # LoRA's fp32 products would take it past 3 GB


def test_a_finished_run_asked_for_more_steps_says_how_to_train_further(tiny, traces_file, tmp_path):
    from dca.distill.train import train

    train(cfg_for(tiny, traces_file, tmp_path / "lora", max_steps=1, eval_fraction=0.0))
    with pytest.raises(ConfigError, match=r"--max-steps was 1, now 2.*dca quant export .*lora -t F16"):
        train(cfg_for(tiny, traces_file, tmp_path / "lora", max_steps=2, eval_fraction=0.0))
    with pytest.raises(ConfigError, match="--lora-r was 4, now 8.*-o/--out-dir$"):  # no hint for other settings
        train(cfg_for(tiny, traces_file, tmp_path / "lora", max_steps=1, eval_fraction=0.0, lora_r=8))
    full = train(cfg_for(tiny, traces_file, tmp_path / "full", method="full", max_steps=1, eval_fraction=0.0))
    with pytest.raises(ConfigError, match=r"--max-steps was 1, now 2.*weights: -m \S*full/model$") as err:
        train(cfg_for(tiny, traces_file, tmp_path / "full", method="full", max_steps=2, eval_fraction=0.0))
    more = train(cfg_for(str(err.value).rsplit("-m ", 1)[1], traces_file, tmp_path / "more", method="full",
                         max_steps=1, eval_fraction=0.0))  # the hint's model loads and trains
    assert more.steps == 1 and more.first_loss < full.first_loss
    train(cfg_for(tiny, traces_file, tmp_path / "held", method="full", max_steps=1, eval_fraction=0.4, seed=3))
    with pytest.raises(ConfigError, match=r"weights: -m \S*held/model, with --seed 3 --eval-fraction 0.4 so that "
                                          r"the held-out questions stay ones it never trained on$"):
        train(cfg_for(tiny, traces_file, tmp_path / "held", method="full", max_steps=2, eval_fraction=0.4, seed=3))


def test_an_interrupted_run_resumes_to_the_same_weights_and_metrics(tiny, traces_file, tmp_path):
    from dca.distill.train import train

    kw = {"max_steps": 4, "lora_dropout": 0.1, "warmup_ratio": 0.25, "grad_accum": 2}
    whole = train(cfg_for(tiny, traces_file, tmp_path / "whole", **kw))

    def interrupt(p):
        if p.done == 2:
            raise KeyboardInterrupt

    cut = cfg_for(tiny, traces_file, tmp_path / "cut", save_every=10, **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cut, progress=interrupt)
    assert json.loads((cut.out_dir / "manifest.json").read_text())["status"] == "interrupted"
    assert (cut.out_dir / "checkpoints" / "step-2").is_dir()  # written on the interrupt
    resumed = train(cfg_for(tiny, traces_file, tmp_path / "cut", save_every=10, **kw))  # the same command again
    assert resumed.resumed_from == 2 and resumed.steps == 4
    a, b = adapter_weights(whole.run_dir), adapter_weights(resumed.run_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    ma = [json.loads(x) for x in (whole.run_dir / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in mb] == [0, 1, 2, 3, 4]
    assert [(m.get("lr"), round(m.get("loss") or 0, 6)) for m in ma] == [(m.get("lr"), round(m.get("loss") or 0, 6))
                                                                          for m in mb]
    for i in (0, -1):  # evaluated at both ends in both runs (the whole run also every step: --save-every 1)
        assert abs(ma[i]["eval_loss"] - mb[i]["eval_loss"]) < 1e-6
    again = train(cfg_for(tiny, traces_file, tmp_path / "cut", save_every=10, **kw))
    assert again.already_complete and again.steps == 4


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                      (False, True, "bf16")])
def test_auto_precision_is_bf16_on_cpus_that_compute_in_it(tiny, traces_file, tmp_path, monkeypatch,
                                                           avx512_bf16, amx, expected):
    from dca.distill.train import train

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cfg = cfg_for(tiny, traces_file, tmp_path / "run", max_steps=1, eval_fraction=0.0, device="cpu")
    assert cfg.precision == "auto"
    result = train(cfg)
    assert json.loads((cfg.out_dir / "manifest.json").read_text())["precision"] == expected
    assert result.loss is not None and math.isfinite(result.loss)


def test_cancel_writes_a_checkpoint_and_raises(tiny, traces_file, tmp_path):
    from dca.distill.train import train
    from dca.errors import Cancelled

    cfg = cfg_for(tiny, traces_file, tmp_path / "run", max_steps=3, save_every=10)
    with pytest.raises(Cancelled, match="cancelled at step 1 of 3"):
        train(cfg, cancel=lambda: True)
    assert json.loads((cfg.out_dir / "manifest.json").read_text())["status"] == "interrupted"
    assert [p.name for p in (cfg.out_dir / "checkpoints").iterdir()] == ["step-1"]
    assert not (cfg.out_dir / "adapter").exists()


@pytest.mark.slow
def test_lora_on_the_bundled_gguf(traces_file, tmp_path):
    from conftest import bundled_gguf

    from dca.distill.train import TrainConfig, train

    gguf = bundled_gguf()
    cfg = TrainConfig(data=[traces_file], out_dir=tmp_path / "run", max_steps=1, seq_len=256, batch_size=1,
                      lora_r=4, eval_fraction=0.0)
    result = train(cfg)
    assert result.loss is not None and math.isfinite(result.loss) and result.loss < 5  # a trained model, not random
    adapter_cfg = json.loads((result.output / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(gguf.resolve())
    assert json.loads((cfg.out_dir / "manifest.json").read_text())["base"]["kind"] == "gguf"


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory):
    """The tiny Llama exported to an F16 GGUF by dca's own exporter."""
    pytest.importorskip("gguf")
    from dca.quant import ExportConfig, export

    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny.F16.gguf"
    export(ExportConfig(source=tiny, qtype="F16", out=out))
    return out


def test_full_fine_tuning_on_a_gguf_base_saves_a_plain_model(tiny, tiny_gguf, traces_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from dca.distill.train import train

    result = train(cfg_for(str(tiny_gguf), traces_file, tmp_path / "full", method="full", max_steps=1,
                           eval_fraction=0.0, lr=1e-2))
    assert result.output == tmp_path / "full" / "model"
    saved = json.loads((result.output / "config.json").read_text())
    assert "quantization_config" not in saved  # transformers' gguf quantizer would make it unsaveable
    trained = AutoModelForCausalLM.from_pretrained(result.output)
    base = AutoModelForCausalLM.from_pretrained(tiny)
    w, w0 = trained.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight
    assert w.shape == w0.shape and not torch.allclose(w, w0, atol=1e-4)  # trained, not a copy of the base
    assert json.loads((tmp_path / "full" / "manifest.json").read_text())["base"] == {"path": str(tiny_gguf),
                                                                                   "kind": "gguf"}


def test_a_gguf_base_is_written_once_as_an_hf_dir_for_qlora(tiny, tiny_gguf, dca_home, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dca.distill.train import gguf_as_hf_dir
    from dca.errors import ModelError

    d = gguf_as_hf_dir(tiny_gguf)
    assert d.parent == dca_home / "hf-from-gguf" and d.name.startswith("tiny.F16-")
    assert "quantization_config" not in json.loads((d / "config.json").read_text())
    assert not any(p.name.startswith(".") for p in d.parent.iterdir())  # no temporary directory left
    ids = torch.tensor([[1, 5, 9, 40, 7]])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)(ids).logits
        ref = AutoModelForCausalLM.from_pretrained(tiny)(ids).logits
    assert torch.allclose(got, ref, atol=1e-3)  # float16 storage of an F16 GGUF: the same model
    text = "How many clips did Natalia sell?"
    assert AutoTokenizer.from_pretrained(d)(text).input_ids == AutoTokenizer.from_pretrained(tiny)(text).input_ids
    stamp = (d / "config.json").stat().st_mtime_ns
    assert gguf_as_hf_dir(tiny_gguf) == d and (d / "config.json").stat().st_mtime_ns == stamp  # reused

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_gguf.read_bytes()[:2000])
    with pytest.raises(ModelError, match=r"bad\.gguf: transformers could not load it"):
        gguf_as_hf_dir(bad)
    assert sorted(p.name for p in d.parent.iterdir()) == [d.name]  # nothing written for the bad file


def test_the_run_directory_is_guarded(tiny, traces_file, tmp_path):
    from dca.distill.train import train

    train(cfg_for(tiny, traces_file, tmp_path / "run", max_steps=1))
    with pytest.raises(ConfigError, match="--lora-r was 4, now 8.*--force"):
        train(cfg_for(tiny, traces_file, tmp_path / "run", max_steps=1, lora_r=8))
    redo = train(cfg_for(tiny, traces_file, tmp_path / "run", max_steps=1, lora_r=8, force=True))
    assert not redo.already_complete
    assert json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())["r"] == 8
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no dca training run"):
        train(cfg_for(tiny, traces_file, tmp_path / "foreign"))
    with pytest.raises(ConfigError, match="--resume: .* holds no run"):
        train(cfg_for(tiny, traces_file, tmp_path / "nothing", resume=True))


@pytest.mark.parametrize("kw,flag", [
    ({"lora_r": 0}, "--lora-r"), ({"seq_len": 4}, "--seq-len"), ({"method": "qat"}, "--method"),
    ({"method": "full", "qlora": True}, "--qlora"), ({"eval_fraction": 0.9}, "--eval-fraction"),
    ({"lr": -1.0}, "--lr"), ({"schedule": "step"}, "--schedule"), ({"resume": True, "force": True}, "--resume"),
    ({"eval_data": ["missing.jsonl"]}, "--eval-data"), ({"precision": "fp8"}, "--precision"),
])
def test_config_errors_name_the_flag(tiny, traces_file, tmp_path, kw, flag):
    with pytest.raises(ConfigError, match=flag):
        cfg_for(tiny, traces_file, tmp_path / "run", **kw)


def test_config_file_and_flags_resolve_into_train_config(tiny, traces_file, tmp_path):
    from dca.config import load_config
    from dca.distill.train import TrainConfig

    f = tmp_path / "train.yaml"
    f.write_text(f"data: [{traces_file}]\nlora_r: 8\ntarget_modules: q_proj,v_proj\nlr: 1.0e-3\n")
    c = load_config(TrainConfig, f, out_dir=tmp_path / "o", lr=2e-3, model=None)
    assert (c.lora_r, c.lr, c.target_modules, c.model) == (8, 2e-3, ["q_proj", "v_proj"], "smollm2-135m-instruct")
    assert TrainConfig(data=[traces_file], out_dir=tmp_path, method="full").lr == 2e-5


def test_qlora_is_guarded_without_bitsandbytes_or_cuda(tiny, traces_file, tmp_path, monkeypatch):
    from dca.distill.train import train

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(MissingDependencyError, match=r"dca\[qlora\]"):
        train(cfg_for(tiny, traces_file, tmp_path / "q", qlora=True, device="cpu"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    with pytest.raises(ConfigError, match="--qlora needs a CUDA GPU"):
        train(cfg_for(tiny, traces_file, tmp_path / "q", qlora=True, device="cpu"))


def test_learning_rate_schedule():
    from dca.distill.loop import lr_factor

    f = [lr_factor(s, 10, 2, "cosine", 0.1) for s in range(10)]
    assert f[:2] == [0.5, 1.0] and f[2] == 1.0 and abs(f[-1] - 0.1) < 1e-9 and all(a >= b for a, b in itertools.pairwise(f[1:]))
    assert [lr_factor(s, 4, 0, "linear", 0.0) for s in range(4)] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])


# -- command line --------------------------------------------------------------------------------------


def test_train_help_lists_the_options():
    result = CliRunner().invoke(app, ["distill", "train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for word in ("--method", "--qlora", "--lora-r", "--seq-len", "--no-packing", "--resume", "--force", "-c", "-o"):
        assert word in result.output, word


def test_train_command_runs_and_reports(tiny, traces_file, tmp_path):
    out = tmp_path / "cli-run"
    args = ["distill", "train", str(traces_file), "-o", str(out), "-m", str(tiny), "--max-steps", "2", "--lora-r", "4",
            "--seq-len", "128", "--batch-size", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2/2 steps" in result.output and str(out / "adapter") in result.output.replace("\n", "")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    result = CliRunner().invoke(app, args + ["--lora-r", "8"])
    assert result.exit_code == 1 and "--lora-r was 4, now 8" in result.output
    result = CliRunner().invoke(app, ["distill", "train", "-c", str(out / "config.yaml")])
    assert result.exit_code == 0 and "is complete (2/2 steps)" in result.output.replace("\n", " ")
    result = CliRunner().invoke(app, ["distill", "train", str(traces_file)])
    assert result.exit_code == 1 and "-o/--out-dir is missing" in result.output


def test_help_and_import_do_not_load_torch():
    import subprocess

    code = ("import sys, dca.cli, dca.distill.train, dca.pipeline, dca.distill.data\n"
            "from typer.testing import CliRunner\n"
            "for a in (['distill', 'train', '--help'], ['distill', 'run', '--help']):\n"
            "    assert CliRunner().invoke(dca.cli.app, a).exit_code == 0\n"
            "print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- a verifier: the same SFT code on Yes/No examples ---------------------------------------------------------


def _p_yes(model, tok, messages) -> float:
    """P(Yes) / (P(Yes) + P(No)) as the whole assistant answer, the score of dca.assistant.verifier.Verifier."""
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    logs = []
    for word in ("Yes", "No"):
        ids = tok(prompt + word + "<|im_end|>", add_special_tokens=False, return_tensors="pt").input_ids
        n = len(tok(prompt, add_special_tokens=False).input_ids)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        logs.append(sum(float(logp[i - 1, ids[0, i]]) for i in range(n, ids.shape[1])))
    return float(torch.softmax(torch.tensor(logs), 0)[0])


def test_verifier_training_moves_scores_toward_the_labels(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dca.distill.train import train
    from dca.distill.verifier import _orm_examples

    rows = [{"id": f"q{i}", "question": f"How many clips did Natalia sell? ({i})",
             "samples": [{"text": f"({i}) 48 + 24 = 72. So the answer is 72.", "correct": True},
                         {"text": f"({i}) 48 / 2 = 24. So the answer is 24.", "correct": False}]}
            for i in range(6)]
    examples = list(_orm_examples(rows))
    data = tmp_path / "orm.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    result = train(cfg_for(tiny, data, tmp_path / "verifier", method="full", max_steps=40, lr=1e-2,
                           eval_fraction=0.0, save_every=40))
    tok = AutoTokenizer.from_pretrained(tiny)

    def scores(model_dir) -> list[float]:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        return [_p_yes(model, tok, e["messages"][:-1]) for e in examples]

    labels = [e["label"] for e in examples]
    assert labels == [1, 0] * 6
    before, after = scores(tiny), scores(result.output)
    # the right solutions now score above the wrong ones, each of them (AUROC 1), by a margin the untrained
    # model did not have (its P(Yes) is near-constant: 'Yes' is a byte longer than 'No' in this tokenizer)

    def gap(ss):
        return sum(ss[0::2]) / 6 - sum(ss[1::2]) / 6

    assert min(after[0::2]) > max(after[1::2]), after
    assert gap(after) > gap(before) + 0.05, (gap(before), gap(after))
