// The host bodies of the four sampling ops (warp / grid_sample, forward / backward),
// written once over a Backend that only knows how to loop:
//
//   struct Backend {
//     static Guard device_guard(const at::Tensor&);   // RAII: run on this tensor's device
//     template <typename scalar_t, typename coord_t, int NDIM>
//     static void forward(const SampleParams<NDIM>&, const scalar_t* image,
//                         const coord_t* coords, scalar_t* out,
//                         scalar_t* jacobian);                    // or nullptr
//     template <typename scalar_t, int NDIM>
//     static void backward(const SampleParams<NDIM>&, const scalar_t* grad_out,
//                          const scalar_t* image, const scalar_t* coords,
//                          at::opmath_type<scalar_t>* grad_image,  // zeroed, or nullptr
//                          scalar_t* grad_coords);                 // or nullptr
//   };
#pragma once

#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "sample_host.h"

namespace fastwarp {

// Returns (output, jacobian); the jacobian d(output)/d(coordinate value along axis k),
// (N, C, NDIM, *out_spatial), is computed only when asked (see Note [Forward Jacobian]) and
// is an empty tensor otherwise.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> sample_forward(const at::Tensor& image, const at::Tensor& coords,
                                                  CoordKind kind, int64_t interp_code,
                                                  int64_t padding_code, bool align_corners,
                                                  bool jacobian) {
  const Interp interp = to_interp(interp_code);
  const Padding padding = to_padding(padding_code);
  check_sample_args(image, coords, kind, interp);
  TORCH_CHECK(!jacobian || (interp == Interp::Linear && at::isFloatingType(image.scalar_type())),
              "fastwarp: the forward Jacobian needs linear interpolation of a floating image");
  const std::vector<int64_t> out_shape = output_shape(image.sizes(), coords, kind);
  at::Tensor out = at::empty(out_shape, image.options());
  std::vector<int64_t> jac_shape = {0};
  if (jacobian) {
    jac_shape = {out_shape[0], out_shape[1], image.dim() - 2};
    jac_shape.insert(jac_shape.end(), out_shape.begin() + 2, out_shape.end());
  }
  at::Tensor jac = at::empty(jac_shape, image.options());
  if (out.numel() == 0) return {out, jac};  // nothing to sample (see check_input_spatial)
  dispatch_ndim(image.dim() - 2, [&](auto ndim_tag) {
    constexpr int NDIM = decltype(ndim_tag)::value;
    SampleParams<NDIM> P =
        make_params<NDIM>(image.sizes(), image, coords, kind, interp, padding, align_corners);
    set_output(&P, out);
    if (jacobian) set_jacobian(&P, jac);
    dispatch_sample_types(image.scalar_type(), coords.scalar_type(),
                          [&](auto image_tag, auto coord_tag) {
                            using scalar_t = typename decltype(image_tag)::type;
                            using coord_t = typename decltype(coord_tag)::type;
                            Backend::template forward<scalar_t, coord_t, NDIM>(
                                P, image.const_data_ptr<scalar_t>(),
                                coords.const_data_ptr<coord_t>(), out.mutable_data_ptr<scalar_t>(),
                                jacobian ? jac.mutable_data_ptr<scalar_t>() : nullptr);
                          });
  });
  return {out, jac};
}

