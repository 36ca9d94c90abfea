#!/usr/bin/env bash
# Issue 20 on a CUDA machine (benchmarks/README.md, "STaR on a GPU"): the issue-6 student trained again by its own
# recipe, one STaR iteration from it (dca distill star's loop, its samples and rationalizations drawn in batches by
# benchmarks/verifier_cuda.py), and both models on the first TEST_LIMIT GSM8K test questions, greedy and maj@K.
#
#   IN=dir-with-kept-traces BASE=SmolLM2-135M-Instruct.Q4_1.gguf DATA=../shared/data WORK=runs/i20-cuda \
#       bash benchmarks/star_cuda.sh
#
# IN holds gsm8k/kept.jsonl and qwen3-gsm8k/kept.jsonl (the issue-6 dca distill import/filter commands); DATA
# gsm8k_train.jsonl and gsm8k_test.jsonl. STAR_LIMIT: the first N training questions sampled (STAR=0 skips STaR).
# GRPO_STEPS > 0 adds a GRPO run from the student (dca distill rl, TRL's GRPOTrainer: GRPO_QUESTIONS questions x K
# completions a step; TRL and datasets carried as wheels). STEPS > 0 caps each training run (a dry run).
# PACK=FILE.tgz, the step markers and the recipe: benchmarks/_steps.sh. STaR and GRPO continue where they
# stopped.
set -euo pipefail
if [ -n "${PACK:-}" ]; then PACK=$(realpath -m "$PACK"); fi
cd "$(dirname "$0")/.."
: "${IN:?the directory of the kept traces}" "${BASE:?the base GGUF}"
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/i20-cuda}
STAR_LIMIT=${STAR_LIMIT:-2000}
TEST_LIMIT=${TEST_LIMIT:-500}
K=${K:-8}
STEPS=${STEPS:-0}
MAX_TOKENS=${MAX_TOKENS:-256}
STAR_LR=${STAR_LR:-2e-5}
EVAL_EVERY=${EVAL_EVERY:-100}
STAR=${STAR:-1}
GRPO_STEPS=${GRPO_STEPS:-0}
GRPO_QUESTIONS=${GRPO_QUESTIONS:-16}
source benchmarks/_steps.sh

# 1. the issue-6 student: full fine-tuning, one epoch, batch 4, on the GSM8K traces and the Qwen3 traces
step student dca distill train "$IN/gsm8k/kept.jsonl" "$IN/qwen3-gsm8k/kept.jsonl" -m "$BASE" -o "$WORK/student" \
    --epochs 1 "${ISSUE6[@]}" "${ONE_CALL[@]}"
S="$WORK/student/model"
T="$WORK/star/iter-1/train/model"
ev() { python3 benchmarks/verifier_cuda.py eval "$DATA/gsm8k_test.jsonl" --limit "$TEST_LIMIT" --force "$@"; }

# 2. the student, greedy; 3. one STaR iteration from it (fine-tuning from its weights), greedy
step greedy ev -m "$S" -o "$WORK/eval/student-greedy"
if [ "$STAR" = 1 ]; then
    step star python3 benchmarks/verifier_cuda.py star "$DATA/gsm8k_train.jsonl" -m "$S" -o "$WORK/star" \
        --samples "$K" --limit "$STAR_LIMIT" --max-tokens "$MAX_TOKENS" --lr "$STAR_LR" "${cap[@]}"
    step star-greedy ev -m "$T" -o "$WORK/eval/star1-greedy"
fi

# 4. with K samples (maj@K, pass@K)
step maj ev -m "$S" -o "$WORK/eval/student-maj$K" --samples "$K"
if [ "$STAR" = 1 ]; then step star-maj ev -m "$T" -o "$WORK/eval/star1-maj$K" --samples "$K"; fi

# 5. (GRPO_STEPS > 0) GRPO from the student, greedy and maj@K
if [ "$GRPO_STEPS" -gt 0 ]; then
    step grpo dca distill rl "$DATA/gsm8k_train.jsonl" -m "$S" -o "$WORK/grpo" --method full --samples "$K" \
        --questions-per-step "$GRPO_QUESTIONS" --max-tokens "$MAX_TOKENS" --max-steps "$GRPO_STEPS" \
        --save-every 100000
    step grpo-greedy ev -m "$WORK/grpo/model" -o "$WORK/eval/grpo-greedy"
    step grpo-maj ev -m "$WORK/grpo/model" -o "$WORK/eval/grpo-maj$K" --samples "$K"
fi
