"""The CUDA paths of the operators, reached from training and deployment as a user runs them (marked `gpu`,
skipped without CUDA): the Triton PSSA kernels and fused SDPA inside bf16-mixed channels-last training,
an inductor-compiled step, fp16 with a grad scaler, a training step free of host syncs, and the deploy
form's equality on CUDA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_close_scaled, randomize_batchnorm
from torch.profiler import ProfilerActivity, profile

from xvol_lab.data.device import DeviceNormalize
from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.ops import create_op, reparameterize
from xvol_lab.ops.kernels.backends import pssa_backend
from xvol_lab.tasks import fit
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.metrics import TRAIN_LOSS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SPEC = BackboneSpec.preset("resnet18", width_mult=0.25, stem="small")
XVOL = SPEC.with_stage(3, op="xvol_pssa", heads=2).with_stage(4, op="sa")


def bf16_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor,
              optimizer: torch.optim.Optimizer) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()


def cuda_kernel_names(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key for e in prof.key_averages()}


def test_bf16_channels_last_training_runs_the_triton_kernels_and_fused_attention(tmp_path):
    assert pssa_backend("cuda", torch.bfloat16) == "triton"
    config = load_run_config(None, [
        "data.name=shapes", "data.image_size=32", "data.num_classes=4", f"data.root={tmp_path / 'data'}",
        "data.num_train=32", "data.num_val=9", "data.batch_size=8", "model.width_mult=0.25",
        "model.stage3.op=xvol_pssa", "model.stage4.op=sa", "trainer.max_epochs=1",
        "trainer.accelerator=cuda", "trainer.devices=1", "trainer.precision=bf16-mixed",
        "trainer.channels_last=true"])
    result = fit(config, tmp_path / "run", progress=False)
    assert math.isfinite(result[TRAIN_LOSS])
    torch.manual_seed(0)
    model = build_classifier(XVOL, 4).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 4, (8,), device="cuda")
    names = " ".join(cuda_kernel_names(lambda: bf16_step(model, x, labels, optimizer)))
    for kernel in ("_pssa_fwd_kernel", "_pssa_bwd_query_kernel", "_pssa_bwd_key_kernel"):
        assert kernel in names
    assert "flash" in names or "fmha" in names or "efficient_attention" in names, names


def test_an_inductor_compiled_step_matches_eager():
    torch.manual_seed(0)
    eager = build_classifier(SPEC.with_stage(3, op="xvol_pssa"), 4).cuda()
    compiled_model = build_classifier(SPEC.with_stage(3, op="xvol_pssa"), 4).cuda()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend="inductor")
    x = torch.randn(4, 3, 32, 32, device="cuda")
    labels = torch.randint(0, 4, (4,), device="cuda")
    losses = []
    for model, forward in ((eager, eager), (compiled_model, compiled)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses.append([bf16_step(forward, x, labels, optimizer).item() for _ in range(3)])
    torch.testing.assert_close(losses[1], losses[0], atol=5e-2, rtol=5e-2)
    assert losses[1][2] < losses[1][0]  # it trains


def test_fp16_with_a_grad_scaler_trains_through_the_triton_kernels():
    torch.manual_seed(0)
    model = build_classifier(XVOL, 4).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 4, (8,), device="cuda")
    attn_out = []
    hook = model.backbone.layer3[0].op1.attn.register_forward_hook(lambda m, i, o: attn_out.append(o.dtype))
    losses = []
    for _ in range(4):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(x), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    hook.remove()
    assert set(attn_out) == {torch.float16}  # the PSSA branch ran in fp16 (the Triton kernels' fp16 path)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert math.isfinite(scaler.get_scale()) and scaler.get_scale() > 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_an_xvolution_training_step_makes_no_host_sync(channels_last):
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_classifier(XVOL, 4).cuda().to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    normalize = DeviceNormalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).pin_memory()
    labels = torch.randint(0, 4, (8,)).pin_memory()

    def step() -> None:
        x = normalize.images(images.to("cuda", non_blocking=True)).contiguous(memory_format=memory_format)
        bf16_step(model, x, labels.to("cuda", non_blocking=True), optimizer)

    step()  # builds the cached constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("stride, shift, dirs, heads", [(1, 1, 8, 1), (2, 2, 4, 2), (1, 3, 8, 4)])
def test_the_deploy_form_equals_the_train_form_on_cuda(monkeypatch, stride, shift, dirs, heads):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    op = randomize_batchnorm(create_op("xvol_pssa", 16, 32, stride, shift=shift, dirs=dirs, heads=heads)).cuda()
    x = torch.randn(2, 16, 13, 11, device="cuda")
    with torch.no_grad():
        assert_close_scaled(reparameterize(op.eval())(x), op(x), 1e-5)
    model = randomize_batchnorm(build_classifier(XVOL, 4)).cuda().eval()
    x = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.no_grad():
        assert_close_scaled(reparameterize(model)(x), model(x), 1e-4)
