"""scripts/gpu-smoke.sh, tried on the CPU: every check runs and passes on the tiny stand-in
model, and on a machine without a GPU it refuses to pass unless told to run on the CPU."""

import subprocess
from pathlib import Path

import pytest

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ["cuda", "model", "rollout", "backward", "grpo", "adapter"]


def smoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-smoke.sh"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def verdicts(stdout: str) -> dict[str, str]:
    lines = [line.split(":", 1)[0].split() for line in stdout.splitlines()]
    return {
        words[1]: words[0] for words in lines if len(words) == 2 and words[0] in ("PASS", "FAIL")
    }


@pytest.mark.model
def test_every_check_passes_on_the_cpu_when_allowed(settings: Settings) -> None:
    done = smoke("--allow-cpu", "--data-dir", str(settings.data_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert verdicts(done.stdout) == dict.fromkeys(CHECKS, "PASS")
    assert done.stdout.rstrip().endswith("6 passed, 0 failed")


def test_without_a_gpu_it_fails_at_the_first_check() -> None:
    done = smoke()
    assert done.returncode == 1
    assert verdicts(done.stdout) == {"cuda": "FAIL"}
    assert "torch sees no CUDA device" in done.stdout
