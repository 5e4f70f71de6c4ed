// statetap._C: importing it loads the op registrations of every csrc/*.cpp (each op's file
// registers its forward and step ops itself with TORCH_LIBRARY_FRAGMENT(statetap, ...)), so
// they are reachable as torch.ops.statetap.<op>.  This file adds only cpu_isa(), the
// instruction set the kernels run with (STATETAP_CPU_ISA, or the widest the CPU supports).
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "isa.h"

TORCH_LIBRARY_FRAGMENT(statetap, m) {
  m.def("cpu_isa() -> str", [] { return std::string(statetap::isa_name(statetap::current_isa())); });
}

static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                 "statetap's C++ CPU kernels (torch.ops.statetap.*)", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
