import os
import shutil
from pathlib import Path

# Where scripts/install-deploy-tools.sh puts Compose v2 and hadolint.
DEPLOY_TOOLS_BIN = (
    Path(
        os.environ.get("DEPLOY_TOOLS_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "memory-r1"
        / "deploy-tools"
    )
    / "bin"
)


def deploy_tool(name: str) -> str | None:
    """The executable installed by scripts/install-deploy-tools.sh, else one on PATH."""
    installed = DEPLOY_TOOLS_BIN / name
    if installed.is_file() and os.access(installed, os.X_OK):
        return str(installed)
    return shutil.which(name)
