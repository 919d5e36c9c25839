#!/usr/bin/env bash
# Builds the chart's images with buildah (podman or docker as fallbacks) from the workspace root.
# CI does not run this. Usage: charts/images/build.sh [REGISTRY] [TAG]
#   REGISTRY defaults to ghcr.io/agentcell, TAG to the chart's appVersion.
set -euo pipefail
cd "$(dirname "$0")/../.."

registry=${1:-ghcr.io/agentcell}
tag=${2:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/agentcell/Chart.yaml)}

if command -v buildah >/dev/null 2>&1; then
  build() { buildah bud --layers -f "$1" -t "$2" .; }
elif command -v podman >/dev/null 2>&1; then
  build() { podman build -f "$1" -t "$2" .; }
elif command -v docker >/dev/null 2>&1; then
  build() { docker build -f "$1" -t "$2" .; }
else
  echo "build.sh: needs buildah (or podman, or docker)" >&2
  exit 1
fi

build charts/images/operator.Containerfile "$registry/agentcell-operator:$tag"
build charts/images/node.Containerfile "$registry/agentcell-node:$tag"
echo "built $registry/agentcell-operator:$tag and $registry/agentcell-node:$tag"
