"""Generated documentation stays in step with the code."""

import subprocess
import sys

from conftest import REPO_ROOT


def test_config_reference_is_current():
    script = REPO_ROOT / "scripts" / "helpers" / "config_reference.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
