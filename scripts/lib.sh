# Shared steps of scripts/run.sh and scripts/test.sh. Each step does nothing when its work
# is already done, so both scripts are safe to run again.

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

ensure_system_packages() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v fuse-overlayfs >/dev/null || missing+=(fuse-overlayfs)
    command -v newuidmap >/dev/null || missing+=(uidmap)
    command -v slirp4netns >/dev/null || missing+=(slirp4netns)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing system packages: ${missing[*]}"
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
    fi
}

ensure_venv() {
    local extras="$1"   # "" or "[dev]"
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv"
        python3 -m venv .venv
    fi
    log "installing nanoclaw$extras into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e ".$extras"
}

ensure_agent_image() {
    # The agent container image (Containerfile). Offline machines get a debootstrapped Debian
    # base, built once and cached; Podman's layer cache makes a rebuild with unchanged code
    # take seconds, so this always runs and the image always holds the current runner.
    log "building the agent image"
    .venv/bin/nanoclaw image build
}
