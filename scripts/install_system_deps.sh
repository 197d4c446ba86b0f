#!/usr/bin/env bash
# What `make test` needs from the system, installed with apt when missing (sudo when not root):
# Debian's chromium for the dashboard's browser tests (never a browser downloaded by a test tool) and
# Debian's dataset-fashion-mnist (a built-in dataset, and the demo models'). Node.js >= 20 with npm is
# checked, not installed: install it from your distribution or nodejs.org.
set -euo pipefail

PACKAGES=()
[ -x /usr/bin/chromium ] || PACKAGES+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || PACKAGES+=(dataset-fashion-mnist)

if [ ${#PACKAGES[@]} -gt 0 ]; then
    WANT="the Debian packages: ${PACKAGES[*]}"
    if ! command -v apt-get >/dev/null; then
        echo "make test needs $WANT (apt-get is not available here: install them, then rerun)" >&2
        exit 1
    fi
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "make test needs $WANT: run as root, or install them with apt-get" >&2; exit 1; }
        SUDO=(sudo)
    fi
    echo "installing $WANT"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}"
fi

NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if ! command -v npm >/dev/null || [ "$NODE_MAJOR" -lt 20 ]; then
    echo "the dashboard needs Node.js >= 20 and npm (found node major version ${NODE_MAJOR/#0/none}); install them, then rerun" >&2
    exit 1
fi
