#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the playground's browser tests
# (tests/service/playground, driven by Selenium from the dev extra). Idempotent.
# If they cannot be installed, the reason goes to .browser-install-failed and those tests skip
# quoting it; otherwise the file is removed.
set -uo pipefail

FAILED="${BROWSER_INSTALL_FAILED:-.browser-install-failed}"
rm -f "$FAILED"

have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

if have; then
  echo "browser-tools: chromium and chromedriver present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "not root or no apt-get: cannot install chromium chromium-driver" | tee "$FAILED" >&2
  exit 0
fi
echo "browser-tools: apt-get install chromium chromium-driver"
log=$(mktemp)
if DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >>"$log" 2>&1 &&
  have; then
  echo "browser-tools: $(chromium --version 2>/dev/null | head -1)"
else
  { echo "apt-get install chromium chromium-driver failed:"; tail -n 5 "$log"; } | tee "$FAILED" >&2
fi
rm -f "$log"
exit 0
