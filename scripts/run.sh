#!/usr/bin/env bash
# Set up and run NanoClaw on a fresh Debian/Ubuntu machine: system packages (Podman),
# a virtualenv, the data folder (nanoclaw init).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_system_packages
ensure_venv ""
ensure_agent_image

log "initialising the data folder"
.venv/bin/nanoclaw init
.venv/bin/nanoclaw status
