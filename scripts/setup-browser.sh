#!/usr/bin/env bash
# Installs what the browser test (tests/test_demo_browser.py) drives: Debian's headless Chromium and its
# ChromeDriver (packages chromium and chromium-driver, /usr/bin/chromium and /usr/bin/chromedriver).
# Quiet and quick when both are there already; needs apt-get (Debian, Ubuntu) and root or sudo otherwise.
# Nothing else is downloaded: Selenium is told both paths, so it never fetches a browser of its own.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-browser: no apt-get here; install Chromium and ChromeDriver as /usr/bin/chromium and" \
         "/usr/bin/chromedriver (or point LATENTMAP_CHROMIUM and LATENTMAP_CHROMEDRIVER at them)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "setup-browser: installing chromium and chromium-driver with apt-get (for the browser test)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null
/usr/bin/chromium --version >&2
