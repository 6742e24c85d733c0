"""A training step of an X-volution network builds no tensor from host data after its first step (on CUDA
each such tensor is a blocking host-to-device copy): normalisation constants and PSSA taps are built once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _host_copies import HostTensorCount

from xvol_lab.data.device import DeviceNormalize
from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.tasks.config import OptimConfig
from xvol_lab.tasks.optim import build_optimizer, build_scheduler


def test_the_counter_sees_tensors_built_from_host_data():
    with HostTensorCount() as count:
        torch.tensor([1, 2, 3])
        torch.ones(3)
    assert count.calls == ["aten.lift_fresh"]


@pytest.mark.parametrize("channels_last", [False, True])
def test_an_xvolution_training_step_builds_no_host_tensor_after_the_first(channels_last):
    torch.manual_seed(0)
    spec = BackboneSpec.preset("resnet18", width_mult=0.125, stem="small").with_stage(3, op="xvol_pssa")
    model = build_classifier(spec.with_stage(4, op="pssa", heads=2), 4)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optim = OptimConfig(name="sgd", lr=0.01, warmup_epochs=0.0)
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim, 4, 1)
    normalize = DeviceNormalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (3, 4, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 4, (3, 4))
    counts = []
    for step in range(3):
        with HostTensorCount() as count:
            x = normalize.images(images[step]).contiguous(memory_format=memory_format)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), labels[step]).backward()
            optimizer.step()
            scheduler.step()
        counts.append(count.calls)
    assert counts[1:] == [[], []], counts
