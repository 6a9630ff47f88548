#!/usr/bin/env bash
# Reproduce the bundled Open-RAG model (openrag/assets/default) from ../shared/data on the CPU.
# Resumable: run it again after a kill and training continues from the last checkpoint in $OUT/ckpt.
# Held out (never trained on): the first 100 rows of each dev file, used for MODEL.md's evaluation.
# Experts + LoRA, warm-started from the experts of the previous bundled model (INIT, default: the shipped
# `default`; INIT=none trains from the bare base); the comparisons: --lora_r 0 (experts only), --num_experts 0 (LoRA only).
# Dropout is off: on this CPU the random masks cost a quarter of the forward time, and no run here sees an epoch twice.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DATA:-../shared/data}
OUT=${OUT:-runs/v3}
mkdir -p "$OUT"
[ -s "$OUT/train.jsonl" ] || .venv/bin/openrag data build \
  "$D/hotpotqa/hotpotqa_train100.json" "$D/musique/musique_train100.json" "$D/hotpotqa/hotpotqa_train_gold500.jsonl" \
  "$D/hotpotqa/hotpotqa_dev_ircot500.jsonl:skip=100" "$D/musique/musique_dev200.jsonl:skip=100" \
  "$D/2wikimultihopqa/2wiki_dev200.jsonl:skip=100" \
  --output "$OUT/train.jsonl" --seed 0 --max_length 320 --no_chain --max_facts 1 \
  --exclude "$D/hotpotqa/hotpotqa_dev_ircot500.jsonl:limit=100" "$D/musique/musique_dev200.jsonl:limit=100" \
            "$D/2wikimultihopqa/2wiki_dev200.jsonl:limit=100"
# jemalloc, where installed (apt-get install libjemalloc2), returns freed activation memory to the system:
# under glibc's malloc a run of this script grew from 17 to 22 GB of RSS in 50 steps (varying batch shapes).
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
if [ -f "$JEMALLOC" ]; then
  export LD_PRELOAD="$JEMALLOC${LD_PRELOAD:+:$LD_PRELOAD}" MALLOC_CONF="${MALLOC_CONF:-background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:10000}"
fi
INIT=${INIT:-default}
WARM=()
[ "$INIT" = none ] || WARM=(--init_from "$INIT")
RESUME=()
ls "$OUT"/ckpt/checkpoint-*/trainer_state.json >/dev/null 2>&1 && RESUME=(--resume_from_checkpoint True)  # a save that finished
.venv/bin/openrag train --model_name_or_path smollm2 "${WARM[@]}" --data_path "$OUT/train.jsonl" --output_dir "$OUT/ckpt" \
  --num_experts 8 --topk 2 --adapter_dim 32 --moe_scaling 0.25 --expert_dropout 0 \
  --lora_r 16 --lora_alpha 16 --lora_dropout 0 --lora_target_modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
  --model_max_length 320 --packing --reflection_loss_weight 3 --per_device_train_batch_size 16 --gradient_accumulation_steps 1 \
  --max_steps ${STEPS:-220} --learning_rate 5e-4 --lr_scheduler_type cosine --warmup_steps 10 \
  --adam_beta2 0.999 --weight_decay 0.0 --max_grad_norm 0.3 --train_sampling_strategy random \
  --save_strategy steps --save_steps 20 --save_total_limit 2 --logging_steps 5 --report_to tensorboard \
  --seed 0 --dataloader_num_workers 0 "${RESUME[@]}" "$@"