// output_mask = {grad of the image, grad of the coordinates}; a gradient not asked for
// comes back as an empty tensor. `image` is only needed (and only saved by autograd) for
// the coordinate gradient of linear interpolation.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> sample_backward(const at::Tensor& grad_out,
                                                   const std::optional<at::Tensor>& image_opt,
                                                   at::IntArrayRef image_size,
                                                   const at::Tensor& coords, CoordKind kind,
                                                   int64_t interp_code, int64_t padding_code,
                                                   bool align_corners,
                                                   std::array<bool, 2> output_mask) {
  const Interp interp = to_interp(interp_code);
  const Padding padding = to_padding(padding_code);
  const at::Tensor image = image_opt.has_value() ? *image_opt : at::Tensor();
  const bool want_image = output_mask[0];
  const bool want_coords = output_mask[1];
  check_scattered("grad_output", grad_out, image_size, coords, kind);
  const bool need_image = want_coords && interp == Interp::Linear;
  TORCH_CHECK(!need_image || image.defined(),
              "fastwarp: the coordinate gradient needs the image");
  if (image.defined()) {
    TORCH_CHECK(image.sizes() == image_size, "fastwarp: image does not match image_size");
    check_sample_args(image, coords, kind, interp);
  }

  at::Tensor grad_image = want_image ? at::zeros(image_size, grad_out.options())
                                     : at::empty({0}, grad_out.options());
  at::Tensor grad_coords = want_coords ? at::empty(coords.sizes(), coords.options())
                                       : at::empty({0}, coords.options());
  if (!want_image && !want_coords) return {grad_image, grad_coords};
  if (grad_out.numel() == 0) {  // no output point, or no image to sample: zero gradients
    if (want_coords) grad_coords.zero_();
    return {grad_image, grad_coords};
  }

  // Half and bfloat16 image gradients are accumulated in float, then rounded once.
  const bool low_precision = grad_out.scalar_type() == at::kHalf ||
                             grad_out.scalar_type() == at::kBFloat16;
  at::Tensor grad_image_acc =
      (want_image && low_precision) ? at::zeros(image_size, grad_out.options().dtype(at::kFloat))
                                    : grad_image;

  dispatch_ndim(static_cast<int64_t>(image_size.size()) - 2, [&](auto ndim_tag) {
    constexpr int NDIM = decltype(ndim_tag)::value;
    SampleParams<NDIM> P =
        make_params<NDIM>(image_size, image, coords, kind, interp, padding, align_corners);
    set_output(&P, grad_out);
    if (want_coords) set_grad_coords(&P, grad_coords, kind);
    if (want_image) set_grad_image(&P, grad_image_acc);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad_out.scalar_type(), "fastwarp_sample_backward", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          Backend::template backward<scalar_t, NDIM>(
              P, grad_out.const_data_ptr<scalar_t>(),
              need_image ? image.const_data_ptr<scalar_t>() : nullptr,
              coords.const_data_ptr<scalar_t>(),
              want_image ? grad_image_acc.mutable_data_ptr<acc_t>() : nullptr,
              want_coords ? grad_coords.mutable_data_ptr<scalar_t>() : nullptr);
        });
  });
  if (want_image && low_precision) grad_image.copy_(grad_image_acc);
  return {grad_image, grad_coords};
}

// ---------------------------------------------------------------------------------------
// Affine sampling (Note [Affine sampling]).

// Checks affine_warp's arguments; returns the coordinate batch (1 or N).
inline int64_t check_affine_args(at::IntArrayRef image_size, at::ScalarType image_type,
                                 c10::Device device, const at::Tensor& disp, const at::Tensor& affine,
                                 at::IntArrayRef out_size) {
  const int64_t dim = static_cast<int64_t>(image_size.size());
  TORCH_CHECK(dim == 4 || dim == 5, "fastwarp: image must be 4-D or 5-D, got ", dim, "-D");
  const int64_t nd = dim - 2, N = image_size[0];
  TORCH_CHECK(static_cast<int64_t>(out_size.size()) == nd, "fastwarp: out_size must have ", nd,
              " entries, got ", out_size);
  for (int64_t s : out_size) TORCH_CHECK(s >= 0, "fastwarp: out_size must be >= 0, got ", out_size);
  TORCH_CHECK(affine.dim() == 3 && affine.size(1) == nd && affine.size(2) == nd + 1,
              "fastwarp: affine must be (B, ", nd, ", ", nd + 1, "), got ", affine.sizes());
  TORCH_CHECK(affine.size(0) == 1 || affine.size(0) == N, "fastwarp: affine batch must be 1 or the image batch");
  TORCH_CHECK(affine.device() == device, "fastwarp: image and affine on different devices");
  TORCH_CHECK(affine.scalar_type() == at::kFloat || affine.scalar_type() == at::kDouble ||
                  (at::isFloatingType(image_type) && affine.scalar_type() == image_type),
              "fastwarp: affine must be float32 or float64, or the floating image's dtype");
  if (at::isFloatingType(image_type))
    TORCH_CHECK(affine.scalar_type() == image_type, "fastwarp: a floating image and affine must share a dtype");
  int64_t batch = affine.size(0);
  if (disp.defined()) {
    TORCH_CHECK(disp.dim() == dim && disp.size(1) == nd, "fastwarp: disp must be (B, ", nd, ", *out_size)");
    TORCH_CHECK(disp.device() == device, "fastwarp: image and disp on different devices");
    TORCH_CHECK(disp.scalar_type() == affine.scalar_type(), "fastwarp: disp and affine must share a dtype");
    TORCH_CHECK(disp.size(0) == 1 || disp.size(0) == N, "fastwarp: disp batch must be 1 or the image batch");
    for (int64_t k = 0; k < nd; ++k)
      TORCH_CHECK(disp.size(2 + k) == out_size[k], "fastwarp: disp's spatial shape must be out_size");
    batch = std::max(batch, disp.size(0));
  }
  bool any_out = N > 0 && image_size[1] > 0;
  for (int64_t s : out_size) any_out = any_out && s > 0;
  if (any_out) check_input_spatial(image_size);
  return batch;
}

