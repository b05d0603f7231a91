#!/bin/bash
# usage: run_job.sh MODEL_DIR TRAIN.tok OUT_DIR LR STEPS MB [SCHED] [WARMUP] [METHOD] [EVAL_TOK]
# Writes OUT_DIR.job.json, runs the engine with `time`, prints first/last step events.
set -e
M=$1; T=$2; O=$3; LR=$4; S=$5; MB=$6; SCH=${7:-cosine}; WU=${8:-0.05}; METH=${9:-full}; EV=${10:-}
rm -rf "$O"; mkdir -p "$(dirname "$O")"
if [ "$METH" = lora ]; then LORA='"lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"], "modules_to_save": null, "bias": "none", "use_rslora": false, "init_adapter": null},'; else LORA=''; fi
if [ -n "$EV" ]; then DATA="{\"train\": \"$T\", \"eval\": \"$EV\"}"; ES=$((S/4)); else DATA="{\"train\": \"$T\"}"; ES=0; fi
cat > "$O.job.json" <<J
{"model": "$M", "method": "$METH", $LORA
 "data": $DATA,
 "training": {"learning_rate": $LR, "lr_scheduler": "$SCH", "warmup_ratio": $WU, "max_steps": $S,
              "micro_batch_size": $MB, "gradient_accumulation_steps": 1, "max_grad_norm": 1.0,
              "weight_decay": 0.0, "seed": 42},
 "output": {"dir": "$O", "logging_steps": 25, "save_steps": 100000, "eval_steps": $ES},
 "threads": 2}
J
/usr/bin/time -f "TRAIN_WALL %e s" /work/main/native/build/bin/llmt-engine train --job "$O.job.json" > "$O.events.jsonl" 2> "$O.stderr" || { cat "$O.stderr"; tail -3 "$O.events.jsonl"; exit 1; }
grep -h TRAIN_WALL "$O.stderr"
grep '"event":"step"\|"eval"' "$O.events.jsonl" | python3 -c "
import sys,json
L=[json.loads(l) for l in sys.stdin]
for e in L[:1]+L[-6:]: print({k:e.get(k) for k in ('step','epoch','loss','eval_loss','lr','tokens_per_s')})"
