"""The built wheel has exactly one top-level import name and carries the configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_has_one_import_name_and_the_yaml_configs(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "results", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("rnnbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"rnnbench"}
    for required in ("rnnbench/conf/config.yaml", "rnnbench/conf/cell/gru.yaml", "rnnbench/conf/task/adding.yaml",
                     "rnnbench/conf/task/copy.yaml", "rnnbench/conf/trainer/ddp_cpu.yaml",
                     "rnnbench/conf/optim/adam.yaml", "rnnbench/cells/gru.py", "rnnbench/tasks/adding.py",
                     "rnnbench/report/__init__.py", "rnnbench/report/stats.py"):
        assert required in names, required
    shipped = {n for n in names if n.endswith(".yaml")}
    on_disk = {"rnnbench/conf/" + p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert on_disk <= shipped, f"YAML files missing from the wheel (add their folder to pyproject's packages): " \
                               f"{sorted(on_disk - shipped)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "rnnbench = rnnbench.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