template <int NDIM>
SampleParams<NDIM> make_affine_params(at::IntArrayRef image_size, const at::Tensor& image,
                                      const at::Tensor& disp, const at::Tensor& affine,
                                      at::IntArrayRef out_size, int64_t batch, Interp interp,
                                      Padding padding) {
  SampleParams<NDIM> P{};
  P.N = image_size[0];
  P.C = image_size[1];
  P.interp = interp;
  P.padding = padding;
  P.displacement = false;
  P.align_corners = true;  // reflection about the corner voxels' centres, as the warp's
  if (image.defined()) {
    P.img_stride_n = image.stride(0);
    P.img_stride_c = image.stride(1);
  }
  P.coord_batch = batch;
  P.coord_stride_n = disp.defined() && disp.size(0) > 1 ? disp.stride(0) : 0;
  for (int k = 0; k < NDIM; ++k) {
    P.in_size[k] = image_size[2 + k];
    if (image.defined()) P.img_stride[k] = image.stride(2 + k);
    P.out_size[k] = out_size[k];
    P.coord_stride[k] = disp.defined() ? disp.stride(2 + k) : 0;
    P.coord_axis_offset[k] = disp.defined() ? k * disp.stride(1) : 0;
    P.scale[k] = 1.0;
    P.scale_f[k] = 1.0f;
    P.limit[k] = static_cast<double>(P.in_size[k] + 1);
    P.limit_f[k] = static_cast<float>(P.limit[k]);
  }
  P.affine = affine.const_data_ptr();
  P.affine_stride_n = affine.size(0) > 1 ? NDIM * (NDIM + 1) : 0;
  return P;
}

