#!/bin/bash
# usage: sweep.sh MODEL TOKPREFIX NAME LR STEPS MB [SCHED] [WARMUP] [METHOD]
# trains with run_job.sh, then evaluates cls accuracy on dev and test; appends a line to results.tsv
M=$1; TP=$2; N=$3; shift 3
D=/work/main/resources/datasets/promptcblue-demo; P=/work/main/.venv-test/bin/python; H=$(dirname "$0")
O=/tmp/dr/runs/$N
W=$("$H/run_job.sh" "$M" "$TP-train.tok" "$O" "$@" | tee /dev/stderr | grep TRAIN_WALL | awk '{print $2}')
LOSS=$(grep '"event":"step"' "$O.events.jsonl" | tail -1 | python3 -c 'import sys,json;print(round(json.loads(sys.stdin.read())["loss"],3))')
if [ "${6:-full}" = lora ]; then MA="--model $M --adapter $O"; else MA="--model $O"; fi
DV=$($P "$H/eval_cls.py" $MA --tokenizer "$M" --tok "$TP-dev.tok" --data $D/dev.json --show 0)
TS=$($P "$H/eval_cls.py" $MA --tokenizer "$M" --tok "$TP-test.tok" --data $D/test.json --show 0)
echo -e "$N\t$M\t$*\twall=$W\tloss=$LOSS\tdev=$(echo $DV | python3 -c 'import sys,json;print(json.load(sys.stdin)["accuracy"])')\ttest=$TS" | tee -a "$H/results.tsv"
