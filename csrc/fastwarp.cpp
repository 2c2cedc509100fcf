// fastwarp._C: the operator schemas (csrc/schemas.h) and an empty Python module whose
// import loads this library and so registers them. The kernels are bound per backend in
// csrc/cpu and csrc/cuda; fake kernels, autograd and the friendly Python API are in
// fastwarp/_ops.py and fastwarp/warp.py.
#include <Python.h>
#include <torch/library.h>

#include "schemas.h"

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastwarp, m) { fastwarp::define_schemas(m); }
