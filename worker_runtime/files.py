"""Temporary files of one job in OUTPUT_DIR, named ``{job_id}...`` per the spec."""

from __future__ import annotations

import shutil
from pathlib import Path


def job_files(output_dir: Path, job_id: str) -> list[Path]:
    return sorted(output_dir.glob(f"{job_id}*"))


def remove_job_files(output_dir: Path, job_id: str) -> int:
    removed = 0
    for path in job_files(output_dir, job_id):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed
