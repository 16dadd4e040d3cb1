#!/usr/bin/env bash
# tokrl's rollout and update on a CUDA GPU, with nothing to download: a model of
# SmolLM2-135M's shape is built on the spot with random weights (see gpu_check.py).
# Needs torch with CUDA, transformers, safetensors, pyyaml and tqdm; vLLM is measured too
# when it is installed. Prints one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA GPU visible')"
exec python3 benchmarks/gpu_check.py "$@"
