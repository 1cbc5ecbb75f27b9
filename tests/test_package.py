"""The package's public names stay what they are, whatever was imported before."""

from __future__ import annotations

import subprocess
import sys


def test_build_stays_the_function_after_its_module_is_imported() -> None:
    code = (
        "import recipec, inspect\n"
        "first = recipec.build\n"
        "import recipec.pipeline.build\n"
        "from recipec.pipeline.build import build\n"
        "assert inspect.isfunction(recipec.build), recipec.build\n"
        "assert recipec.build is first\n"
        "import sys; assert inspect.ismodule(sys.modules['recipec.pipeline.build'])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
