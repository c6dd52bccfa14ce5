#!/usr/bin/env bash
# Set up and run NanoClaw on a fresh Debian/Ubuntu machine: system packages (Podman),
# a virtualenv, the agent image, the data folder (nanoclaw init), then every program under
# supervisord (nanoclaw up). Safe to run again: what is done already is skipped, and a
# running assistant is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_system_packages
ensure_venv ""
ensure_agent_image

log "initialising the data folder"
.venv/bin/nanoclaw init

ensure_api_key() {
    # The credential proxy needs the model API key. It stays on the host, in .env (mode
    # 600), and never enters a container.
    if [ -n "${ANTHROPIC_API_KEY:-}" ] || grep -qs '^ANTHROPIC_API_KEY=.' .env; then
        return
    fi
    if [ ! -t 0 ]; then
        echo "ANTHROPIC_API_KEY is not set: put ANTHROPIC_API_KEY=... in $(pwd)/.env" \
            "(or export it) and run this again." >&2
        exit 1
    fi
    local key=""
    read -r -s -p "Anthropic API key (kept in $(pwd)/.env): " key
    echo
    if [ -z "$key" ]; then
        echo "no key given" >&2
        exit 1
    fi
    umask 077
    touch .env
    chmod 600 .env
    printf 'ANTHROPIC_API_KEY=%s\n' "$key" >> .env
}
ensure_api_key

log "starting the programs under supervisord"
.venv/bin/nanoclaw up
cat <<'EOF'

NanoClaw is running. Next:
  .venv/bin/nanoclaw chat                  talk to your assistant in this terminal
  .venv/bin/nanoclaw ctl status            the programs (ctl restart delivery, ctl tail -f router)
  .venv/bin/nanoclaw down                  stop everything
Telegram and Slack: add their tokens to .env (see README), then `nanoclaw ctl restart router delivery`.
EOF
