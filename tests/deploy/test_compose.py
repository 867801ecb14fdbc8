"""docker-compose.yml and .env.example: valid Compose, and wired the way the services expect.

The first group runs the real Compose v2 implementation (`config` needs no Docker engine);
scripts/install-deploy-tools.sh installs it. The rest reads the YAML, so it runs anywhere.
"""

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from app.core.config import Settings
from tests.deploy import DEPLOY_TOOLS_BIN

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

GPU_SERVICES = {"vllm", "api", "worker", "trainer"}
CPU_SERVICES = {"api-cpu", "worker-cpu", "trainer-cpu"}
SHARED_SERVICES = {"postgres", "redis", "migrate"}
APP_SERVICES = {"migrate", "api", "worker", "trainer", "api-cpu", "worker-cpu", "trainer-cpu"}
ADAPTER_USERS = {"trainer", "vllm", "api", "worker", "api-cpu", "worker-cpu", "trainer-cpu"}

# `NAME=value` lines of .env.example, commented out (documented default) or not.
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")
# ${NAME}, ${NAME:-default}, ${NAME:?message} in the compose file.
INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def with_defaults(value: str) -> str:
    """A compose value as rendered with an empty .env: `${NAME:-default}` becomes `default`."""
    return INTERPOLATION.sub(lambda m: m[3] if m[2] == ":-" else m[0], value)


