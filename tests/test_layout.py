"""The layout's rules (README "How the pieces fit"): imports run one way between the
packages, chalicelib's top level holds packages, and no worker module is a re-export shim."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_imports_run_one_way():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_import_running_back_up_fails_the_check(tmp_path: Path):
    """The contract can fail: a copy of the tree where the job store imports the API."""
    for name in ("chalicelib", "worker_runtime"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "ui_static"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    store = tmp_path / "chalicelib" / "jobs" / "store.py"
    store.write_text(store.read_text() + "\nfrom chalicelib.api.routes import create_app  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "chalicelib.jobs.store -> chalicelib.api.routes" in result.stdout, result.stdout


def test_chalicelib_top_level_holds_packages():
    modules = sorted(p.name for p in (ROOT / "chalicelib").glob("*.py") if p.name != "__init__.py")
    packages = sorted(p.name for p in (ROOT / "chalicelib").iterdir() if (p / "__init__.py").exists())
    assert modules == ["context.py"], modules
    assert packages == ["api", "delivery", "fleet", "jobs", "platform"], packages


def test_no_worker_module_only_re_exports_chalicelib():
    for path in (ROOT / "worker_runtime").rglob("*.py"):
        body = [n for n in ast.parse(path.read_text()).body
                if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
        if body and len(imports) == len(body):
            sources = {n.module for n in imports if isinstance(n, ast.ImportFrom)} - {"__future__"}
            assert not all(s and s.startswith("chalicelib") for s in sources), f"{path} only re-exports chalicelib"
