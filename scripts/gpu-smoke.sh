#!/usr/bin/env bash
# GPU training smoke test: a few GRPO steps and an adapter load on the CUDA device, one
# PASS/FAIL line per check (python -m training.smoke says what each one catches). Exits 1
# when a check fails.
#
#   scripts/gpu-smoke.sh                       # a tiny random model of the bundled architecture
#   scripts/gpu-smoke.sh --model Qwen/Qwen2.5-7B-Instruct   # the served model, from HF_HOME
#   docker compose --profile gpu run --rm trainer python -m training.smoke --model "$VLLM_MODEL"
#
# Run it where the trainer runs: in the trainer image (above) or a checkout set up with CUDA
# PyTorch. It downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
[[ -x .venv/bin/python ]] && python=.venv/bin/python
HF_HUB_OFFLINE=1 exec "$python" -m training.smoke "$@"
