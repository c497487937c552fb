"""Smoke test: every ``tutorials/*.py`` runs to completion with ``FIXEDQ_TUTORIAL_FAST=1``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "tutorials").glob("*.py"))


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(script, tmp_path):
    env = dict(os.environ, FIXEDQ_TUTORIAL_FAST="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, (f"{script.name} failed:\n{proc.stdout[-2000:]}\n"
                                  f"{proc.stderr[-3000:]}")
