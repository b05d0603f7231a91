#!/bin/bash
# End-to-end demo recipe: BPE tokenizer (train split) -> random llama (h128, 2 layers) -> data prepare ->
# eval before -> full fine-tuning (timed) -> eval after.  usage: demo.sh [WORKDIR] [SEED]
set -euo pipefail
W=${1:-/tmp/dr/demo}; SEED=${2:-1}
H=$(cd "$(dirname "$0")" && pwd); P=/work/main/.venv-test/bin/python; ENG=/work/main/native/build/bin/llmt-engine
D=/work/main/resources/datasets/promptcblue-demo
rm -rf "$W"; mkdir -p "$W"
$P "$H/make_tokenizer.py" --vocab 1024 --out "$W/tok"
$P "$H/make_model.py" --out "$W/model" --tokenizer "$W/tok" --hidden 128 --layers 2 --inter 256 --heads 4 --seed "$SEED"
for s in train dev test; do
  (cd /work/main && node dist/main/cli/index.js data prepare --model "$W/model" --data "$D/$s.json" --out "$W/$s.tok" \
     --max_source_length 128 --max_target_length 32 --no-cache --json > "$W/prepare-$s.json")
done
echo "before: $($P "$H/eval_cls.py" --model "$W/model" --tok "$W/test.tok" --data "$D/test.json" --show 0)"
cat > "$W/job.json" <<J
{"model": "$W/model", "method": "full",
 "data": {"train": "$W/train.tok", "eval": "$W/dev.tok"},
 "training": {"learning_rate": 1e-3, "lr_scheduler": "cosine", "warmup_ratio": 0.05, "max_steps": 300,
              "micro_batch_size": 16, "gradient_accumulation_steps": 1, "max_grad_norm": 1.0,
              "weight_decay": 0.0, "seed": 42},
 "output": {"dir": "$W/out", "logging_steps": 25, "save_steps": 100000, "eval_steps": 100},
 "threads": 2}
J
/usr/bin/time -f "train wall: %e s" $ENG train --job "$W/job.json" > "$W/events.jsonl"
grep '"event":"eval"' "$W/events.jsonl" || true
grep '"event":"done"' "$W/events.jsonl"
cp "$W/model/tokenizer.json" "$W/model/tokenizer_config.json" "$W/model/special_tokens_map.json" "$W/out/"
echo "after (dev):  $($P "$H/eval_cls.py" --model "$W/out" --tok "$W/dev.tok" --data "$D/dev.json" --show 0)"
echo "after (test): $($P "$H/eval_cls.py" --model "$W/out" --tok "$W/test.tok" --data "$D/test.json" --show 3)"
