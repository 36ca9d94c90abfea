"""Several processes under ``accelerate launch --cpu`` (gloo): the same training as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from test_distill_train import tiny, traces_file  # noqa: F401  (the tiny Llama and its traces, shared)

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--cpu",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dca.cli"]


def run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)]


@pytest.mark.slow
def test_two_processes_reach_the_losses_of_one_with_the_same_global_batch(tiny, traces_file, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    common = ["distill", "train", str(traces_file), "-m", str(tiny), "--method", "full", "--max-steps", "4",
              "--batch-size", "1", "--grad-accum", "4", "--seq-len", "64", "--eval-fraction", "0", "--lr", "1e-2",
              "--no-gradient-checkpointing", "--no-packing"]
    run([sys.executable, "-m", "dca.cli", *common, "-o", str(tmp_path / "one")], tmp_path)
    run([*LAUNCH, *common, "-o", str(tmp_path / "two")], tmp_path)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    # tolerance: the two sum the same per-row gradients in another order (fp32), nothing else differs
    assert two == pytest.approx(one, abs=1e-4)
    assert one[-1] < one[0]  # it learned, so equal losses are not equal by standing still
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["step"] == 4


@pytest.mark.slow
def test_grpo_runs_under_two_processes(tiny, tmp_path):  # noqa: F811
    pytest.importorskip("trl")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "gold": str(i + 1)})
                                 + "\n" for i in range(4)))
    out = tmp_path / "rl"
    run([*LAUNCH, "distill", "rl", str(questions), "-m", str(tiny), "-o", str(out), "--method", "full",
         "--samples", "2", "--questions-per-step", "1", "--max-tokens", "8", "--max-steps", "2", "--save-every", "1",
         "--system-prompt", ""], tmp_path)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # written once, by the main process
    assert all(0.0 <= r["accuracy"] <= 1.0 and "reward" in r for r in rows)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert (out / "model" / "config.json").exists()
