#!/usr/bin/env bash
# alignkit against TRL on one GPU (SFT, reward model, DPO, GRPO; tokens/s, MFU, peak memory, ours/TRL) on
# random-initialised Qwen2.5-0.5B- and 1.5B-shaped models: see benchmarks/gpu_compare.py. Refuses to start
# without a CUDA GPU unless --allow-cpu is given (with --tiny: checks the script on CPU). Options go to
# gpu_compare.py (--shapes, --methods, --batch, --repeats, --out FILE, ...); the run is stopped after 480 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
allow_cpu=0
for arg in "$@"; do [ "$arg" = "--allow-cpu" ] && allow_cpu=1; done
if [ "$allow_cpu" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_compare: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); run it on a GPU machine, or pass --allow-cpu --tiny to check the script" >&2
    exit 2
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# one GPU, the same for both sides (with several visible, TRL's Trainer would wrap the model in DataParallel)
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
exec timeout 480 "$PY" benchmarks/gpu_compare.py "$@"
