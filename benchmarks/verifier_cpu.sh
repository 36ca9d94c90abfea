#!/usr/bin/env bash
# Issue 19 on this CPU (benchmarks/README.md, "GRPO from the student on this CPU"), after benchmarks/grpo_cpu.sh
# has finished in the same WORK (its student/model, student.Q4_K_M.gguf, eval/student-greedy and eval/student-maj8,
# its last evaluations): the verifiers' data from the student's own samples with each step labelled by rollouts
# (dca distill verifier --process), an outcome (ORM) and a process verifier (PRM) fine-tuned from the student, their
# AUROC on held-out training questions, the student's 8 test samples rescored by the ORM and by the PRM (its last
# step) (best-of-8, weighted voting; dca eval rescore), and PRM-guided step-level beam search; every choice against
# the greedy student by dca eval compare. All through dca's own CLI (llama.cpp sampling and scoring). Every step continues where it stopped.
#
#   DATA=../shared/data WORK=runs/i20-cpu QUESTIONS=$(ls runs/i20-cpu/grpo-questions-*.jsonl) bash benchmarks/verifier_cpu.sh
#
# QUESTIONS: the training questions the verifiers' data is sampled from (the first VDATA_LIMIT; default: GSM8K
# train), e.g. grpo_cpu.sh's questions with some but not all of K samples right, where choosing among samples
# matters; the last HELDOUT training questions are held out for the AUROC (and dropped from QUESTIONS). BEAM_WIDTH x
# EXPANSIONS next steps a step. STEPS > 0 caps each training run: a dry run (in another WORK). QUESTIONS is relative to
# the current directory; DATA and WORK to the repository root.
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
for name in student student-gguf student-greedy student-maj; do  # grpo_cpu.sh's steps this one reads
    [ -e "$WORK/.done-$name" ] || { echo "verifier_cpu.sh: grpo_cpu.sh's step $name has not finished in $WORK" \
        "($WORK/.done-$name is missing): run benchmarks/grpo_cpu.sh with WORK=$WORK first" >&2; exit 2; }
done

# 1. the verifiers' data: K samples of each question, each step labelled by ROLLOUTS rollouts; and the held-out
#    questions' samples (no rollouts: the AUROC needs outcome labels only)
H="$WORK/train-heldout-$HELDOUT.jsonl"
tail -n "$HELDOUT" "$DATA/gsm8k_train.jsonl" > "$H"
python3 - "$QUESTIONS" "$H" "$WORK/vdata-questions.tmp.jsonl" <<'EOF'
import json, os, sys
questions, heldout, out = sys.argv[1:]
held = {json.loads(line)["question"].strip() for line in open(heldout, encoding="utf-8") if line.strip()}
rows = [line.rstrip("\n") for line in open(questions, encoding="utf-8") if line.strip()]
kept = [line for line in rows if json.loads(line)["question"].strip() not in held]
with open(out + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(line + "\n" for line in kept)
os.replace(out + ".tmp", out)
print(f"verifier questions: {len(kept)} of {len(rows)} in {questions} ({len(rows) - len(kept)} held out)")
EOF
V="$WORK/vdata-questions-$(sha256sum < "$WORK/vdata-questions.tmp.jsonl" | cut -c1-12).jsonl"
mv "$WORK/vdata-questions.tmp.jsonl" "$V"
step vdata dca distill verifier "$V" -m "$G" -o "$WORK/vdata" --samples "$K" --limit "$VDATA_LIMIT" \
    --max-tokens 256 --process --rollouts "$ROLLOUTS" --max-wrong 4
step heldout dca distill verifier "$H" -m "$G" -o "$WORK/vdata-heldout-$HELDOUT" --samples "$K" --max-tokens 256

# 2. the ORM and the PRM, fine-tuned from the student on its labelled samples and steps, exported to Q8_0 (16 rows a
#    step as on the GPU, in micro-batches of 4: 16 rows of 1,024 tokens at once would need ~20 GB in fp32 here)
for v in orm prm; do
    step "$v" dca distill train "$WORK/vdata/$v.jsonl" -m "$S" -o "$WORK/$v" --method full --precision auto \
        --seq-len 1024 --batch-size 4 --grad-accum 4 --no-gradient-checkpointing --epochs 1 --lr 2e-5 --seed 3 \
        --eval-fraction 0.02 --eval-every "$EVAL_EVERY" --save-every 10 "${cap[@]}"
    step "$v-gguf" dca quant export "$WORK/$v" -t Q8_0 -o "$WORK/$v.Q8_0.gguf" --force
done

# 3. AUROC and choices on the held-out questions' samples
step auroc python3 benchmarks/verifier_auroc.py "$WORK/vdata-heldout-$HELDOUT" --verifier "$WORK/orm.Q8_0.gguf" \
    --prm "$WORK/prm.Q8_0.gguf" --json-out "$WORK/auroc.json"

# 4. the student's K test samples judged by the ORM: best-of-K and ORM-weighted voting
step rescore dca eval rescore "$WORK/eval/student-maj$K" --verifier "$WORK/orm.Q8_0.gguf" -o "$WORK/eval/student-orm$K" \
    --resume
step rescore-prm dca eval rescore "$WORK/eval/student-maj$K" --verifier "$WORK/prm.Q8_0.gguf" --process-verifier \
    -o "$WORK/eval/student-prm$K" --resume
# 5. PRM beam search: BEAM_WIDTH partial solutions, EXPANSIONS next steps each, per step
step beam dca eval --task gsm8k --data "$DATA/gsm8k_test.jsonl" --limit "$TEST_LIMIT" -m "$G" --strategy beam_search \
    --verifier "$WORK/prm.Q8_0.gguf" --beam-width "$BEAM_WIDTH" --expansions "$EXPANSIONS" \
    -o "$WORK/eval/student-beam${BEAM_WIDTH}x$EXPANSIONS" --resume
dca eval compare "$WORK/eval/student-greedy" "$WORK/eval/student-orm$K" --pair "accuracy:maj@$K" \
    --pair "accuracy:best_of_n@$K" --pair "accuracy:weighted_vote@$K" --pair "accuracy:pass@$K" \
    | tee "$WORK/eval/compare-orm$K.txt"
dca eval compare "$WORK/eval/student-greedy" "$WORK/eval/student-prm$K" --pair "accuracy:maj@$K" \
    --pair "accuracy:best_of_n@$K" --pair "accuracy:weighted_vote@$K" --pair "accuracy:pass@$K" \
    | tee "$WORK/eval/compare-prm$K.txt"
dca eval compare "$WORK/eval/student-greedy" "$WORK/eval/student-beam${BEAM_WIDTH}x$EXPANSIONS" \
    | tee "$WORK/eval/compare-beam.txt"