template <typename Backend>
at::Tensor affine_warp(const at::Tensor& image, const std::optional<at::Tensor>& disp_opt,
                       const at::Tensor& affine_in, at::IntArrayRef out_size, int64_t interp_code,
                       int64_t padding_code) {
  const Interp interp = to_interp(interp_code);
  const Padding padding = to_padding(padding_code);
  const at::Tensor disp = disp_opt.has_value() ? *disp_opt : at::Tensor();
  const int64_t batch =
      check_affine_args(image.sizes(), image.scalar_type(), image.device(), disp, affine_in, out_size);
  TORCH_CHECK(at::isFloatingType(image.scalar_type()) || interp == Interp::Nearest,
              "fastwarp: integer images need nearest interpolation");
  std::vector<int64_t> shape = {image.size(0), image.size(1)};
  shape.insert(shape.end(), out_size.begin(), out_size.end());
  at::Tensor out = at::empty(shape, image.options());
  if (out.numel() == 0) return out;
  const at::Tensor affine = affine_in.contiguous();
  dispatch_ndim(image.dim() - 2, [&](auto ndim_tag) {
    constexpr int NDIM = decltype(ndim_tag)::value;
    SampleParams<NDIM> P = make_affine_params<NDIM>(image.sizes(), image, disp, affine, out_size,
                                                    batch, interp, padding);
    set_output(&P, out);
    dispatch_sample_types(image.scalar_type(), affine.scalar_type(), [&](auto image_tag, auto coord_tag) {
      using scalar_t = typename decltype(image_tag)::type;
      using coord_t = typename decltype(coord_tag)::type;
      Backend::template forward<scalar_t, coord_t, NDIM>(
          P, image.const_data_ptr<scalar_t>(), disp.defined() ? disp.const_data_ptr<coord_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), nullptr);
    });
  });
  return out;
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> affine_warp_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& image_opt, at::IntArrayRef image_size,
    const std::optional<at::Tensor>& disp_opt, const at::Tensor& affine_in, int64_t interp_code,
    int64_t padding_code, std::array<bool, 2> output_mask) {
  const Interp interp = to_interp(interp_code);
  const Padding padding = to_padding(padding_code);
  const at::Tensor image = image_opt.has_value() ? *image_opt : at::Tensor();
  const at::Tensor disp = disp_opt.has_value() ? *disp_opt : at::Tensor();
  TORCH_CHECK(image_size.size() == 4 || image_size.size() == 5, "fastwarp: image_size must have 4 or 5 entries");
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()) && grad_out.dim() == static_cast<int64_t>(image_size.size()),
              "fastwarp: grad_output must be a floating (N, C, *out_size) tensor");
  const at::IntArrayRef out_size = grad_out.sizes().slice(2);
  const int64_t batch =
      check_affine_args(image_size, grad_out.scalar_type(), grad_out.device(), disp, affine_in, out_size);
  TORCH_CHECK(grad_out.size(0) == image_size[0] && grad_out.size(1) == image_size[1],
              "fastwarp: grad_output's batch and channels must be the image's");
  const bool want_image = output_mask[0], want_source = output_mask[1];
  const bool need_image = want_source && interp == Interp::Linear;
  TORCH_CHECK(!need_image || image.defined(), "fastwarp: the coordinate gradient needs the image");
  if (image.defined()) {
    TORCH_CHECK(image.sizes() == image_size, "fastwarp: image does not match image_size");
    TORCH_CHECK(image.scalar_type() == grad_out.scalar_type() && image.device() == grad_out.device(),
                "fastwarp: image and grad_output must share a dtype and device");
  }
  std::vector<int64_t> source_shape = {batch, static_cast<int64_t>(image_size.size()) - 2};
  source_shape.insert(source_shape.end(), out_size.begin(), out_size.end());
  at::Tensor grad_image = want_image ? at::zeros(image_size, grad_out.options()) : at::empty({0}, grad_out.options());
  at::Tensor grad_source = want_source ? at::empty(source_shape, grad_out.options()) : at::empty({0}, grad_out.options());
  if ((!want_image && !want_source) || grad_out.numel() == 0) {
    if (want_source) grad_source.zero_();
    return {grad_image, grad_source};
  }
  const bool low_precision = grad_out.scalar_type() == at::kHalf || grad_out.scalar_type() == at::kBFloat16;
  at::Tensor grad_image_acc =
      (want_image && low_precision) ? at::zeros(image_size, grad_out.options().dtype(at::kFloat)) : grad_image;
  const at::Tensor affine = affine_in.contiguous();
  dispatch_ndim(static_cast<int64_t>(image_size.size()) - 2, [&](auto ndim_tag) {
    constexpr int NDIM = decltype(ndim_tag)::value;
    SampleParams<NDIM> P = make_affine_params<NDIM>(image_size, need_image ? image : at::Tensor(), disp,
                                                    affine, out_size, batch, interp, padding);
    set_output(&P, grad_out);
    if (want_source) set_grad_coords(&P, grad_source, CoordKind::Displacement);
    if (want_image) set_grad_image(&P, grad_image_acc);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad_out.scalar_type(), "fastwarp_affine_warp_backward", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          Backend::template backward<scalar_t, NDIM>(
              P, grad_out.const_data_ptr<scalar_t>(), need_image ? image.const_data_ptr<scalar_t>() : nullptr,
              disp.defined() ? disp.const_data_ptr<scalar_t>() : nullptr,
              want_image ? grad_image_acc.mutable_data_ptr<acc_t>() : nullptr,
              want_source ? grad_source.mutable_data_ptr<scalar_t>() : nullptr);
        });
  });
  if (want_image && low_precision) grad_image.copy_(grad_image_acc);
  return {grad_image, grad_source};
}

