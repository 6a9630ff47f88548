#!/usr/bin/env bash
# Evaluate a model on the held-out questions (the first N rows of each dev file; never trained on), with
# the same passages for every system: each row's own paragraphs, BM25-ranked, the first 3.
# Usage: scripts/eval_bundled.sh MODEL OUT_DIR [N [more openrag eval flags, e.g. --prompt_format released]]
#   KIND=sweep (default): an Open-RAG model; one pass gives no_retrieval, always_retrieve and every
#                         adaptive threshold (openrag eval sweep), in OUT_DIR/TASK.sweep.jsonl
#   KIND=standard_rag | closed_book: any LM in a plain prompt (openrag eval --baseline), OUT_DIR/TASK.KIND.jsonl
#   TASKS="hotpotqa musique 2wikimultihopqa" (default): which held-out sets
#   SKIP=100: the N rows after the held-out ones instead (rows v4 and the shipped model train on: the train/held-out gap)
#   DTYPE=float32 (default): MODEL.md's figures are float32, whatever the CPU (eval's own default is bf16 where it is fast)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-default}; OUT=${2:-runs/eval}; N=${3:-100}; KIND=${KIND:-sweep}
shift $(( $# < 3 ? $# : 3 ))
D=${DATA:-../shared/data}
mkdir -p "$OUT"
for spec in "hotpotqa:$D/hotpotqa/hotpotqa_dev_ircot500.jsonl" "musique:$D/musique/musique_dev200.jsonl" \
            "2wikimultihopqa:$D/2wikimultihopqa/2wiki_dev200.jsonl"; do
  task=${spec%%:*}; data=${spec#*:}
  [[ " ${TASKS:-hotpotqa musique 2wikimultihopqa} " == *" $task "* ]] || continue
  [ "${SKIP:-0}" = 0 ] || data="$data:skip=$SKIP"
  common=(--model_name "$MODEL" --dataset "$data" --task "$task" --limit "$N" --ndocs 3 --ranker bm25
          --max_new_tokens 32 --metric hotpotem --dtype "${DTYPE:-float32}" --resume --no_progress --output_file "$OUT/$task.$KIND.jsonl" "$@")
  if [ "$KIND" = sweep ]; then
    .venv/bin/openrag eval sweep "${common[@]}" --w_use 0.5 --use_groundness --use_utility --use_seqscore
  else
    .venv/bin/openrag eval "${common[@]}" --baseline "$KIND"
  fi
done
