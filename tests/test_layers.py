"""The layering rules of docs/ARCHITECTURE.md hold: `lint-imports` (the contracts in
pyproject.toml) passes, and nothing sidesteps them with dynamic imports."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_dynamic_imports_around_the_contracts():
    dynamic = re.compile(r"import_module\(|__import__\(|importlib\.reload")
    hits = [str(p.relative_to(REPO)) for root in ("pipeline", "stages")
            for p in (REPO / root).rglob("*.py") if dynamic.search(p.read_text())]
    assert hits == []
