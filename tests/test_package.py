"""The package imports without a GPU and without the optional extras; the CLI dispatches."""

import subprocess
import sys


def test_import_without_extras():
    code = (
        "import sys\n"
        "sys.modules['tensorrt'] = None\n"  # a None entry makes `import tensorrt` raise ImportError
        "sys.modules['pycuda'] = None\n"
        "import rerender.filter, rerender.engines, rerender.export, rerender.native\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_unknown_command_is_usage_error():
    out = subprocess.run(
        [sys.executable, "-m", "rerender.filter.cli", "frobnicate"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "unknown command" in out.stderr
    assert "Traceback" not in out.stderr