// Note [Derivative ops]
// ~~~~~~~~~~~~~~~~~~~~~
// sample_derivative(image, coords, order) = d^order(sample of image at coords)/d(coords),
// (N, C, *out_spatial); splat_derivative(values, image_size, coords, order) is its
// transpose in the image: every output point's value scattered onto the corners it reads,
// with the same weights, (N, C, *in_spatial). order has one entry per spatial axis, in
// axis order (Note [Coordinate conventions]); the weights are Note [Derivative weights]'.
// With order 0 they are the forward and the image gradient; fastwarp/_ops.py builds every
// derivative of the sampling ops past the first-order backward from these two (Note
// [Derivatives of any order]). A derivative that vanishes (nearest, or linear twice along
// one axis) is a zero tensor and launches nothing.
template <typename Backend>
at::Tensor sample_derivative(const at::Tensor& image, const at::Tensor& coords, int64_t kind_code,
                             int64_t interp_code, int64_t padding_code, bool align_corners,
                             at::IntArrayRef order) {
  const CoordKind kind = to_coord_kind(kind_code);
  const Interp interp = to_interp(interp_code);
  const Padding padding = to_padding(padding_code);
  check_sample_args(image, coords, kind, interp);
  TORCH_CHECK(at::isFloatingType(image.scalar_type()),
              "fastwarp: derivatives of the sampling need a floating image");
  const std::vector<int64_t> out_shape = output_shape(image.sizes(), coords, kind);
  if (derivative_vanishes(order, interp)) return at::zeros(out_shape, image.options());
  at::Tensor out = at::empty(out_shape, image.options());
  if (out.numel() == 0) return out;
  dispatch_ndim(image.dim() - 2, [&](auto ndim_tag) {
    constexpr int NDIM = decltype(ndim_tag)::value;
    SampleParams<NDIM> P = make_params<NDIM>(image.sizes(), image, coords, kind, interp, padding,
                                             align_corners);
    set_derivative_order(&P, order);
    set_output(&P, out);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, image.scalar_type(), "fastwarp_sample_derivative", [&] {
          Backend::template forward<scalar_t, scalar_t, NDIM>(
              P, image.const_data_ptr<scalar_t>(), coords.const_data_ptr<scalar_t>(),
              out.mutable_data_ptr<scalar_t>(), nullptr);
        });
  });
  return out;
}

template <typename Backend>
at::Tensor splat_derivative(const at::Tensor& values, at::IntArrayRef image_size,
                            const at::Tensor& coords, int64_t kind_code, int64_t interp_code,
                            int64_t padding_code, bool align_corners, at::IntArrayRef order) {
  const CoordKind kind = to_coord_kind(kind_code);
  const Interp interp = to_interp(interp_code);
  const Padding padding = to_padding(padding_code);
  check_scattered("values", values, image_size, coords, kind);
  at::Tensor grad_image = at::zeros(image_size, values.options());
  if (derivative_vanishes(order, interp) || values.numel() == 0) return grad_image;
  const bool low_precision = values.scalar_type() == at::kHalf || values.scalar_type() == at::kBFloat16;
  at::Tensor acc = low_precision ? at::zeros(image_size, values.options().dtype(at::kFloat)) : grad_image;
  dispatch_ndim(static_cast<int64_t>(image_size.size()) - 2, [&](auto ndim_tag) {
    constexpr int NDIM = decltype(ndim_tag)::value;
    SampleParams<NDIM> P = make_params<NDIM>(image_size, at::Tensor(), coords, kind, interp, padding,
                                             align_corners);
    set_derivative_order(&P, order);
    set_output(&P, values);
    set_grad_image(&P, acc);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, values.scalar_type(), "fastwarp_splat_derivative", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          Backend::template backward<scalar_t, NDIM>(P, values.const_data_ptr<scalar_t>(), nullptr,
                                                     coords.const_data_ptr<scalar_t>(),
                                                     acc.mutable_data_ptr<acc_t>(), nullptr);
        });
  });
  if (low_precision) grad_image.copy_(acc);
  return grad_image;
}

// The schemas (csrc/schemas.h) bound to one backend.
template <typename Backend>
struct SampleOps {
  static std::tuple<at::Tensor, at::Tensor> warp(const at::Tensor& image, const at::Tensor& disp,
                                                 int64_t interp, int64_t padding, bool jacobian) {
    [[maybe_unused]] const auto guard = Backend::device_guard(image);
    return sample_forward<Backend>(image, disp, CoordKind::Displacement, interp, padding, true,
                                   jacobian);
  }

