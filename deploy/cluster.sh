#!/usr/bin/env bash
# Start one piece of the cluster deployment (see README.md "Deployments"). Run from the project root with
# the variables of deploy/env.example set.
#   deploy/cluster.sh worker [NAME]   a dagster-celery worker (one per GPU, or per core group)
#   deploy/cluster.sh daemon          dagster-daemon: sensors, automation, the run queue
#   deploy/cluster.sh ui              the webserver on 0.0.0.0:3000
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DAGSTER_HOME:?set DAGSTER_HOME (a folder holding deploy/dagster.yaml)}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
case "${1:-}" in
  worker) exec dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml -n "${2:-curation-$(hostname)}" -- -c 1 ;;
  daemon) exec dagster-daemon run -w workspace.yaml ;;
  ui) exec dagster-webserver -w workspace.yaml -h 0.0.0.0 -p 3000 ;;
  *) echo "usage: $0 worker [NAME] | daemon | ui" >&2; exit 2 ;;
esac
