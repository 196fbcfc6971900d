#!/usr/bin/env bash
# Vendored from the team's shared peer harness; ckptserve rows are added by benchmarks/*.py.
# Run every peer in ../peers against the same actor, interleaved ROUNDS times, and print the table.
#   peers.sh [PYTHON]   (PYTHON: an interpreter with torch, fastapi, uvicorn[standard], litserve)
# Add the product as one more row with run.sh, e.g.:
#   ./run.sh ckptserve http://127.0.0.1:8000/rl/predict -- ckptserve serve /tmp/actor.pt --port 8000
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${1:-python3}
bin=$(dirname "$(command -v "$py")")
work=$(mktemp -d)
"$py" "$here/make_actor.py" "$work/actor.pt"
export MODEL=$work/actor.pt PORT=8011
echo "| server | concurrency | req/s | p50 | p99 | non-2xx | socket errors |"
echo "|---|---|---|---|---|---|---|"
for round in $(seq "${ROUNDS:-1}"); do
  cd "$here/peers"
  "$here/run.sh" asgi-ceiling http://127.0.0.1:8011/rl/predict -- "$bin/uvicorn" asgi_ceiling:app --port 8011 --log-level warning --no-access-log
  "$here/run.sh" model-ceiling http://127.0.0.1:8011/rl/predict -- "$bin/uvicorn" model_ceiling:app --port 8011 --log-level warning --no-access-log
  "$here/run.sh" original-design http://127.0.0.1:8011/rl/predict -- "$bin/uvicorn" seed_baseline:app --port 8011 --log-level warning --no-access-log
  "$here/run.sh" litserve http://127.0.0.1:8011/predict -- "$py" litserve_peer.py
done
