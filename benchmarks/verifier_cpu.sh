#!/usr/bin/env bash
# Issue 19 on this CPU (benchmarks/README.md, "Verifiers and PRM beam search on this CPU"), after benchmarks/grpo_cpu.sh
# has trained the issue-6 student in the same WORK (student/model, student.Q4_K_M.gguf, eval/student-greedy and
# eval/student-maj8): the verifiers' data from the student's own samples with each step labelled by rollouts
# (dca distill verifier --process), an outcome (ORM) and a process verifier (PRM) fine-tuned from the student, their
# AUROC on held-out training questions, the student's 8 test samples rescored by the ORM (best-of-8, weighted voting;
# dca eval rescore), and PRM-guided step-level beam search; every choice against the greedy student by dca eval
# compare. All through dca's own CLI (llama.cpp sampling and scoring). Every step continues where it stopped.
#
#   DATA=../shared/data WORK=runs/i20-cpu QUESTIONS=runs/i20-cpu/grpo-questions.jsonl bash benchmarks/verifier_cpu.sh
#
# QUESTIONS: the training questions the verifiers' data is sampled from (the first VDATA_LIMIT; default: GSM8K
# train), e.g. grpo_cpu.sh's questions with some but not all of K samples right, where choosing among samples
# matters; the last HELDOUT training questions are held out for the AUROC. BEAM_WIDTH x EXPANSIONS next steps a step.
# STEPS > 0 caps each training run: a dry run.
set -euo pipefail
if [ -n "${QUESTIONS:-}" ]; then QUESTIONS=$(realpath "$QUESTIONS"); fi
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python3 ]; then PATH=$PWD/.venv/bin:$PATH; fi
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/i20-cpu}
QUESTIONS=${QUESTIONS:-$DATA/gsm8k_train.jsonl}
VDATA_LIMIT=${VDATA_LIMIT:-300}
HELDOUT=${HELDOUT:-300}
TEST_LIMIT=${TEST_LIMIT:-500}
K=${K:-8}
ROLLOUTS=${ROLLOUTS:-4}
BEAM_WIDTH=${BEAM_WIDTH:-2}
EXPANSIONS=${EXPANSIONS:-4}
STEPS=${STEPS:-0}
EVAL_EVERY=${EVAL_EVERY:-50}
source benchmarks/_steps.sh
S="$WORK/student/model" G="$WORK/student.Q4_K_M.gguf"
for f in "$S" "$G" "$WORK/eval/student-greedy" "$WORK/eval/student-maj$K"; do
    [ -e "$f" ] || { echo "verifier_cpu.sh: $f is missing: run benchmarks/grpo_cpu.sh with WORK=$WORK first" >&2; exit 2; }
done

# 1. the verifiers' data: K samples of each question, each step labelled by ROLLOUTS rollouts; and the held-out
#    questions' samples (no rollouts: the AUROC needs outcome labels only)
step vdata dca distill verifier "$QUESTIONS" -m "$G" -o "$WORK/vdata" --samples "$K" --limit "$VDATA_LIMIT" \
    --max-tokens 256 --process --rollouts "$ROLLOUTS" --max-wrong 4
tail -n "$HELDOUT" "$DATA/gsm8k_train.jsonl" > "$WORK/train-heldout.jsonl"
step heldout dca distill verifier "$WORK/train-heldout.jsonl" -m "$G" -o "$WORK/vdata-heldout" --samples "$K" \
    --max-tokens 256

# 2. the ORM and the PRM, fine-tuned from the student on its labelled samples and steps, exported to Q8_0
for v in orm prm; do
    step "$v" dca distill train "$WORK/vdata/$v.jsonl" -m "$S" -o "$WORK/$v" --method full --precision auto \
        --seq-len 1024 --batch-size 16 --grad-accum 1 --no-gradient-checkpointing --epochs 1 --lr 2e-5 --seed 3 \
        --eval-fraction 0.02 --eval-every "$EVAL_EVERY" --save-every 10 "${cap[@]}"
    step "$v-gguf" dca quant export "$WORK/$v" -t Q8_0 -o "$WORK/$v.Q8_0.gguf" --force
done

# 3. AUROC and choices on the held-out questions' samples
step auroc python3 benchmarks/verifier_auroc.py "$WORK/vdata-heldout" --verifier "$WORK/orm.Q8_0.gguf" \
    --prm "$WORK/prm.Q8_0.gguf" --json-out "$WORK/auroc.json"

# 4. the student's K test samples judged by the ORM: best-of-K and ORM-weighted voting
step rescore dca eval rescore "$WORK/eval/student-maj$K" --verifier "$WORK/orm.Q8_0.gguf" -o "$WORK/eval/student-orm$K" \
    --resume
# 5. PRM beam search: BEAM_WIDTH partial solutions, EXPANSIONS next steps each, per step
step beam dca eval --task gsm8k --data "$DATA/gsm8k_test.jsonl" --limit "$TEST_LIMIT" -m "$G" --strategy beam_search \
    --verifier "$WORK/prm.Q8_0.gguf" --beam-width "$BEAM_WIDTH" --expansions "$EXPANSIONS" \
    -o "$WORK/eval/student-beam${BEAM_WIDTH}x$EXPANSIONS" --resume
dca eval compare "$WORK/eval/student-greedy" "$WORK/eval/student-orm$K" --pair "accuracy:maj@$K" \
    --pair "accuracy:best_of_n@$K" --pair "accuracy:weighted_vote@$K" --pair "accuracy:pass@$K" \
    | tee "$WORK/eval/compare-orm$K.txt"
dca eval compare "$WORK/eval/student-greedy" "$WORK/eval/student-beam${BEAM_WIDTH}x$EXPANSIONS" \
    | tee "$WORK/eval/compare-beam.txt"
