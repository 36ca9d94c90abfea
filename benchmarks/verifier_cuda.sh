#!/usr/bin/env bash
# Issue 19 on a CUDA machine (benchmarks/README.md, "Calculator, verifiers and search"): the issue-6 student
# retrained with GSM8K's calculator notes kept, greedy on the test questions, the verifier's data from the student's
# own samples, an outcome verifier (ORM) fine-tuned from the student, and k samples chosen by majority, best-of-k and
# verifier-weighted voting; the ORM's AUROC on held-out training questions. Every step's seconds in the log.
#
#   IN=dir-with-kept-traces BASE=SmolLM2-135M-Instruct.Q4_1.gguf DATA=../shared/data WORK=runs/i19-cuda \
#       bash benchmarks/verifier_cuda.sh
#
# IN holds gsm8k-notes/kept.jsonl and qwen3-gsm8k/kept.jsonl (the README's dca distill import/filter commands);
# DATA gsm8k_train.jsonl and gsm8k_test.jsonl. The last HELDOUT training questions are kept out of the ORM's data
# (the student saw them, as it saw every training question). STEPS > 0 caps each training run (a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${IN:?the directory of the kept traces}" "${BASE:?the base GGUF}"
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/i19-cuda}
VDATA_LIMIT=${VDATA_LIMIT:-1500}
HELDOUT=${HELDOUT:-300}
TEST_LIMIT=${TEST_LIMIT:-500}
K=${K:-8}
STEPS=${STEPS:-0}
TOOLS=${TOOLS:-}  # calculator: its replies written into the samples (verifier data and the k test samples)
EVAL_EVERY=${EVAL_EVERY:-100}
source benchmarks/_steps.sh
tools=(); [ -n "$TOOLS" ] && tools=(--tools "$TOOLS")

# 1. the student: the issue-6 recipe (full fine-tuning, one epoch, batch 4) on the traces with the notes kept
step student dca distill train "$IN/gsm8k-notes/kept.jsonl" "$IN/qwen3-gsm8k/kept.jsonl" -m "$BASE" -o "$WORK/student" \
    --epochs 1 "${ISSUE6[@]}" "${ONE_CALL[@]}"
S="$WORK/student/model"

# 2. greedy on the test questions
step greedy python3 benchmarks/verifier_cuda.py eval "$DATA/gsm8k_test.jsonl" -m "$S" -o "$WORK/eval/greedy" \
    --limit "$TEST_LIMIT" --force

# 3. the verifier's data: k samples of the first VDATA_LIMIT training questions, and of the last HELDOUT
n=$(grep -c . "$DATA/gsm8k_train.jsonl")
head -n $(( n - HELDOUT )) "$DATA/gsm8k_train.jsonl" > "$WORK/train-head.jsonl"
tail -n "$HELDOUT" "$DATA/gsm8k_train.jsonl" > "$WORK/train-heldout.jsonl"
step vdata python3 benchmarks/verifier_cuda.py data "$WORK/train-head.jsonl" -m "$S" -o "$WORK/vdata" --samples "$K" \
    --limit "$VDATA_LIMIT" --max-tokens 256 --max-wrong 4 --force "${tools[@]}"
step heldout python3 benchmarks/verifier_cuda.py data "$WORK/train-heldout.jsonl" -m "$S" -o "$WORK/vdata-heldout" \
    --samples "$K" --max-tokens 256 --max-wrong 4 --force "${tools[@]}"

# 4. the outcome verifier, fine-tuned from the student on its own labelled samples
step orm dca distill train "$WORK/vdata/orm.jsonl" -m "$S" -o "$WORK/orm" --method full --precision auto \
    --seq-len 1024 --batch-size 16 --grad-accum 1 --no-gradient-checkpointing --epochs 1 --lr 2e-5 --seed 3 \
    --eval-fraction 0.02 --eval-every "$EVAL_EVERY" --save-every 100000 --force "${cap[@]}"

# 5. k samples of each test question: majority (maj@k), best-of-k and verifier-weighted voting, pass@k
step wv python3 benchmarks/verifier_cuda.py eval "$DATA/gsm8k_test.jsonl" -m "$S" -o "$WORK/eval/wv$K" \
    --limit "$TEST_LIMIT" --samples "$K" --verifier "$WORK/orm/model" --strategy weighted_vote --force "${tools[@]}"

# 6. the ORM's AUROC and choices on the held-out training questions
step auroc python3 benchmarks/verifier_cuda.py auroc "$WORK/vdata-heldout" --verifier "$WORK/orm/model" \
    --json-out "$WORK/auroc.json"

# 7. (EPOCHS3=1) the same student trained for three epochs: greedy and maj@k, the ORM of step 4 choosing too
if [ "${EPOCHS3:-0}" = 1 ]; then
    step student3 dca distill train "$IN/gsm8k-notes/kept.jsonl" "$IN/qwen3-gsm8k/kept.jsonl" -m "$BASE" \
        -o "$WORK/student3" --epochs 3 "${ISSUE6[@]}" "${ONE_CALL[@]}"
    step greedy3 python3 benchmarks/verifier_cuda.py eval "$DATA/gsm8k_test.jsonl" -m "$WORK/student3/model" \
        -o "$WORK/eval/greedy-3ep" --limit "$TEST_LIMIT" --force
    step wv3 python3 benchmarks/verifier_cuda.py eval "$DATA/gsm8k_test.jsonl" -m "$WORK/student3/model" \
        -o "$WORK/eval/wv$K-3ep" --limit "$TEST_LIMIT" --samples "$K" --verifier "$WORK/orm/model" \
        --strategy weighted_vote --force
fi