  static std::tuple<at::Tensor, at::Tensor> warp_backward(
      const at::Tensor& grad_out, const std::optional<at::Tensor>& image,
      at::IntArrayRef image_size, const at::Tensor& disp, int64_t interp, int64_t padding,
      std::array<bool, 2> output_mask) {
    [[maybe_unused]] const auto guard = Backend::device_guard(grad_out);
    return sample_backward<Backend>(grad_out, image, image_size, disp, CoordKind::Displacement,
                                    interp, padding, true, output_mask);
  }

  static std::tuple<at::Tensor, at::Tensor> grid_sample(const at::Tensor& input,
                                                        const at::Tensor& grid, int64_t interp,
                                                        int64_t padding, bool align_corners,
                                                        bool jacobian) {
    [[maybe_unused]] const auto guard = Backend::device_guard(input);
    return sample_forward<Backend>(input, grid, CoordKind::Grid, interp, padding, align_corners,
                                   jacobian);
  }

  static std::tuple<at::Tensor, at::Tensor> grid_sample_backward(
      const at::Tensor& grad_out, const std::optional<at::Tensor>& input,
      at::IntArrayRef input_size, const at::Tensor& grid, int64_t interp, int64_t padding,
      bool align_corners, std::array<bool, 2> output_mask) {
    [[maybe_unused]] const auto guard = Backend::device_guard(grad_out);
    return sample_backward<Backend>(grad_out, input, input_size, grid, CoordKind::Grid, interp,
                                    padding, align_corners, output_mask);
  }

  static at::Tensor affine_warp(const at::Tensor& image, const std::optional<at::Tensor>& disp,
                                const at::Tensor& affine, at::IntArrayRef out_size, int64_t interp,
                                int64_t padding) {
    [[maybe_unused]] const auto guard = Backend::device_guard(image);
    return fastwarp::affine_warp<Backend>(image, disp, affine, out_size, interp, padding);
  }

  static std::tuple<at::Tensor, at::Tensor> affine_warp_backward(
      const at::Tensor& grad_out, const std::optional<at::Tensor>& image, at::IntArrayRef image_size,
      const std::optional<at::Tensor>& disp, const at::Tensor& affine, int64_t interp, int64_t padding,
      std::array<bool, 2> output_mask) {
    [[maybe_unused]] const auto guard = Backend::device_guard(grad_out);
    return fastwarp::affine_warp_backward<Backend>(grad_out, image, image_size, disp, affine, interp,
                                                   padding, output_mask);
  }

  static at::Tensor sample_derivative(const at::Tensor& image, const at::Tensor& coords,
                                      int64_t kind, int64_t interp, int64_t padding,
                                      bool align_corners, at::IntArrayRef order) {
    [[maybe_unused]] const auto guard = Backend::device_guard(image);
    return fastwarp::sample_derivative<Backend>(image, coords, kind, interp, padding,
                                                align_corners, order);
  }

  static at::Tensor splat_derivative(const at::Tensor& values, at::IntArrayRef image_size,
                                     const at::Tensor& coords, int64_t kind, int64_t interp,
                                     int64_t padding, bool align_corners, at::IntArrayRef order) {
    [[maybe_unused]] const auto guard = Backend::device_guard(values);
    return fastwarp::splat_derivative<Backend>(values, image_size, coords, kind, interp, padding,
                                               align_corners, order);
  }
};

template <typename Backend>
void register_sample_ops(torch::Library& m) {
  m.impl("warp", &SampleOps<Backend>::warp);
  m.impl("warp_backward", &SampleOps<Backend>::warp_backward);
  m.impl("grid_sample", &SampleOps<Backend>::grid_sample);
  m.impl("grid_sample_backward", &SampleOps<Backend>::grid_sample_backward);
  m.impl("affine_warp", &SampleOps<Backend>::affine_warp);
  m.impl("affine_warp_backward", &SampleOps<Backend>::affine_warp_backward);
  m.impl("sample_derivative", &SampleOps<Backend>::sample_derivative);
  m.impl("splat_derivative", &SampleOps<Backend>::splat_derivative);
}

}  // namespace fastwarp
