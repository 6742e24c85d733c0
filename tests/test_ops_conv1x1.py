"""xvol::conv1x1, the CPU kernel of the q/k/v projections, against F.conv2d; its autograd and dispatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xvol_lab.ops.kernels import backends as kernels
from xvol_lab.ops.kernels.conv1x1 import MIN_LANE_USE, conv1x1, lane_use, uses_cpu_kernel
from xvol_lab.ops.kernels.projection import phase_planes, project_qkv

pytestmark = pytest.mark.skipif(not kernels.cpu_kernels_available(), reason="no C++ toolchain")

TOL = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=1e-5, rtol=1e-5)}
# (B, C_in, C_out, H, W): images whose pixels fill whole vectors or end in a partial one (16 float / 8
# double lanes), single pixels, blocks whose 4 vectors span several images, and output channels that
# are not a multiple of the kernel's 6 rows.
SHAPES = [(1, 1, 1, 1, 1), (2, 5, 7, 9, 7), (3, 16, 24, 4, 4), (17, 8, 13, 2, 3), (2, 64, 192, 12, 12),
          (8, 32, 11, 7, 7), (1, 3, 6, 1, 40)]


def _operands(b, c, o, h, w, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, h, w, generator=gen, dtype=dtype), torch.randn(o, c, 1, 1, generator=gen, dtype=dtype),
            torch.randn(o, generator=gen, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_conv1x1_matches_conv2d(shape, dtype):
    x, w, b = _operands(*shape, dtype)
    for bias in (None, b):
        torch.testing.assert_close(torch.ops.xvol.conv1x1(x, w, bias), F.conv2d(x, w, bias), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_conv1x1_reads_views_in_place_and_copies_others(dtype):
    """A channel chunk and the first phase plane (image-contiguous, any batch and channel strides) are read
    where they lie; a strided view of the stride grid is copied first. The results equal F.conv2d's."""
    x, w, _ = _operands(3, 10, 7, 9, 7, dtype)
    planes = phase_planes(x, 2)  # (B, C, 4 * 5, 4): the first plane is x[:, :, ::2, ::2]
    views = {"channel chunk": x[:, 3:8], "phase plane": planes.view(3, 10, 4, 5, 4)[:, :, 0],
             "stride grid": x[:, :, ::2, ::2], "channels last": x.contiguous(memory_format=torch.channels_last)}
    for name, view in views.items():
        weight = w[:, : view.shape[1]]
        got = torch.ops.xvol.conv1x1(view, weight, None)
        assert got.is_contiguous(), name
        torch.testing.assert_close(got, F.conv2d(view.contiguous(), weight), **TOL[dtype], msg=name)


