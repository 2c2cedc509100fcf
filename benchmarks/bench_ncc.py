"""fastwarp.ncc (the windowed NCC loss) against the ways registration code computes it today (the
baselines of :mod:`fastwarp.app.bench.baselines`: VoxelMorph's conv formula, neurite's, MONAI's,
and on CUDA fused_lncc's and FireANTs'), one pytest-benchmark group per case
(``ncc-{2d,3d}-<size>-{cpu,cuda}-w<window>-<mode>``).

The sizes, inputs and timed calls are ``fastwarp bench``'s
(:mod:`fastwarp.app.bench.cases`: 2-D and 3-D window 9, and on CUDA fused_lncc's headline shape
``2x16x128x128x128`` window 7; ``--fw-size=tiny`` shrinks them, window 3); tests/test_bench_baselines.py
checks that the baselines compute fastwarp's loss. Modes: ``fwd``, the loss alone; ``fwdbwd``, a
training step's loss and its gradient to ``a`` (the moving image); ``fwdbwd-both``, the gradients to
both inputs (template building, symmetric registration), left out of the 3-D CPU case (VoxelMorph's
dense 9³ conv backward takes 8-15 s a call there) and of the baselines that differentiate with
respect to one input only.

Every case records in ``extra_info`` its implementation, shape, window, mode, device, threads and
versions; the peak extra memory of one call (:func:`fastwarp.app.bench.measure.peak_extra_memory`),
also in units of one input volume (``peak_extra_volumes``); and the bytes any implementation must
move, with the achieved GB/s when timed.
"""

import pytest

from benchutil import build_or_skip, record_bandwidth, time_call
from fastwarp.app.bench.baselines import NCC_IMPLS
from fastwarp.app.bench.cases import DTYPE, NCC_CASES, NCC_MODES, NCC_NO_BOTH, ncc_call, ncc_inputs
from fastwarp.app.bench.measure import nbytes, ncc_bytes_moved, run_info


@pytest.mark.parametrize("impl_name", list(NCC_IMPLS))
@pytest.mark.parametrize("mode", NCC_MODES)
@pytest.mark.parametrize("case_name", list(NCC_CASES["full"]))
def test_ncc(benchmark, device, cpu_threads, fw_size, case_name, mode, impl_name):
    case = NCC_CASES[fw_size][case_name]
    if device.type not in case.shapes:
        pytest.skip(f"case {case_name} runs on {', '.join(case.shapes)} only")
    if mode == "fwdbwd-both" and (case_name, device.type) in NCC_NO_BOTH:
        pytest.skip("fwdbwd-both is left out of the 3-D CPU case (voxelmorph-classic takes seconds a call)")
    shape, window, nd = case.shapes[device.type], case.window, case.nd
    impl = build_or_skip(NCC_IMPLS[impl_name], nd, window, device, DTYPE)
    if mode == "fwdbwd-both" and not impl.grad_both:
        pytest.skip(f"{impl_name} differentiates with respect to one input only")
    inputs = ncc_inputs(shape, device, mode)

    size = "x".join(map(str, shape if shape[0] * shape[1] > 1 else shape[2:]))
    benchmark.group = f"ncc-{nd}d-{size}-{device.type}-w{window}-{mode}"
    benchmark.extra_info.update(impl=impl_name, impl_version=impl.version, shape=list(shape), window=window,
                                mode=mode, grads={"fwd": "none", "fwdbwd": "a", "fwdbwd-both": "a,b"}[mode],
                                dtype=str(DTYPE), **run_info(device, cpu_threads, inputs))
    peak = time_call(benchmark, ncc_call(impl, inputs, mode), device, memory=True)["peak_extra_bytes"]
    benchmark.extra_info["peak_extra_volumes"] = None if peak is None else round(peak / nbytes(inputs[0][0]), 2)
    record_bandwidth(benchmark, ncc_bytes_moved(inputs[0][0], mode))
