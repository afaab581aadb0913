"""Build of the native patch synthesizer (rerender.native._synth), compiled when `pip install` runs.

Everything else about the package is declared in pyproject.toml.
"""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext = Pybind11Extension(
    "rerender.native._synth",
    sources=["native/csrc/binding.cpp"],
    include_dirs=["native/csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
