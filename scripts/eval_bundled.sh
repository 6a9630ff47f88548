#!/usr/bin/env bash
# Evaluate a model on the held-out questions (the first N rows of each dev file; never trained on).
# Usage: scripts/eval_bundled.sh MODEL OUT_DIR [N]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-default}; OUT=${2:-runs/eval}; N=${3:-100}
D=${DATA:-../shared/data}
mkdir -p "$OUT"
for spec in "hotpotqa:$D/hotpotqa/hotpotqa_dev_ircot500.jsonl" "musique:$D/musique/musique_dev200.jsonl" \
            "2wikimultihopqa:$D/2wikimultihopqa/2wiki_dev200.jsonl"; do
  task=${spec%%:*}; data=${spec#*:}
  for mode in ${MODES:-always_retrieve no_retrieval}; do
    .venv/bin/openrag eval --model_name "$MODEL" --dataset "$data" --task "$task" --limit "$N" --mode "$mode" \
      --ndocs 3 --ranker bm25 --max_new_tokens 32 --metric hotpotem --w_use 0.5 \
      --use_groundness --use_utility --use_seqscore --resume --output_file "$OUT/$task.$mode.jsonl"
  done
done
