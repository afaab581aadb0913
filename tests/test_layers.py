"""Layers point down only: native <- engines <- export <- filter.

A module may import from its own layer or from a lower one, never from a higher one: the runtime (engines)
knows nothing of the command line (filter) nor of the exporter (export), and the synthesizer (native) knows
nothing of either. Every module of the four packages is parsed with `ast`; every `import`, `from ... import`
(relative or absolute, at module level or inside a function) and every `importlib.import_module` /
`importlib.util.find_spec` / `__import__` call with a literal `rerender.` name counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first; the folder of each package of the `rerender` namespace (pyproject.toml, package-dir).
LAYERS = ("native", "engines", "export", "filter")
DYNAMIC_IMPORTS = {"import_module", "find_spec", "__import__"}


def module_name(layer: str, path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root / layer).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["rerender", layer, *parts])


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, `module` being the importer's name."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if stem.count(".") >= 1:
                found.append((node.lineno, stem))
            else:  # `from rerender import filter`, `from .. import export`: the names are the packages
                found.extend(
                    (node.lineno, f"{stem}.{alias.name}") for alias in node.names if alias.name != "*"
                )
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in DYNAMIC_IMPORTS and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.append((node.lineno, first.value))
    return found


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "rerender" and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def upward_imports(root: Path = ROOT) -> list[str]:
    """One line per import of a higher layer: 'rerender.engines.x (engines/x.py:12) imports rerender.filter.y'."""
    problems = []
    for layer in LAYERS:
        own = LAYERS.index(layer)
        for path in sorted((root / layer).rglob("*.py")):
            module = module_name(layer, path, root)
            source = path.read_text(encoding="utf-8")
            for line, name in imported_modules(source, module, path.name == "__init__.py"):
                target = layer_of(name)
                if target is not None and target > own:
                    where = f"{path.relative_to(root)}:{line}"
                    problems.append(f"{module} ({where}) imports {name}")
    return sorted(set(problems))


def test_every_layer_imports_only_its_own_or_lower_layers():
    problems = upward_imports()
    assert not problems, (
        "imports from a higher layer (order: " + " <- ".join(LAYERS) + "):\n" + "\n".join(problems)
    )


def test_the_packages_are_where_the_scan_looks():
    for layer in LAYERS:
        assert (ROOT / layer / "__init__.py").is_file(), f"{layer}/ is not a package folder of the repository"
    assert sum(1 for layer in LAYERS for _ in (ROOT / layer).rglob("*.py")) > 40


@pytest.mark.parametrize(
    "source",
    [
        "from ..filter.errors import UsageError\n",
        "from ..filter import errors\n",
        "from .. import filter\n",
        "import rerender.filter.errors\n",
        "from rerender.export.cache import atomic_write\n",
        "from rerender import export\n",
        "def f():\n    from ..export.cache import EngineCache\n    return EngineCache\n",
        "import importlib\nimportlib.import_module('rerender.filter.job')\n",
        "class A:\n    def m(self):\n        import rerender.filter as f\n        return f\n",
    ],
)
def test_the_scan_finds_an_upward_import_however_it_is_written(tmp_path, source):
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "__init__.py").write_text("")
    (tmp_path / "engines" / "planted.py").write_text("from .specs import NetworkSpec\n" + source)
    (tmp_path / "filter" / "fine.py").write_text("from ..engines import loading\nimport rerender.native\n")
    problems = upward_imports(tmp_path)
    assert len(problems) >= 1 and all(
        p.startswith("rerender.engines.planted (engines/planted.py:") for p in problems
    )


def test_relative_imports_resolve_from_subpackages():
    found = imported_modules(
        "from ...engines import flow\nfrom . import x\n", "rerender.filter.io.source", False
    )
    assert [name for _, name in found] == ["rerender.engines", "rerender.filter.io"]
    found = imported_modules("from .. import errors\n", "rerender.filter.watch", True)
    assert [name for _, name in found] == ["rerender.filter"]
    found = imported_modules("from .. import export, native\n", "rerender.engines.x", False)
    assert [name for _, name in found] == ["rerender.export", "rerender.native"]
