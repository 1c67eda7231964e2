#!/usr/bin/env bash
# ALBEF's ITC queue on ShapesWorld: albef-tiny pretrained with and without objectives.itc.queue_size at the
# same budget (steps, batch, seed), then zero-shot retrieval on the test split. One run each: a small,
# single-seed comparison. Usage: benchmarks/bench_itc_queue.sh [OUT_DIR] [STEPS] [QUEUE_SIZE]
set -euo pipefail
out=${1:-runs/itc-queue}
steps=${2:-300}
queue=${3:-256}
data=$out/data
if [ ! -d "$data/tokenizer" ]; then
    vlp data synth --out "$data" --images 2000 --size 32 --seed 0 --quiet --overwrite
    vlp tokenizer train --input "$data/annotations/dataset_shapes.json" --out "$data/tokenizer" --vocab-size 1000
fi
for q in 0 "$queue"; do
    vlp pretrain albef-tiny --out "$out/q$q" --overwrite --set data.root="$data" --set model.tokenizer="$data/tokenizer" \
        --set train.steps="$steps" --set objectives.itc.queue_size="$q"
    vlp eval retrieval --model "$out/q$q" --data "$data" --out "$out/q$q-eval"          # ITC top-k + ITM
    vlp eval retrieval --model "$out/q$q" --data "$data" --out "$out/q$q-eval-dual" --dual  # ITC alone
done
