#!/usr/bin/env bash
# GPU check (docs/scaling.md): DPO and GRPO on a random-initialised 0.5B-class model, and HF generate vs
# our sampler vs vLLM, printing tokens/s, MFU and peak memory. Runs in about 3 minutes on one H100;
# refuses to start without a CUDA GPU. Options go to benchmarks/gpu_check.py (--tokenizer DIR, --out FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
