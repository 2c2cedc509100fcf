// fastwarp._C_emu (and its sanitizer builds _C_emu_thread, _C_emu_address): the test build
// of the CUDA code. It defines the private twin namespace fastwarp_emu:: with the schemas
// of fastwarp:: (csrc/schemas.h); csrc/cuda/*.cu, compiled here by the host compiler under
// csrc/emu/cuda_emu.h, register their backends there as CPU kernels (see
// FASTWARP_CUDA_LIBRARY_IMPL in csrc/cuda/runtime.h). fastwarp/_emu.py routes the public
// API to these ops for the tests. Built only with FASTWARP_CUDA_EMU set (setup.py).
#include <Python.h>
#include <torch/library.h>

#include "../schemas.h"

#ifndef FASTWARP_EMU_MODULE
#error "FASTWARP_EMU_MODULE (the extension's module name) must be defined by the build"
#endif
#define FASTWARP_CONCAT2(a, b) a##b
#define FASTWARP_CONCAT(a, b) FASTWARP_CONCAT2(a, b)
#define FASTWARP_STR2(a) #a
#define FASTWARP_STR(a) FASTWARP_STR2(a)

extern "C" {
PyObject* FASTWARP_CONCAT(PyInit_, FASTWARP_EMU_MODULE)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, FASTWARP_STR(FASTWARP_EMU_MODULE),
                                          nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastwarp_emu, m) { fastwarp::define_schemas(m); }
