// fastwarp._C: the operator schemas (the only m.def in the project) and an empty Python
// module whose import loads this library and so registers them. The kernels are bound
// per backend in csrc/cpu and csrc/cuda; fake kernels, autograd and the friendly Python
// API are in fastwarp/_ops.py and fastwarp/warp.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace fastwarp {

// interp: 0 linear (bilinear / trilinear), 1 nearest.
// padding: 0 zeros, 1 border, 2 reflection.
// The forward ops return (output, jacobian): with jacobian=True (linear interpolation of a
// floating image) also d(output)/d(coordinate value along axis k), (N, C, ndim, *spatial),
// from which the coordinate gradient is one multiply-and-sum; else an empty tensor.
// The backward ops return (grad_image, grad_coordinates); a gradient whose output_mask
// entry is false comes back as an empty tensor. `image` / `input` may be None when the
// coordinate gradient is not requested; the image's shape is then taken from
// image_size / input_size.
TORCH_LIBRARY(fastwarp, m) {
  m.def(
      "warp(Tensor image, Tensor disp, int interp, int padding, bool jacobian=False) "
      "-> (Tensor, Tensor)");
  m.def(
      "warp_backward(Tensor grad_output, Tensor? image, SymInt[] image_size, Tensor disp, "
      "int interp, int padding, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def(
      "grid_sample(Tensor input, Tensor grid, int interp, int padding, bool align_corners, "
      "bool jacobian=False) -> (Tensor, Tensor)");
  m.def(
      "grid_sample_backward(Tensor grad_output, Tensor? input, SymInt[] input_size, Tensor grid, "
      "int interp, int padding, bool align_corners, bool[2] output_mask) -> (Tensor, Tensor)");

  // Windowed NCC (csrc/common/ncc.h): the local coefficient map, (N, C, *spatial), and its
  // backward (grad_a, grad_b), an empty tensor for a gradient whose mask entry is false.
  m.def("ncc(Tensor a, Tensor b, int[] window, float eps) -> Tensor");
  m.def(
      "ncc_backward(Tensor grad_output, Tensor a, Tensor b, int[] window, float eps, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
}

}  // namespace fastwarp
