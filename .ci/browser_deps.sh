#!/usr/bin/env bash
# What tests/test_browser.py needs beyond the Python packages: Debian's Chromium (the playwright
# Python package drives it through executablePath; no `playwright install` download).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends chromium
fi
/usr/bin/chromium --version
