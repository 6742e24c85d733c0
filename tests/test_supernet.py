"""The weight-sharing supernet: an extracted path is the stand-alone network of its spec, shifts
share one PSSA instance, BatchNorm recalibration touches only BatchNorm buffers."""

from __future__ import annotations

import pytest
import torch

from xvol_lab.models import BackboneSpec, StageSpec, build_classifier
from xvol_lab.models.supernet import BN_BUFFERS, Supernet, candidate_key, recalibrate_bn
from xvol_lab.tasks.transfer import init_backbone

BASE = BackboneSpec(depths=(1, 1, 1, 1), width_mult=0.125, stem="small")
CANDIDATES = ([], [StageSpec("xvol_sa")],
              [StageSpec("sa"), StageSpec("pssa"), StageSpec("pssa", shift=2), StageSpec("pssa", dirs=4),
               StageSpec("xvol_pssa", shift=2), StageSpec("conv", kernel_size=5)], [])
PATHS = [BASE.with_stage(3, op="pssa"), BASE.with_stage(3, op="pssa", shift=2),
         BASE.with_stage(3, op="pssa", dirs=4).with_stage(2, op="xvol_sa"),
         BASE.with_stage(3, op="xvol_pssa", shift=2), BASE.with_stage(3, op="sa"),
         BASE.with_stage(3, kernel_size=5), BASE]


def _supernet() -> Supernet:
    torch.manual_seed(0)
    net = Supernet(build_classifier(BASE, 3), BASE, CANDIDATES).double()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters everywhere
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_shifts_share_one_instance_and_options_that_shape_weights_do_not():
    assert candidate_key(StageSpec("pssa", shift=3, dirs=4)) == candidate_key(StageSpec("pssa")) == "pssa"
    assert candidate_key(StageSpec("conv", kernel_size=5)) == "conv__kernel_size-5"
    assert candidate_key(StageSpec("pssa", heads=2)) == "pssa__heads-2"
    net = _supernet()
    assert net.keys[2] == ["conv", "sa", "pssa", "xvol_pssa", "conv__kernel_size-5"]
    assert net.keys[0] == ["conv"] and net.keys[1] == ["conv", "xvol_sa"]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.describe())
def test_extracted_path_equals_the_stand_alone_network(path):
    net = _supernet()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    spec, state = net.extract(path)
    assert spec == path
    alone = build_classifier(spec, 3).double().eval()
    alone.load_state_dict(state)  # strict: exactly the stand-alone network's tensors
    net.set_path(path)
    with torch.no_grad():
        torch.testing.assert_close(net(x), alone(x))


def test_shift_changes_the_output_of_the_shared_instance():
    net = _supernet()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    outs = []
    with torch.no_grad():
        for path in PATHS[:2]:
            net.set_path(path)
            outs.append(net(x))
    assert (outs[0] - outs[1]).abs().max() > 1e-6


def test_extracted_state_loads_through_init_path(tmp_path):
    net = _supernet().float()
    _, state = net.extract(PATHS[3])
    torch.save(state, tmp_path / "path.pt")
    target = build_classifier(PATHS[3], 3)
    report = init_backbone(target, tmp_path / "path.pt")
    assert not report.missing and not report.unexpected
    for key, value in target.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(value, state[key]), key


def test_a_path_outside_the_candidates_is_refused():
    net = _supernet()
    with pytest.raises(ValueError, match="xvol_sa is not a candidate of stage 3"):
        net.set_path(BASE.with_stage(3, op="xvol_sa"))
    with pytest.raises(ValueError, match="other stage operators only"):
        net.extract(BackboneSpec(depths=(1, 1, 1, 1), width_mult=0.25, stem="small"))


def test_recalibration_changes_only_batchnorm_buffers_to_the_batch_average():
    net = _supernet()
    net.set_path(PATHS[2])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [torch.randn(4, 3, 16, 16, dtype=torch.float64) for _ in range(3)]
    assert recalibrate_bn(net, batches) == 3
    assert not net.training
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[1] in BN_BUFFERS for k in changed)
    assert "network.backbone.stem.bn.running_mean" in changed
    # the stem's statistics are the plain average over the 3 equal batches of the per-batch means
    stem = net.network.backbone.stem
    with torch.no_grad():
        means = torch.stack([stem.conv(b).mean((0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(stem.bn.running_mean, means)
    assert int(stem.bn.num_batches_tracked) == 3 and stem.bn.momentum == 0.1
