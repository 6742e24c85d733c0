"""Properties every registered operator must have; a new op is tested the moment it is registered."""

from __future__ import annotations

import io

import pytest
import torch
from _helpers import randomize_batchnorm

from xvol_lab.ops import OPS, create_op, op_options, reparameterize

NAMES = sorted(OPS)
# Non-default options that exercise every code path an op has.
VARIANTS = {
    "conv": [{}, {"kernel_size": 5}],
    "sa": [{}, {"heads": 4}],
    "pssa": [{}, {"shift": 2, "dirs": 4, "heads": 2}, {"stack": 2}],
    "xvol_sa": [{}, {"kernel_size": 1, "heads": 2}],
    "xvol_pssa": [{}, {"shift": 3, "dirs": 4, "heads": 4}, {"stack": 3, "shift": 2}],
    "pointwise": [{}],
}
CASES = [(name, opts) for name in NAMES for opts in VARIANTS[name]]


def test_variants_cover_registry():
    assert set(VARIANTS) == set(OPS)


@pytest.mark.parametrize("name,opts", CASES)
@pytest.mark.parametrize("stride", [1, 2])
def test_output_shape_is_ceil_div(name, opts, stride):
    op = create_op(name, 8, 16, stride, **opts)
    for h, w in [(9, 7), (8, 8), (1, 5)]:
        y = op(torch.randn(2, 8, h, w))
        assert y.shape == (2, 16, -(-h // stride), -(-w // stride))


@pytest.mark.parametrize("name,opts", CASES)
def test_every_parameter_gets_a_gradient(name, opts):
    torch.manual_seed(0)
    op = create_op(name, 8, 16, 2, **opts)
    y = op(torch.randn(2, 8, 9, 7))
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in op.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name,opts", CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_no_nan_on_large_or_constant_input(name, opts, mode):
    torch.manual_seed(0)
    op = create_op(name, 8, 16, 1, **opts).train(mode == "train")
    for x in (torch.randn(2, 8, 9, 7) * 1e4, torch.full((2, 8, 9, 7), 3.0), torch.zeros(2, 8, 9, 7)):
        assert torch.isfinite(op(x)).all()


@pytest.mark.parametrize("name,opts", CASES)
def test_deploy_round_trip_through_fresh_model(name, opts):
    """save deploy state -> fresh `deploy=True` model -> load -> same output as the train form."""
    torch.manual_seed(0)
    op = randomize_batchnorm(create_op(name, 8, 16, 2, **opts)).eval()
    x = torch.randn(2, 8, 9, 7)
    expected = op(x)
    deployed = reparameterize(op)
    buf = io.BytesIO()
    torch.save(deployed.state_dict(), buf)
    fresh = create_op(name, 8, 16, 2, deploy=True, **opts).eval()
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fresh.modules())
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_switch_to_deploy_is_idempotent(name):
    op = randomize_batchnorm(create_op(name, 8, 16)).eval()
    op.switch_to_deploy()
    state = {k: v.clone() for k, v in op.state_dict().items()}
    op.switch_to_deploy()
    assert op.deploy
    assert state.keys() == op.state_dict().keys()
    for k, v in op.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("name", NAMES)
def test_float64(name):
    torch.manual_seed(0)
    op = create_op(name, 8, 16, 2).double()
    y = op(torch.randn(2, 8, 9, 7, dtype=torch.float64))
    assert y.dtype == torch.float64 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("deploy", [False, True])
def test_bf16_autocast_tracks_float32(name, deploy):
    torch.manual_seed(0)
    op = randomize_batchnorm(create_op(name, 16, 16, 1)).eval()
    op = reparameterize(op) if deploy else op
    x = torch.randn(2, 16, 8, 8)
    expected = op(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x)
    assert torch.isfinite(y).all()
    rel = (y.float() - expected).norm() / expected.norm()
    assert rel < 0.05


def test_op_options_match_constructor_keywords():
    assert op_options("conv") == {"kernel_size": 3}
    assert op_options("sa") == {"heads": None}
    assert op_options("pssa") == {"heads": None, "shift": 1, "dirs": 8, "stack": 1}
    assert op_options("xvol_sa") == {"kernel_size": 3, "heads": None}
    assert op_options("xvol_pssa") == {"kernel_size": 3, "heads": None, "shift": 1, "dirs": 8, "stack": 1}


def test_default_heads_use_head_dim_64():
    assert create_op("sa", 8, 256).heads == 4
    assert create_op("pssa", 8, 32).heads == 1
    assert create_op("xvol_pssa", 8, 200).heads == 2  # 200 // 64 = 3 does not divide 200


@pytest.mark.parametrize("name,kwargs,message", [
    ("nope", {}, "unknown operator 'nope'; expected one of conv, sa, pssa, xvol_sa, xvol_pssa, pointwise"),
    ("pssa", {"shift": 0}, "shift: got 0, expected an integer >= 1"),
    ("xvol_pssa", {"heads": 3}, "heads: got 3, expected a positive divisor of out_chs=16"),
    ("pssa", {"dirs": 6}, "dirs: got 6, expected 4 or 8"),
    ("conv", {"kernel_size": 4}, "kernel_size: got 4, expected an odd integer >= 1"),
    ("xvol_sa", {"stride": 3}, "stride: got 3, expected 1 or 2"),
    ("pssa", {"stack": 0}, "stack: got 0, expected an integer >= 1"),
    ("sa", {"shift": 2}, "shift: not an option of op 'sa'; expected one of heads"),
    ("conv", {"heads": 2}, "heads: not an option of op 'conv'; expected one of kernel_size"),
    ("pointwise", {"kernel_size": 3}, "kernel_size: not an option of op 'pointwise'; expected one of none"),
])
def test_bad_options_fail_at_construction(name, kwargs, message):
    stride = kwargs.pop("stride", 1)
    with pytest.raises(ValueError) as err:
        create_op(name, 8, 16, stride, **kwargs)
    assert message in str(err.value)


def test_pointwise_mixes_no_pixels():
    # each output pixel depends on the input pixel at (stride * i, stride * j) alone
    op = create_op("pointwise", 3, 4, 2).eval()
    x = torch.randn(1, 3, 7, 7, requires_grad=True)
    op(x)[0, :, 1, 2].sum().backward()
    assert (x.grad.abs().sum(1)[0] > 0).nonzero().tolist() == [[2, 4]]


def test_reparameterize_copies_unless_inplace():
    model = torch.nn.Sequential(create_op("xvol_pssa", 4, 8), torch.nn.ReLU(), create_op("conv", 8, 8))
    deployed = reparameterize(model)
    assert not model[0].deploy and deployed[0].deploy and deployed[2].deploy
    same = reparameterize(model, inplace=True)
    assert same is model and model[0].deploy
