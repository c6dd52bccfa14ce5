#!/usr/bin/env bash
# Set up and run the tests on a fresh Debian/Ubuntu machine: system packages (Podman),
# a virtualenv with the dev tools, then lint, type check (the code and tests/, strict: pyproject's
# [tool.mypy] packages) and the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_system_packages
ensure_venv "[dev]"
ensure_agent_image

log "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
log "mypy (the code and tests/)"
.venv/bin/mypy
log "pytest"
.venv/bin/pytest "$@"
