#!/usr/bin/env bash
# Issue 20 on this CPU (benchmarks/README.md, "GRPO from the student on this CPU"): the issue-6 student trained by its
# recipe, a GRPO run from it (dca distill rl, TRL's GRPOTrainer), both exported to Q4_K_M GGUF and evaluated by dca
# eval (llama.cpp) on the first TEST_LIMIT GSM8K test questions, greedy and maj@K, compared by dca eval compare.
# Every step continues where it stopped: training and GRPO from their checkpoints, the evaluations with --resume, so
# the same command run again (in a later session) goes on; a finished step is skipped (benchmarks/_steps.sh).
#
#   IN=dir-with-kept-traces DATA=../shared/data WORK=runs/i20-cpu \
#       SAMPLES=runs/i20-cuda/star/iter-1/samples.jsonl bash benchmarks/grpo_cpu.sh
#
# IN holds gsm8k/kept.jsonl and qwen3-gsm8k/kept.jsonl (the issue-6 dca distill import/filter commands); DATA
# gsm8k_train.jsonl and gsm8k_test.jsonl. GRPO's questions: with SAMPLES (a dca distill star samples.jsonl of this
# student's recipe), the training questions with some but not all K samples right, where a GRPO group's rewards
# differ and so give a gradient (DAPO's dynamic sampling, Yu et al. 2025, arXiv 2503.14476, applied once, before
# training); without it, the same selection from K samples of the first GRPO_LIMIT training questions that this
# script draws from the student's GGUF (dca eval --samples K on gsm8k_train.jsonl: eval/student-train-maj8, 38 min
# for 500 here). BASE: the base model (the bundled one by default).
# STEPS > 0 caps the student's training and TEST_LIMIT/GRPO_STEPS can be made small: a dry run (in another WORK).
# SAMPLES is relative to the current directory; IN, DATA and WORK to the repository root. Outputs that depend on a
# setting carry it in their name (the GRPO questions' content hash, GRPO_STEPS), so a changed setting makes new files
# beside the old ones instead of reusing them; GRPO_STEPS may grow (the run continues from its last checkpoint).
set -euo pipefail
if [ -n "${SAMPLES:-}" ]; then SAMPLES=$(realpath "$SAMPLES"); fi
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python3 ]; then PATH=$PWD/.venv/bin:$PATH; fi
: "${IN:?the directory of the kept traces}"
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/i20-cpu}
TEST_LIMIT=${TEST_LIMIT:-500}
K=${K:-8}
STEPS=${STEPS:-0}
EVAL_EVERY=${EVAL_EVERY:-50}
GRPO_STEPS=${GRPO_STEPS:-40}
GRPO_QUESTIONS=${GRPO_QUESTIONS:-4}
GRPO_LR=${GRPO_LR:-5e-6}
GRPO_LIMIT=${GRPO_LIMIT:-500}
MAX_TOKENS=${MAX_TOKENS:-256}
source benchmarks/_steps.sh
base=(); if [ -n "${BASE:-}" ]; then base=(-m "$BASE"); fi

# 1. the issue-6 student: full fine-tuning, one epoch, batch 4 (fp32: this CPU emulates bf16), a checkpoint every
#    10 steps; 2. its Q4_K_M GGUF and its greedy answers
step student dca distill train "$IN/gsm8k/kept.jsonl" "$IN/qwen3-gsm8k/kept.jsonl" "${base[@]}" -o "$WORK/student" \
    --epochs 1 "${ISSUE6[@]}" --save-every 10 "${cap[@]}"
step student-gguf dca quant export "$WORK/student" -t Q4_K_M -o "$WORK/student.Q4_K_M.gguf" --force
EV=(dca eval --task gsm8k --data "$DATA/gsm8k_test.jsonl" --limit "$TEST_LIMIT" --resume)
step student-greedy "${EV[@]}" -m "$WORK/student.Q4_K_M.gguf" -o "$WORK/eval/student-greedy"

# 3. GRPO from the student (full, GRPO_QUESTIONS questions x K completions a step, a checkpoint every 5 steps)
if [ -z "${SAMPLES:-}" ]; then
    step student-train-maj dca eval --task gsm8k --data "$DATA/gsm8k_train.jsonl" --limit "$GRPO_LIMIT" --resume \
        -m "$WORK/student.Q4_K_M.gguf" -o "$WORK/eval/student-train-maj$K" --samples "$K"
    SAMPLES=$WORK/eval/student-train-maj$K/predictions.jsonl
fi
python3 - "$SAMPLES" "$K" "$WORK/grpo-questions.tmp.jsonl" <<'EOF'
import json, sys
samples, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [json.loads(line) for line in open(samples, encoding="utf-8")]
mixed = [r for r in rows if len(r["samples"]) >= k and 0 < sum(s["correct"] for s in r["samples"][:k]) < k]
with open(out, "w", encoding="utf-8") as f:  # a temporary name: the mv below gives it its final one whole
    for r in mixed:
        f.write(json.dumps({"id": r["id"], "question": r["question"], "gold": r["gold"]}) + "\n")
print(f"GRPO questions: {len(mixed)} of {len(rows)} with 1..{k - 1} of {k} samples right ({samples})")
EOF
Q="$WORK/grpo-questions-$(sha256sum < "$WORK/grpo-questions.tmp.jsonl" | cut -c1-12).jsonl"
mv "$WORK/grpo-questions.tmp.jsonl" "$Q"
step grpo dca distill rl "$Q" -m "$WORK/student/model" -o "$WORK/grpo" --method full \
    --samples "$K" --questions-per-step "$GRPO_QUESTIONS" --max-tokens "$MAX_TOKENS" --lr "$GRPO_LR" \
    --max-steps "$GRPO_STEPS" --save-every 5
R="grpo-s$GRPO_STEPS"  # the policy after GRPO_STEPS steps: its GGUF and evaluations
step "$R-gguf" dca quant export "$WORK/grpo" -t Q4_K_M -o "$WORK/$R.Q4_K_M.gguf" --force
step "$R-greedy" "${EV[@]}" -m "$WORK/$R.Q4_K_M.gguf" -o "$WORK/eval/$R-greedy"
dca eval compare "$WORK/eval/student-greedy" "$WORK/eval/$R-greedy" | tee "$WORK/eval/compare-$R-greedy.txt"

# 4. K samples of each test question (maj@K, pass@K), the student and the GRPO policy
step student-maj "${EV[@]}" -m "$WORK/student.Q4_K_M.gguf" -o "$WORK/eval/student-maj$K" --samples "$K"
step "$R-maj" "${EV[@]}" -m "$WORK/$R.Q4_K_M.gguf" -o "$WORK/eval/$R-maj$K" --samples "$K"
dca eval compare "$WORK/eval/student-maj$K" "$WORK/eval/$R-maj$K" | tee "$WORK/eval/compare-$R-maj$K.txt"
