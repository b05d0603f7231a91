#!/usr/bin/env bash
# bench/gpu.sh OUT_DIR — one go on a bare Linux GPU server (CUDA + nvcc, CMake, a Python with torch, transformers,
# peft, safetensors; no Node, no network): builds llmt-engine with CUDA, runs the CUDA-vs-CPU parity checks
# (test_cuda: every op forward/backward, one LoRA step end to end, 4 LoRA steps with the state resident on the GPU
# and the host↔device copies per step bounded), then benchmarks a LoRA step of a LLaMA-7B-shaped
# model (random weights) against HF transformers + PEFT on the same GPU at seq 512 and 2048 (bench/hf_peft_bench.py),
# and writes everything to OUT_DIR (results.json, results.md, logs; profile.md: one profiled step per side and length,
# the kernel-by-kernel device time of HF+PEFT (torch.profiler) and of ours (`llmt-engine bench --profile`)). Budget: ~10 minutes on one H200; every phase has
# its own time limit and a phase that runs out is recorded as such, not hidden.
# Env: PYTHON (default python3), NVCC (default: nvcc on PATH or /usr/local/cuda/bin/nvcc), CUDA_ARCHS (default: this GPU's),
# BENCH_ARGS (more arguments for bench/hf_peft_bench.py, e.g. a smoke run without a GPU:
# "--device cpu --dims 2,64,4,160,256 --seqs 32,64" with LLMT_CUDA_LIB_DIRS at the test emulator native/build/cuemu/gpu).
set -uo pipefail
OUT="${1:?usage: bench/gpu.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
log() { echo "[gpu.sh $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu.log"; }
START=$(date +%s)

# cuBLAS/NCCL/NVML from pip's nvidia-* packages: let the engine's dlopen find them
NV_LIBS="$("$PY" - <<'P' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)})))
P
)"
export LLMT_CUDA_LIB_DIRS="${NV_LIBS}${LLMT_CUDA_LIB_DIRS:+:$LLMT_CUDA_LIB_DIRS}"
ARCH="${CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '.')}"
ARCH="${ARCH:-90}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

log "build (nvcc: $NVCC, sm_$ARCH)"
BUILD="$ROOT/native/build-gpu"
if ! { cmake -S "$ROOT/native" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMT_CUDA=ON -DLLMT_NVCC="$NVCC" \
         -DLLMT_CUDA_ARCHS="$ARCH" -DLLMT_GLOO=OFF > "$OUT/build.log" 2>&1 ||
       cmake -S "$ROOT/native" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLMT_CUDA=ON -DLLMT_NVCC="$NVCC" \
         -DLLMT_CUDA_ARCHS="$ARCH" -DLLMT_GLOO=OFF >> "$OUT/build.log" 2>&1; } ||
   ! cmake --build "$BUILD" -j "$(nproc)" --target llmt-engine test_cuda >> "$OUT/build.log" 2>&1; then
  log "BUILD FAILED (see build.log)"; tail -30 "$OUT/build.log"; exit 1
fi
ENGINE="$BUILD/bin/llmt-engine"
"$ENGINE" --version | tee "$OUT/version.txt"

log "parity checks (test_cuda, LLMT_CUDA_SYNC=1 so a failing kernel is named)"
LLMT_CUDA_SYNC=1 timeout 180 "$BUILD/bin/test_cuda" > "$OUT/parity.log" 2>&1
PARITY_RC=$?
tail -n 3 "$OUT/parity.log" | tee -a "$OUT/gpu.log"
grep -q "^PASS" "$OUT/parity.log" && PARITY=pass || PARITY="fail(rc=$PARITY_RC)"

log "benchmark: HF transformers + PEFT vs llmt-engine (LLaMA-7B shape, r=16 all linear, micro-batch 1, seq 512 and 2048)"
LEFT=$(( 570 - ($(date +%s) - START) ))
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
timeout "$(( LEFT > 60 ? LEFT : 60 ))" "$PY" "$ROOT/bench/hf_peft_bench.py" --engine "$ENGINE" --out "$OUT" --parity "$PARITY" ${BENCH_ARGS:-} \
  2>&1 | tee -a "$OUT/gpu.log"
log "done in $(( $(date +%s) - START )) s; results in $OUT (results.json, results.md, profile.md)"
