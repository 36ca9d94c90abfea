# Shared by verifier_cuda.sh, star_cuda.sh and grpo_cpu.sh (sourced after WORK, STEPS and EVAL_EVERY are set, from the
# repo root, with the python3 that has dca's dependencies first on PATH).
#   dca ARGS...       the dca CLI of this checkout (python3 -c, no install needed)
#   step NAME CMD...  runs CMD unless an earlier run finished the same CMD (WORK/.done-NAME holds it), so a rerun
#                     continues and a changed setting runs the step again; then packs the results (PACK)
#   ISSUE6            the issue-6 student's recipe (full fine-tuning, batch 4, lr 5e-5); add --epochs, the data and
#                     how the run checkpoints: ONE_CALL, or --save-every N for a run that continues over sessions
#   ONE_CALL          a training run made within one device call: no checkpoints, a rerun starts it over; and cap
#   cap               --max-steps STEPS when STEPS > 0 (a dry run)
# PACK=FILE.tgz: after each step the small results under WORK (evals, reports, samples, logs; no weights) go there.
mkdir -p "$WORK"
dca() { python3 -c 'import sys; from dca.cli import main; sys.argv[0] = "dca"; sys.exit(main())' "$@"; }
pack() {
    [ -n "${PACK:-}" ] || return 0
    (cd "$WORK" && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' \
        -o -name '*.yaml' \) -not -path '*/model/*' -not -path '*/checkpoint*' -print0 \
        | tar -czf "$PACK.tmp" --null -T - && mv "$PACK.tmp" "$PACK")
}
step() {
    local name=$1 s=$SECONDS; shift
    if [ -e "$WORK/.done-$name" ] && [ "$(cat "$WORK/.done-$name")" = "$*" ]; then
        echo "== $name: done earlier"; return
    fi
    echo "== $name: $*"; "$@"; printf '%s' "$*" > "$WORK/.done-$name"; echo "== $name: $(( SECONDS - s )) s"; pack
}
cap=(); if [ "$STEPS" -gt 0 ]; then cap=(--max-steps "$STEPS"); fi
PROMPT=$(python3 -c 'from dca.assistant.config import GSM8K_SYSTEM_PROMPT as p; print(p)')
ISSUE6=(--method full --precision auto --seq-len 1024 --batch-size 4 --grad-accum 1 --no-gradient-checkpointing
        --lr 5e-5 --seed 2 --eval-fraction 0.005 --eval-every "$EVAL_EVERY" --system-prompt "$PROMPT")
ONE_CALL=(--save-every 100000 --force "${cap[@]}")
