"""Package discovery for the `rerender` namespace and the build of the native patch synthesizer
(rerender.native._synth), compiled when `pip install` runs. Metadata lives in pyproject.toml."""

from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOTS = {
    "filter": "rerender.filter",
    "engines": "rerender.engines",
    "export": "rerender.export",
    "native": "rerender.native",
}


def namespace_packages() -> list[str]:
    """Every folder with an __init__.py below the four top-level folders, named inside `rerender`."""
    here = Path(__file__).parent
    names = []
    for folder, name in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here / folder)
            names.append(".".join([name, *rel.parts]))
    return names


ext = Pybind11Extension(
    "rerender.native._synth",
    sources=["native/csrc/binding.cpp", "native/csrc/synth_cpu.cpp"],
    depends=["native/csrc/synth_core.h", "native/csrc/synth_cpu.h", "native/csrc/pyramid.h"],
    include_dirs=["native/csrc"],
    cxx_std=17,
    # -O3 vectorises the contiguous patch-row SSD; no -march=native so wheels run on any x86-64.
    extra_compile_args=["-O3", "-fopenmp"],
    extra_link_args=["-fopenmp"],
)

setup(packages=namespace_packages(), ext_modules=[ext], cmdclass={"build_ext": build_ext})
