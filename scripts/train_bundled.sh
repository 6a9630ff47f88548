#!/usr/bin/env bash
# Train the next bundled Open-RAG model (recipe v4, issue 28) from ../shared/data on the CPU, across sessions and machines.
# Held out (never trained on): the first 100 rows of each dev file, MODEL.md's evaluation; and --held_out 80 training
# questions, the run's own check every 200 steps (loss, relevance AUC), which picks the best checkpoint.
# Experts + LoRA warm-started from the shipped `default` (INIT; INIT=none trains from the bare base); chains in the data
# (gold_chain instances), the HotpotQA distractor-train file added; 3 epochs, cosine from 3e-4, dropout off.
# Resumable: run it again after a kill, here or on another machine:
#   1. from the newest finished checkpoint in $OUT/ckpt (this machine: optimizer state and all);
#   2. else from the checkpoint kept in git ($KEPT, written by scripts/keep_checkpoint.py: adapter, schedule and sampler
#      state, no optimizer state, so Adam's moments start afresh and the schedule goes on).
# Precision: --bf16 True is asked; `openrag train` takes bf16 autocast only where this CPU computes it faster (it says which).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DATA:-../shared/data}
OUT=${OUT:-runs/v4}
KEPT=${KEPT:-training_state/v4}
mkdir -p "$OUT"
[ -s "$OUT/train.jsonl" ] || .venv/bin/openrag data build \
  "$D/hotpotqa/hotpotqa_train100.json" "$D/musique/musique_train100.json" "$D/hotpotqa/hotpotqa_train_gold500.jsonl" \
  "$D/hotpotqa/hotpotqa_train500_citeprobe.json" \
  "$D/hotpotqa/hotpotqa_dev_ircot500.jsonl:skip=100" "$D/musique/musique_dev200.jsonl:skip=100" \
  "$D/2wikimultihopqa/2wiki_dev200.jsonl:skip=100" \
  --output "$OUT/train.jsonl" --seed 0 --max_length 448 --max_facts 1 --held_out 80 \
  --exclude "$D/hotpotqa/hotpotqa_dev_ircot500.jsonl:limit=100" "$D/musique/musique_dev200.jsonl:limit=100" \
            "$D/2wikimultihopqa/2wiki_dev200.jsonl:limit=100"
# Allocator: glibc's malloc by default: a training step ran 1.24x faster under it than under jemalloc on an AMD EPYC
# (BENCHMARKS.md, "Training precision"). Under glibc a run's memory can grow with varying batch shapes (17 to 22 GB in
# 50 steps once; in float32 on an Ice Lake Xeon past 24 GB in 40 steps); JEMALLOC=1 (apt-get install libjemalloc2)
# trades that speed for memory returned to the system. A run the kernel kills for memory (exit 137) resumes from its
# newest save, up to three times, under jemalloc where it is installed.
JEMALLOC_LIB=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
JEMALLOC=${JEMALLOC:-0}
use_jemalloc() {
  export LD_PRELOAD="$JEMALLOC_LIB${LD_PRELOAD:+:$LD_PRELOAD}" MALLOC_CONF="${MALLOC_CONF:-background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:10000}"
  JEMALLOC=1
}
if [ "$JEMALLOC" = 1 ]; then
  [ -f "$JEMALLOC_LIB" ] || { echo "train_bundled: JEMALLOC=1 but $JEMALLOC_LIB is missing: apt-get install libjemalloc2" >&2; exit 2; }
  use_jemalloc
fi
INIT=${INIT:-default}
WARM=()
[ "$INIT" = none ] || WARM=(--init_from "$INIT")
train() {
  local resume=()
  if ls "$OUT"/ckpt/checkpoint-*/trainer_state.json >/dev/null 2>&1; then
    resume=(--resume_from_checkpoint True)  # the newest save that finished
  elif ls "$KEPT"/checkpoint-*/trainer_state.json >/dev/null 2>&1; then
    resume=(--resume_from_checkpoint "$(ls -d "$KEPT"/checkpoint-* | head -1)")
  fi
  .venv/bin/openrag train --model_name_or_path smollm2 "${WARM[@]}" --data_path "$OUT/train.jsonl" --output_dir "$OUT/ckpt" \
    --eval_data_path "$OUT/train.held_out.jsonl" --eval_strategy steps --eval_steps 200 --metric_for_best_model loss \
    --num_experts 8 --topk 2 --adapter_dim 32 --moe_scaling 0.25 --expert_dropout 0 \
    --lora_r 16 --lora_alpha 16 --lora_dropout 0 --lora_target_modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
    --model_max_length 448 --packing --reflection_loss_weight 3 --per_device_train_batch_size 16 --per_device_eval_batch_size 16 \
    --gradient_accumulation_steps 1 --num_train_epochs ${EPOCHS:-3} --learning_rate 3e-4 --lr_scheduler_type cosine --warmup_steps 20 \
    --adam_beta2 0.999 --weight_decay 0.0 --max_grad_norm 0.3 --train_sampling_strategy random --bf16 True \
    --save_strategy steps --save_steps 50 --save_total_limit 2 --logging_steps 5 --report_to tensorboard \
    --seed 0 --dataloader_num_workers 0 "${resume[@]}" "$@"
}
for attempt in 1 2 3 4; do
  status=0
  train "$@" || status=$?
  [ "$status" = 137 ] && [ "$attempt" -lt 4 ] || exit "$status"
  allocator="the same allocator"
  if [ "$JEMALLOC" != 1 ] && [ -f "$JEMALLOC_LIB" ]; then
    use_jemalloc
    allocator="jemalloc, which returns freed memory to the system"
  elif [ "$JEMALLOC" != 1 ]; then
    allocator="glibc's malloc again (apt-get install libjemalloc2 lets the next try use jemalloc)"
  fi
  echo "train_bundled: the run was killed (exit 137, most likely for memory); resuming from its newest save in 5 minutes, under $allocator" >&2
  sleep 300  # whatever else took the memory may be done by then
done
