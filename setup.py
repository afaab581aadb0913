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
    # synth_kernels_exec.cpp includes native/cuda/synth_kernels.cu as host code (the CUDA schedule's CI run)
    # and loads the CUDA driver at run time, so the build needs no CUDA toolkit.
    sources=["native/csrc/binding.cpp", "native/csrc/synth_cpu.cpp", "native/csrc/synth_kernels_exec.cpp"],
    depends=[
        "native/csrc/synth_core.h",
        "native/csrc/synth_cpu.h",
        "native/csrc/synth_driver.h",
        "native/csrc/synth_kernels_exec.h",
        "native/csrc/kernel_host_shim.h",
        "native/csrc/pyramid.h",
        "native/cuda/synth_kernels.cu",
    ],
    include_dirs=["native/csrc"],
    cxx_std=17,
    # -O3 vectorises the contiguous patch-row SSD; no -march=native so wheels run on any x86-64.
    extra_compile_args=["-O3", "-fopenmp"],
    extra_link_args=["-fopenmp"],
    libraries=["dl"],
)

setup(packages=namespace_packages(), ext_modules=[ext], cmdclass={"build_ext": build_ext})
