#!/usr/bin/env bash
# Installs the headless browser the console tests (tests/console/) drive: Debian's chromium
# and chromium-driver, which selenium talks to. Idempotent: nothing happens when both are on
# PATH. Needs root (or sudo) for apt-get.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
sudo=()
[[ "$(id -u)" == 0 ]] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver
