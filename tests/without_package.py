"""Running a script as a user who has diffusers but not this package: a fresh Python process in which importing
`diffusers_cunet` fails, so only the code files a pipeline folder ships can build its model and pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

# Put before every script: any import of the package or one of its modules raises ImportError in that process.
BLOCK_THE_PACKAGE = 'import sys\nsys.modules["diffusers_cunet"] = None\n'


def run_without_the_package(
    script: str, *args: str, cwd: Path, env: dict[str, str | None], outputs: int = 1, timeout: int = 600
) -> list[Any]:
    """Run `script` with `args` in such a process (its environment this one's, changed by `env`: None unsets a
    variable) and return the JSON values of the last `outputs` lines it printed; the process must succeed."""
    environment = {**os.environ}
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    run = subprocess.run([sys.executable, "-c", BLOCK_THE_PACKAGE + textwrap.dedent(script), *args], cwd=cwd,
                         env=environment, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.strip().splitlines()[-outputs:]]
