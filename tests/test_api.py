"""The public API: every name in recipec.__all__ resolves, and `import recipec` stays torch-free."""

from __future__ import annotations

import subprocess
import sys

import recipec


def test_every_public_name_resolves():
    for name in recipec.__all__:
        assert getattr(recipec, name) is not None, name


def test_import_recipec_is_torch_free_from_any_directory(tmp_path):
    code = "import recipec, sys; recipec.load_recipe; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
