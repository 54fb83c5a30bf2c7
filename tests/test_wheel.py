"""The built wheel, installed in a fresh virtual environment (not the editable install), ships what the plugin needs:
npe2 finds its manifest and the bundled models load with their checksums."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import napari_samtune, npe2
from napari_samtune.core.models import load_model
assert "site-packages" in napari_samtune.__file__, napari_samtune.__file__
pm = npe2.PluginManager.instance()
pm.discover()
manifest = pm.get_manifest("napari-samtune")
print(len(manifest.contributions.widgets), len(manifest.contributions.readers), len(manifest.contributions.writers))
for name in ("samtune_small", "samtune_small_v1"):
    load_model(name, device="cpu")
"""


def test_the_wheel_installs_and_napari_finds_the_plugin(tmp_path):
    pytest.importorskip("build")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("napari_samtune-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    # The dependencies (torch, napari…) come from this environment's site-packages on PYTHONPATH, where the editable
    # install's .pth file is not read: napari_samtune itself can only come from the wheel.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages()), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([python, "-c", CHECK], check=True, capture_output=True, text=True, cwd=tmp_path, env=env)
    widgets, readers, writers = map(int, out.stdout.split()[-3:])
    assert widgets >= 3 and readers >= 1 and writers >= 1
