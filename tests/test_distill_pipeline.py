"""``dca distill run``: the chain import -> filter -> train -> export from one YAML, stages skipped when up to date."""

from __future__ import annotations

import json

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")

from test_distill_train import tiny  # noqa: F401  (the tiny Llama fixture, shared)
from typer.testing import CliRunner

from dca.cli import app
from dca.errors import ConfigError


@pytest.fixture
def gsm8k(tmp_path):
    p = tmp_path / "gsm8k.jsonl"
    rows = [{"question": f"Natalia sold {n} clips in April and half as many in May. How many clips in all?",
             "answer": f"She sold {n}/2 = <<{n}/2={n // 2}>>{n // 2} in May.\nIn all {n}+{n // 2} = {n * 3 // 2}.\n"
                       f"#### {n * 3 // 2}"} for n in range(10, 26, 2)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def write_config(path, tiny, gsm8k, out, **train):
    cfg = {"out_dir": str(out), "import_traces": {"src": str(gsm8k)}, "filter": {"max_per_question": 1},
           "train": {"model": str(tiny), "max_steps": 1, "lora_r": 4, "seq_len": 128, "batch_size": 2,
                     "eval_fraction": 0.0, **train},
           "export": {"qtype": "F32"}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def load(path):
    from dca.config import load_config
    from dca.pipeline import PipelineConfig

    return load_config(PipelineConfig, path)


def test_the_chain_runs_once_then_skips_what_is_up_to_date(tiny, gsm8k, tmp_path):
    from dca.pipeline import run_pipeline

    out = tmp_path / "chain"
    path = write_config(tmp_path / "chain.yaml", tiny, gsm8k, out)
    first = run_pipeline(load(path))
    assert [(s.stage, s.action) for s in first.stages] == [("import_traces", "ran"), ("filter", "ran"),
                                                           ("train", "ran"), ("export", "ran")]
    assert "kept 8 of 8 traces" in first.stages[1].summary
    for name in ("traces.jsonl", "sft.jsonl", "sft.report", "train/adapter/adapter_config.json", "model.F32.gguf",
                 "import_traces.stamp.json", "filter.stamp.json", "train.stamp.json", "export.stamp.json"):
        assert (out / name).exists(), name
    stamp = json.loads((out / "train.stamp.json").read_text())
    assert stamp["status"] == "done" and stamp["settings"]["lora_r"] == 4 and len(stamp["hash"]) == 64
    assert stamp["inputs"][0] == str(out / "sft.jsonl")

    again = run_pipeline(load(path))
    assert [s.action for s in again.stages] == ["skipped"] * 4

    write_config(path, tiny, gsm8k, out, lora_r=8)  # a train setting changed: train and what follows rerun
    changed = run_pipeline(load(path))
    assert [s.action for s in changed.stages] == ["skipped", "skipped", "ran", "ran"]
    assert json.loads((out / "train" / "adapter" / "adapter_config.json").read_text())["r"] == 8

    gsm8k.write_text(gsm8k.read_text().replace("Natalia", "Nadia"))  # the source changed: everything reruns
    assert [s.action for s in run_pipeline(load(path)).stages] == ["ran"] * 4


def test_quantize_stage_follows_a_full_precision_export(tiny, gsm8k, tmp_path):  # noqa: F811
    pytest.importorskip("llama_cpp")
    from gguf import GGUFReader

    from dca.pipeline import run_pipeline

    path = write_config(tmp_path / "c.yaml", tiny, gsm8k, tmp_path / "q")
    data = yaml.safe_load(path.read_text())
    data["export"] = {"qtype": "F16"}
    data["quantize"] = {"qtype": "q8_0", "output_tensor_type": "f16"}
    path.write_text(yaml.safe_dump(data))
    report = run_pipeline(load(path))
    assert [s.stage for s in report.stages][-2:] == ["export", "quantize"]
    gguf = tmp_path / "q" / "model.Q8_0.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF" and (tmp_path / "q" / "model.F16.gguf").is_file()
    types = {t.name: t.tensor_type.name for t in GGUFReader(gguf).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["output.weight"] == "F16"
    from dca.paths import sha256_file
    from dca.quant import read_manifest

    manifest, exported = read_manifest(gguf), read_manifest(tmp_path / "q" / "model.F16.gguf")
    assert (manifest["gguf"], manifest["quant_type"], manifest["intermediate_type"]) == ("model.Q8_0.gguf", "Q8_0", "F16")
    assert manifest["source"] == exported["source"] and manifest["sha256"] == sha256_file(gguf)  # quant check finds it
    assert [s.action for s in run_pipeline(load(path)).stages] == ["skipped"] * 5
    data["quantize"]["token_embedding_type"] = "Q4_K_M"  # a file type: refused when the config loads
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="quantize.token_embedding_type Q4_K_M: .*file type"):
        load(path)


def test_a_full_fine_tuning_chain_exports_the_trained_model(tiny, gsm8k, tmp_path):
    from gguf import GGUFReader
    from safetensors.torch import load_file

    from dca.pipeline import run_pipeline

    out = tmp_path / "full"
    path = write_config(tmp_path / "full.yaml", tiny, gsm8k, out, method="full", lr=1e-3)
    report = run_pipeline(load(path))
    assert [(s.stage, s.action) for s in report.stages][-2:] == [("train", "ran"), ("export", "ran")]
    assert not (out / "train" / "adapter").exists()
    trained, base = load_file(out / "train" / "model" / "model.safetensors"), load_file(tiny / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(trained[name], base[name])
    tensors = {t.name: t for t in GGUFReader(out / "model.F32.gguf").tensors}
    exported = torch.from_numpy(tensors["blk.1.ffn_down.weight"].data.copy()).reshape(trained[name].shape)
    assert torch.equal(exported, trained[name].float())  # the export is the fine-tuned model, not the base


def test_an_interrupted_training_stage_continues(tiny, gsm8k, tmp_path):
    from dca.pipeline import run_pipeline

    out = tmp_path / "chain"
    path = write_config(tmp_path / "chain.yaml", tiny, gsm8k, out, max_steps=3)

    events = []

    def stop_at_two(event):
        events.append((event.job, event.event))
        if event.job == "train" and event.unit == "steps" and event.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load(path), progress=stop_at_two)
    assert json.loads((out / "train.stamp.json").read_text())["status"] == "running"
    marks = [e for e in events if e[1] != "update"]
    assert marks[:3] == [("import_traces", "start"), ("import_traces", "done"), ("filter", "start")]
    assert ("import_traces", "update") in events and ("train", "start") in events
    report = run_pipeline(load(path))
    assert [s.action for s in report.stages] == ["skipped", "skipped", "continued", "ran"]
    assert json.loads((out / "train" / "manifest.json").read_text())["step"] == 3
    assert [json.loads(x)["step"] for x in (out / "train" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("change,message", [
    ({"train": {"lora_r": 0}}, "train: --lora-r must be"),
    ({"train": {"bogus": 1}}, r"train: unknown setting\(s\) bogus"),
    ({"generate": {"questions": "q.jsonl", "teacher": "gguf"}}, "one source of traces"),
    ({"eval": {"task": "gsm8k", "data": "x.jsonl"}, "export": None}, "add an export section"),
    ({"train": None}, "add a train section"),
    ({"quantize": {"qtype": "Q4_K_M"}, "export": {"qtype": "Q8_0"}}, "set export.qtype to one of"),
])
def test_config_errors_name_the_section_and_setting(tiny, gsm8k, tmp_path, change, message):
    path = write_config(tmp_path / "c.yaml", tiny, gsm8k, tmp_path / "o")
    data = yaml.safe_load(path.read_text())
    for k, v in change.items():
        if v is None:
            data.pop(k)
        elif isinstance(data.get(k), dict):
            data[k].update(v)
        else:
            data[k] = v
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_run_command(tiny, gsm8k, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["distill", "run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--force" in result.output and "import_traces" in result.output
    path = write_config(tmp_path / "c.yaml", tiny, gsm8k, tmp_path / "unused")
    result = runner.invoke(app, ["distill", "run", str(path), "-o", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "export" in result.output and (tmp_path / "cli" / "model.F32.gguf").is_file()
    result = runner.invoke(app, ["distill", "run", str(path), "-o", str(tmp_path / "cli")])
    assert result.exit_code == 0 and result.output.count("skipped") >= 4


def test_an_eval_stage_hashes_the_settings_chains_made_before_the_assistant_settings_moved(tmp_path):
    from dca.eval import EvalConfig

    data = tmp_path / "g.jsonl"
    data.write_text('{"question": "q", "answer": "#### 1"}\n')
    cfg = EvalConfig(task="gsm8k", data=data, model="m.gguf", out_dir=tmp_path / "eval", limit=5, max_tokens=64)
    # the fields EvalConfig had until its assistant settings were declared once: a stamp of that time still matches
    assert cfg.settings() == {
        "task": "gsm8k", "data": data, "limit": 5, "model": "m.gguf", "store_dir": None, "effort": None, "samples": 1,
        "out_dir": tmp_path / "eval", "think": None, "thinking_budget": None, "max_tokens": 64, "temperature": None,
        "sample_temperature": None, "top_k": None, "repeat_penalty": None, "context_sentences": None, "quote": None}
    assert EvalConfig(task="gsm8k", data=data, vote="logprob").settings()["vote"] == "logprob"  # newer ones added
