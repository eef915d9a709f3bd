#!/usr/bin/env bash
# Installs Debian's Chromium and fonts to render with, for the browser tests (tests/browser.py)
# and for kaleido's static image export. Does nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation fonts-dejavu-core
echo "installed: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
