#!/usr/bin/env bash
# Set up, then run the whole graph headless on the demo pool shipped in demo/ (offline, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/curate run demo/pool --config curation.yaml "$@"
