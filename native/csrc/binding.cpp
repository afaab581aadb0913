// Placeholder module so the package builds; replaced by the synthesizer binding (issue 3).
#include <pybind11/pybind11.h>
PYBIND11_MODULE(_synth, m) { m.attr("BUILT") = true; }
