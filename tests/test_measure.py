"""A study's own measurements: taken on the trained deploy network with validation images, in the
training precision, with the device named; a failure there is returned, not raised."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from xvol_lab.models.cost import count_flops
from xvol_lab.ops import ReparamOp
from xvol_lab.study import measure as study_measure
from xvol_lab.study.measure import latency_ms, measure, precision_of, trained_deploy_network
from xvol_lab.study.outcome import combine, finished_outcome
from xvol_lab.tasks import fit
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.export import validation_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure")
    config = load_run_config(None, [
        f"data.root={root / 'data'}", "data.image_size=16", "data.num_classes=4", "data.num_train=32",
        "data.num_val=8", "data.batch_size=16", "data.num_workers=0", "trainer.max_epochs=1",
        "trainer.accelerator=cpu", "model.width_mult=0.125", "model.depths=[1,1,1,1]",
        "model.stage3.op=xvol_pssa"])
    fit(config, root / "run", progress=False)
    return config, root / "run"


def test_figures_are_those_of_the_trained_deploy_network_on_validation_images(run):
    config, run_dir = run
    result = measure(config, "cpu", run_dir=run_dir, warmup=1, repeats=2)
    network = trained_deploy_network(config, run_dir)
    assert all(op.deploy for op in network.modules() if isinstance(op, ReparamOp))
    trained = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(network.fc.weight, trained["model.fc.weight"])  # the trained weights, not fresh ones
    images, _ = validation_batch(config, 1)
    assert result["params_m"] == sum(p.numel() for p in network.parameters()) / 1e6
    assert result["flops_g"] == count_flops(network, images[:1]) / 1e9 > 0
    assert result["latency_ms"] > 0 and result["latency_batch_ms"] > 0
    assert result["latency_device"].startswith("cpu: ")
    assert "measure_error" not in result


def test_a_failure_fails_only_the_measurement(run, monkeypatch):
    config, run_dir = run

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(study_measure, "count_flops", out_of_memory)
    assert measure(config, "cpu", run_dir=run_dir) == {
        "measure_error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"}


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("32-true", None)])
def test_latency_runs_in_the_training_precision(precision, dtype):
    config = load_run_config(None, [f"trainer.precision={precision}"])
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return x

    latency_ms(Probe(), torch.zeros(1), torch.device("cpu"), warmup=3, repeats=4,
               precision=precision_of(config, torch.device("cpu")))
    assert seen == [dtype] * 7  # 3 warm-up passes, then 4 timed ones


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_names_the_gpu_and_synchronises_its_own_device(run):
    config, run_dir = run
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    result = measure(config, device, run_dir=run_dir, warmup=2, repeats=3)
    assert result["latency_device"] == torch.cuda.get_device_name(device)
    assert result["latency_ms"] > 0


def test_the_device_and_a_measurement_error_reach_the_trials_attrs(tmp_path):
    results = [{"state": "complete", "values": [0.5], "metrics": {"val/acc1": 0.5}, "latency_ms": 2.0,
                "latency_device": "NVIDIA H100"},
               {"state": "complete", "values": [0.7], "metrics": {"val/acc1": 0.7}, "latency_ms": 4.0,
                "latency_device": "NVIDIA A100"},
               {"state": "complete", "values": [0.6], "metrics": {"val/acc1": 0.6},
                "measure_error": "OutOfMemoryError: CUDA out of memory"}]
    runs = []
    for seed, result in enumerate(results):
        (tmp_path / f"seed_{seed}").mkdir()
        (tmp_path / f"seed_{seed}" / "result.json").write_text(json.dumps(result))
        runs.append((seed, finished_outcome(tmp_path / f"seed_{seed}")))
    assert runs[0][1].attrs["latency_device"] == "NVIDIA H100"
    combined = combine(runs, 3)
    assert combined.attrs["latency_device"] == "NVIDIA H100 / NVIDIA A100"  # kept apart, never averaged
    assert combined.attrs["measure_error"] == "OutOfMemoryError: CUDA out of memory"
    assert combined.attrs["latency_ms"] == 3.0
    assert combined.attrs["per_seed"]["latency_ms"] == [2.0, 4.0, None]


def test_the_latency_batch_is_capped(run, monkeypatch):
    """A study batch size of 100000 made the latency measurement batch 100000 validation images."""
    config, run_dir = run
    seen = []
    monkeypatch.setattr(study_measure, "latency_ms", lambda model, inputs, *args, **kwargs: seen.append(
        inputs.shape[0]) or 1.0)
    huge = dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=100000))
    assert "measure_error" not in measure(huge, "cpu", run_dir=run_dir)
    assert seen == [1, study_measure.MAX_LATENCY_BATCH]
    measure(config, "cpu", run_dir=run_dir)
    assert seen[2:] == [1, 16]  # a batch below the cap is measured as it is
