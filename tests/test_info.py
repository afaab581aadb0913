"""`rerender info`: every component gets a status, every missing piece a one-sentence reason, no crash."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys

import av

EXPECTED = {
    "python",
    "torch",
    "cuda",
    "diffusers",
    "onnxruntime",
    "tensorrt",
    "cuda-driver",
    "av",
    "opencv",
    "nvcc",
}
STATUSES = {"ok", "missing", "unavailable", "error"}


def run_info(*args: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    # A None entry in sys.modules makes `import name` raise ImportError: the package "is missing".
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in block)
        + "from rerender.filter.cli import main\n"
        + f"status = main(['info', *{list(args)!r}])\n"
        # Which slow packages the report imported (it reads their versions from metadata instead).
        + "print('imported:', sorted(m for m in ('diffusers', 'transformers') if m in sys.modules), file=sys.stderr)\n"
        + "sys.exit(status)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def check_report(report: dict) -> None:
    components = report["components"]
    assert EXPECTED <= set(components)
    assert any(name.startswith("native") for name in components)
    for name, row in components.items():
        assert row["status"] in STATUSES, name
        if row["status"] == "ok":
            assert row["reason"] is None
        else:
            reason = row["reason"]
            assert isinstance(reason, str) and reason and "\n" not in reason, name
            assert f"{name}: {reason}" in report["missing"]
    assert len(report["missing"]) == sum(row["status"] != "ok" for row in components.values())


def test_json_report_has_every_component_with_status_and_reason():
    result = run_info("--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    check_report(report)
    rows = report["components"]
    assert rows["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert rows["av"]["version"] == av.__version__
    assert rows["av"]["details"]["ffmpeg"] == av.ffmpeg_version_info
    assert rows["torch"]["version"].split("+")[0] == importlib.metadata.version("torch").split("+")[0]
    assert rows["diffusers"]["version"] == importlib.metadata.version("diffusers")
    if importlib.util.find_spec("tensorrt") is None:
        assert rows["tensorrt"] == {
            "status": "missing",
            "version": None,
            "reason": "not installed (pip install 'rerender[gpu]')",
            "details": {},
        }
    import torch

    if not torch.cuda.is_available():
        assert rows["cuda"]["status"] == "unavailable"
        assert "torch" in rows["cuda"]["reason"]


def test_text_report_is_one_line_per_component():
    result = run_info()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    names = {line.split(":", 1)[0] for line in lines}
    assert EXPECTED <= names
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt: not installed (pip install 'rerender[gpu]')" in lines
    assert "imported: []" in result.stderr  # diffusers/transformers versions come from metadata


def test_missing_packages_become_reasons_not_crashes():
    result = run_info("--json", block=("torch", "onnxruntime", "cv2", "tensorrt", "rerender.native"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    check_report(report)
    rows = report["components"]
    for name in ("torch", "onnxruntime", "opencv"):
        assert rows[name]["status"] in ("error", "missing"), name
    assert rows["cuda"]["status"] == "unavailable" and "torch" in rows["cuda"]["reason"]
    assert rows["native"]["status"] == "error"