def test_threads_share_pixel_blocks_and_output_channels_with_identical_results():
    """16 images of 4x4 make 4 pixel blocks; with 2 threads the output channels are shared out too. Each
    output is summed by one thread in the same order, so the result is bit-identical to one thread's."""
    x, w, b = _operands(16, 32, 768, 4, 4, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.xvol.conv1x1(x, w, b)
        torch.set_num_threads(2)
        two = torch.ops.xvol.conv1x1(x, w, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    torch.testing.assert_close(two, F.conv2d(x, w, b), atol=1e-4, rtol=1e-5)


def test_lanes_past_an_image_never_reach_the_output():
    """The kernel reads whole vectors past an image's last pixel (plain loads are twice as fast as masked
    ones) and must drop those lanes: values past the image here are NaN, the output has none."""
    b, c, h, w = 3, 6, 5, 5
    storage = torch.full((b * c * h * w + 64,), float("nan"))
    storage[: b * c * h * w] = torch.randn(b * c * h * w)
    x = storage[: b * c * h * w].view(b, c, h, w)
    weight = torch.randn(13, c, 1, 1)
    y = torch.ops.xvol.conv1x1(x, weight, None)
    assert not y.isnan().any()
    torch.testing.assert_close(y, F.conv2d(x, weight), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_conv1x1_split_gives_the_chunks_as_separate_tensors(parts, dtype):
    """Output channels split into `parts` contiguous tensors, each its own allocation; parts of 5 rows
    straddle the kernel's 6-row blocks."""
    x, w, b = _operands(3, 7, 5 * parts, 9, 7, dtype)
    got = torch.ops.xvol.conv1x1_split(x, w, b, parts)
    assert len(got) == parts and len({t.untyped_storage().data_ptr() for t in got}) == parts
    assert all(t.is_contiguous() for t in got)
    torch.testing.assert_close(tuple(got), F.conv2d(x, w, b).chunk(parts, dim=1), **TOL[dtype])


def test_conv1x1_gradients():
    x, w, b = (t.requires_grad_() for t in _operands(2, 5, 7, 6, 5, torch.float64))
    assert torch.autograd.gradcheck(lambda x, w, b: torch.ops.xvol.conv1x1(x, w, b), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: torch.ops.xvol.conv1x1(x, w, None), (x, w))
    w3, b3 = (t.detach().repeat(3, *[1] * (t.dim() - 1)).requires_grad_() for t in (w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: torch.ops.xvol.conv1x1_split(x, w, b, 3), (x, w3, b3))
    # only some parts used: the others' gradients are zeros
    assert torch.autograd.gradcheck(lambda x, w, b: torch.ops.xvol.conv1x1_split(x, w, b, 3)[1], (x, w3, b3))


def test_conv1x1_rejects_mismatched_operands():
    with pytest.raises(RuntimeError, match="weight has 4 input channels, x 3"):
        torch.ops.xvol.conv1x1(torch.randn(1, 3, 2, 2), torch.randn(5, 4, 1, 1), None)
    with pytest.raises(RuntimeError, match="one value per output channel"):
        torch.ops.xvol.conv1x1(torch.randn(1, 3, 2, 2), torch.randn(5, 3, 1, 1), torch.randn(4))
    with pytest.raises(RuntimeError, match="parts must divide the output channels"):
        torch.ops.xvol.conv1x1_split(torch.randn(1, 3, 2, 2), torch.randn(5, 3, 1, 1), None, 2)


def _ops_run(fn) -> dict[str, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for event in prof.events():
        counts[event.name] = counts.get(event.name, 0) + 1
    return counts


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_projection_runs_the_kernel_where_images_fill_its_lanes_and_onednn_elsewhere():
    """q, k, v (one pass over x) and their input gradient by xvol::conv1x1(_split) where the images fill at
    least MIN_LANE_USE of the vector lanes; by oneDNN elsewhere (7x7: 49 of 64 float lanes) and under autocast
    (the kernel does not cast)."""
    assert lane_use(64, torch.float32) == 1.0 and lane_use(49, torch.float32) == 49 / 64
    assert lane_use(196, torch.float32) == 196 / 208 >= MIN_LANE_USE > lane_use(49, torch.float64) == 49 / 56
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for size, kernel in ((8, True), (14, True), (7, False)):
            x = torch.randn(2, 16, size, size, requires_grad=True)
            w = torch.randn(24, 16, 1, 1)
            assert uses_cpu_kernel(x) == kernel

            def run(x=x, w=w):
                q, k, v = project_qkv(x, w, None, 1)
                (q + k + v).sum().backward()

            counts = _ops_run(run)
            assert counts.get("xvol::conv1x1_split", 0) == (1 if kernel else 0)  # q, k, v in one pass over x
            assert counts.get("xvol::conv1x1", 0) == (1 if kernel else 0)  # their input gradient
            assert counts.get("aten::mkldnn_convolution", 0) == (0 if kernel else 3)
        x = torch.randn(2, 8, 8, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not uses_cpu_kernel(x) and conv1x1(x, torch.randn(4, 8, 1, 1)).dtype == torch.bfloat16
    finally:
        torch.set_num_threads(threads)