def settings_env_names(model: type[BaseModel] = Settings, prefix: str = "MEMR1_") -> Iterator[str]:
    """Every environment variable Settings reads, nested groups joined with `__`."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from settings_env_names(annotation, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}"


def settings_value(settings: Settings, env_name: str) -> Any:
    value: Any = settings
    for part in env_name.removeprefix("MEMR1_").lower().split("__"):
        value = getattr(value, part)
    return value


def documented_env() -> dict[str, str]:
    documented: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := ENV_LINE.match(line):
            name, value = match.groups()
            assert name not in documented, f"{name} is documented twice in .env.example"
            documented[name] = value
    return documented


def service_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {key: str(value) for key, value in environment.items()}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Named volume -> container path, for short (`name:/path[:ro]`) and long syntax."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[source] = target
    return mounts


def command_line(service: dict[str, Any]) -> str:
    command = service.get("command", [])
    return command if isinstance(command, str) else " ".join(map(str, command))


def healthcheck_command(service: dict[str, Any]) -> str:
    healthcheck = service.get("healthcheck")
    assert healthcheck, "no healthcheck"
    assert not healthcheck.get("disable"), "healthcheck disabled"
    test = healthcheck["test"]
    return test if isinstance(test, str) else " ".join(test)


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    return deploy.get("resources", {}).get("reservations", {}).get("devices", [])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# --- the real Compose implementation ---------------------------------------------------------


def compose_v2() -> list[str] | None:
    """The Compose v2 binary from scripts/install-deploy-tools.sh, or the docker CLI plugin."""
    installed = DEPLOY_TOOLS_BIN / "docker-compose"
    if installed.is_file() and os.access(installed, os.X_OK):
        return [str(installed)]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


COMPOSE = compose_v2()
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="no Compose v2 implementation found; run scripts/install-deploy-tools.sh",
)


def run_compose(project: Path, env_file: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`compose <args>` on a copy of docker-compose.yml with the given .env beside it."""
    assert COMPOSE is not None
    shutil.copy(COMPOSE_FILE, project / "docker-compose.yml")
    (project / ".env").write_text(env_file)
    # Only what Compose needs from the caller's environment: a developer's exported
    # POSTGRES_PASSWORD or COMPOSE_PROFILES must not decide the outcome.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(project)}
    return subprocess.run(
        [*COMPOSE, "--project-directory", str(project), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def filled_env_example() -> str:
    """.env.example after step 1 of the self-hosting guide: the password filled in."""
    text = ENV_EXAMPLE.read_text()
    filled = re.sub(r"(?m)^POSTGRES_PASSWORD=$", "POSTGRES_PASSWORD=4f1c9e0b7a", text)
    assert filled != text, ".env.example should leave POSTGRES_PASSWORD for the user to set"
    return filled


@needs_compose
@pytest.mark.parametrize(
    ("profiles", "expected"),
    [
        ((), SHARED_SERVICES | CPU_SERVICES),  # COMPOSE_PROFILES=cpu from .env.example
        (("cpu",), SHARED_SERVICES | CPU_SERVICES),
        (("gpu",), SHARED_SERVICES | GPU_SERVICES),
    ],
)
def test_compose_config_renders_each_profile(
    tmp_path: Path, profiles: tuple[str, ...], expected: set[str]
) -> None:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(tmp_path, filled_env_example(), *flags, "config", "--format", "json")

    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert set(rendered["services"]) == expected


@needs_compose
def test_compose_config_rendered_wiring(tmp_path: Path) -> None:
    both_profiles = ("--profile", "gpu", "--profile", "cpu")
    result = run_compose(
        tmp_path, filled_env_example(), *both_profiles, "config", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)["services"]

    for name in APP_SERVICES:
        env = rendered[name]["environment"]
        assert env["MEMR1_DATABASE_URL"] == "postgresql://memr1:4f1c9e0b7a@postgres:5432/memr1"
        assert env["MEMR1_BROKER_URL"].startswith("redis://redis:")
    assert rendered["postgres"]["environment"]["POSTGRES_PASSWORD"] == "4f1c9e0b7a"
    vllm_command = rendered["vllm"]["command"]
    assert vllm_command[vllm_command.index("--max-lora-rank") + 1] == "64"


@needs_compose
def test_compose_config_refuses_a_missing_postgres_password(tmp_path: Path) -> None:
    result = run_compose(tmp_path, ENV_EXAMPLE.read_text(), "config")

    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


# --- settings and .env.example ---------------------------------------------------------------


def test_every_memr1_variable_in_compose_is_a_setting(
    services: dict[str, dict[str, Any]],
) -> None:
    known = set(settings_env_names())
    for name, service in services.items():
        unknown = {key for key in service_env(service) if key.startswith("MEMR1_")} - known
        assert not unknown, f"{name} sets variables Settings does not read: {sorted(unknown)}"
    interpolated = {match[0] for match in INTERPOLATION.findall(COMPOSE_FILE.read_text())}
    assert {key for key in interpolated if key.startswith("MEMR1_")} <= known


def test_env_example_documents_every_setting() -> None:
    documented = set(documented_env())
    missing = sorted(set(settings_env_names()) - documented)
    assert not missing, f".env.example does not document {missing}"


def test_env_example_names_only_real_settings() -> None:
    documented = {name for name in documented_env() if name.startswith("MEMR1_")}
    assert not documented - set(settings_env_names())


def test_env_example_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MEMR1_"):
            monkeypatch.delenv(name)
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]

    for name, value in documented_env().items():
        if not name.startswith("MEMR1_") or not value:
            continue
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            parsed = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings_value(parsed, name) == settings_value(defaults, name), name


def test_env_example_documents_every_compose_variable() -> None:
    documented = documented_env()
    for name, operator, default in INTERPOLATION.findall(COMPOSE_FILE.read_text()):
        assert name in documented, f"${{{name}}} in docker-compose.yml is not in .env.example"
        if operator == ":-" and documented[name]:
            assert documented[name] == default, f"{name}: .env.example and compose disagree"


def test_secrets_come_from_the_environment() -> None:
    text = COMPOSE_FILE.read_text()
    assert "${POSTGRES_PASSWORD:?" in text
    assert "${HF_TOKEN" in text
    assert documented_env()["POSTGRES_PASSWORD"] == ""


# --- services --------------------------------------------------------------------------------


def test_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SHARED_SERVICES | GPU_SERVICES | CPU_SERVICES
    for name in SHARED_SERVICES:
        assert "profiles" not in services[name], name
    for name in GPU_SERVICES:
        assert services[name]["profiles"] == ["gpu"], name
    for name in CPU_SERVICES:
        assert services[name]["profiles"] == ["cpu"], name


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in healthcheck_command(services["postgres"])
    assert "redis-cli ping" in healthcheck_command(services["redis"])
    for api in ("api", "api-cpu"):
        assert "urllib" in healthcheck_command(services[api])
        assert ":8080/healthz" in healthcheck_command(services[api])
    assert ":8000/health'" in healthcheck_command(services["vllm"])


def test_migrations_run_once_before_anything_uses_the_database(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate = services["migrate"]
    assert command_line(migrate) == "memory-r1 migrate"
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in APP_SERVICES - {"migrate"}:
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert depends_on["redis"]["condition"] == "service_healthy", name


def test_app_services_share_the_database_broker_and_data_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in APP_SERVICES:
        env = service_env(services[name])
        assert env["MEMR1_DATABASE_URL"].startswith("postgresql://memr1:${POSTGRES_PASSWORD")
        assert "@postgres:5432/" in env["MEMR1_DATABASE_URL"]
        assert env["MEMR1_BROKER_URL"].startswith("redis://redis:6379/")
        assert volume_mounts(services[name])["data"] == env["MEMR1_DATA_DIR"] == "/data"


def test_adapters_volume_is_mounted_at_one_path_everywhere(
    services: dict[str, dict[str, Any]],
) -> None:
    paths = {name: volume_mounts(services[name]).get("adapters") for name in ADAPTER_USERS}
    assert None not in paths.values(), paths
    assert len(set(paths.values())) == 1, paths
    assert paths["trainer"] == paths["vllm"]
    (path,) = set(paths.values())
    for name in ADAPTER_USERS - {"vllm"}:
        assert service_env(services[name])["MEMR1_ADAPTERS_DIR"] == path, name


def test_api_serves_without_an_in_process_worker(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "api-cpu"):
        assert command_line(services[name]) == "memory-r1 serve --no-worker"
        env = service_env(services[name])
        assert env["MEMR1_API_WORKERS"].startswith("${MEMR1_API_WORKERS")
        assert env["MEMR1_HOST"] == "0.0.0.0"
        assert env["MEMR1_PORT"] == "8080"


def queues(service: dict[str, Any]) -> set[str]:
    command = service["command"]
    return set(command[command.index("--queues") + 1].split(","))


def test_queues(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "worker-cpu"):
        assert command_line(services[name]).startswith("memory-r1 worker ")
        assert queues(services[name]) == {"ingest"}
    for name in ("trainer", "trainer-cpu"):
        assert command_line(services[name]).startswith("memory-r1 worker ")
        assert queues(services[name]) == {"training"}
        # CUDA must never initialise in a forked Celery parent.
        assert "--pool solo" in command_line(services[name])


def test_gpu_reservations(services: dict[str, dict[str, Any]]) -> None:
    for name in ("vllm", "trainer"):
        (device,) = gpu_devices(services[name])
        assert device["driver"] == "nvidia"
        assert "gpu" in device["capabilities"]
    for name in SHARED_SERVICES | CPU_SERVICES | {"api", "worker"}:
        assert not gpu_devices(services[name]), name


def test_gpu_profile_talks_to_vllm_and_cpu_profile_runs_in_process(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("api", "worker", "trainer"):
        env = service_env(services[name])
        assert env["MEMR1_LLM__BACKEND"] == "openai"
        assert env["MEMR1_LLM__BASE_URL"] == "http://vllm:8000/v1"
        assert env["MEMR1_LLM__MODEL"] == services["vllm"]["command"][1]
    for name in CPU_SERVICES:
        assert service_env(services[name])["MEMR1_LLM__BACKEND"] == "inprocess", name


def test_the_trainer_trains_the_model_vllm_downloaded(services: dict[str, dict[str, Any]]) -> None:
    """The trainer finds vLLM's model by its id in the Hugging Face cache vLLM fills (the vLLM
    image's cache is /root/.cache/huggingface), read-only and offline (the image sets
    HF_HUB_OFFLINE)."""
    trainer = services["trainer"]
    env = service_env(trainer)
    assert volume_mounts(trainer)["hf-cache"] == env["HF_HOME"]
    assert volume_mounts(services["vllm"])["hf-cache"] == "/root/.cache/huggingface"
    assert "hf-cache:/hf-cache:ro" in trainer["volumes"]
    assert "MEMR1_LLM__MODEL_PATH" not in env


def test_vllm_serves_runtime_loadable_lora_adapters(services: dict[str, dict[str, Any]]) -> None:
    vllm = services["vllm"]
    image, _, tag = with_defaults(vllm["image"]).partition(":")
    assert image == "vllm/vllm-openai"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"unpinned vLLM image tag: {tag}"
    command = vllm["command"]
    assert command[0] == "--model" and with_defaults(command[1])
    assert "--enable-lora" in command
    # One setting, read by both sides: the service refuses what vLLM could not load.
    assert command[command.index("--max-lora-rank") + 1].startswith("${MEMR1_LLM__MAX_LORA_RANK")
    assert int(with_defaults(command[command.index("--max-loras") + 1])) >= 2
    assert service_env(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        _, _, tag = with_defaults(service["image"]).rpartition(":")
        assert tag and tag != "latest" and "/" not in tag, f"{name}: {service['image']}"
