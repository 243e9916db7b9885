#!/usr/bin/env bash
# Make headless Chromium and its WebDriver available for the studio's browser test
# (tests/test_studio_browser.py, driven by Selenium from the dev extras).
#
# Contract: idempotent; exits 0 either way. It only installs Debian's `chromium` and
# `chromium-driver` packages. Without them (not root, no apt) the browser test skips
# and says why.
set -euo pipefail
if command -v chromium > /dev/null && command -v chromedriver > /dev/null; then
    echo "chromium.sh: present: $(chromedriver --version | cut -d' ' -f1-2)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then
    echo "chromium.sh: no chromium/chromedriver and cannot apt-get install them (the browser test will skip, saying why)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver > /dev/null; }; then
    echo "chromium.sh: could not install chromium (the browser test will skip, saying why)" >&2
    exit 0
fi
echo "chromium.sh: installed $(chromedriver --version | cut -d' ' -f1-2)"
