"""The search space (conditional, define-by-run), its grid, planned points and FixedTrial rebuilds."""

from __future__ import annotations

import itertools

import optuna
import pytest

from xvol_lab.models import BackboneSpec
from xvol_lab.ops import op_options
from xvol_lab.schema import from_dict
from xvol_lab.study.config import load_study_config
from xvol_lab.study.samplers import PlannedSampler, base_sampler_factory
from xvol_lab.study.space import check_point, expand_space, suggest_spec
from xvol_lab.study.space_config import SpaceConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)
BASE = BackboneSpec.preset("resnet18", stem="small", width_mult=0.25)


def space(data: dict) -> SpaceConfig:
    return from_dict(SpaceConfig, data)


class Recorder:
    """Takes the first choice of every parameter and records the names asked."""

    def __init__(self, picks: dict | None = None) -> None:
        self.picks = picks or {}
        self.asked: dict[str, list] = {}

    def suggest_categorical(self, name, choices):
        self.asked[name] = list(choices)
        return self.picks.get(name, choices[0])


def test_options_are_asked_only_for_ops_that_take_them():
    s = space({"stages": {3: {"op": ["conv", "pssa", "xvol_sa"], "shift": [1, 2, 3], "heads": [1, 2]}}})
    conv = Recorder({"stage3.op": "conv"})
    assert suggest_spec(conv, s, BASE).stages[2].op == "conv"
    assert list(conv.asked) == ["stage3.op"]
    pssa = Recorder({"stage3.op": "pssa", "stage3.shift": 3, "stage3.heads": 2})
    spec = suggest_spec(pssa, s, BASE)
    assert list(pssa.asked) == ["stage3.op", "stage3.heads", "stage3.shift"]
    assert (spec.stages[2].op, spec.stages[2].shift, spec.stages[2].heads) == ("pssa", 3, 2)
    xsa = Recorder({"stage3.op": "xvol_sa"})
    suggest_spec(xsa, s, BASE)
    assert list(xsa.asked) == ["stage3.op", "stage3.heads"]  # xvol_sa has no shift
    assert spec.stages[:2] == BASE.stages[:2] and spec.stages[3] == BASE.stages[3]


def test_single_choices_are_applied_without_a_parameter():
    s = space({"stages": {2: {"op": ["xvol_pssa"], "shift": [2]}, 4: {"op": ["conv", "sa"]}}})
    rec = Recorder()
    spec = suggest_spec(rec, s, BASE)
    assert list(rec.asked) == ["stage4.op"]
    assert (spec.stages[1].op, spec.stages[1].shift) == ("xvol_pssa", 2)


def test_grid_is_the_exact_set_of_valid_points():
    s = space({"stages": {3: {"op": ["conv", "pssa", "xvol_pssa"], "shift": [1, 2], "dirs": [4, 8]},
                          4: {"op": ["conv", "sa"]}}})
    points = expand_space(s, BASE)
    # stage 3: conv, or (pssa | xvol_pssa) x 2 shifts x 2 dirs = 9; stage 4: 2 -> 18 points
    assert len(points) == 18
    specs = [check_point(s, BASE, p, "p") for p in points]
    assert len(set(specs)) == 18
    expected = set()
    for op3, op4 in itertools.product(["conv", "pssa", "xvol_pssa"], ["conv", "sa"]):
        opts = [{}] if op3 == "conv" else [{"shift": a, "dirs": b} for a in (1, 2) for b in (4, 8)]
        for o in opts:
            expected.add(BASE.with_stage(3, op=op3, **o).with_stage(4, op=op4))
    assert set(specs) == expected
    for p in points:
        assert ("stage3.shift" in p) == ("shift" in op_options(p["stage3.op"]))


def test_place_puts_the_choice_in_exactly_one_stage_or_none():
    s = space({"place": [0, 1, 2, 3, 4], "stages": {i: {"op": ["xvol_pssa"]} for i in (1, 2, 3, 4)}})
    points = expand_space(s, BASE)
    assert points == [{"place": w} for w in (0, 1, 2, 3, 4)]
    specs = [check_point(s, BASE, p, "p") for p in points]
    assert specs[0] == BASE
    for where, spec in zip((1, 2, 3, 4), specs[1:], strict=True):
        assert [st.op for st in spec.stages] == ["xvol_pssa" if i == where else "conv" for i in (1, 2, 3, 4)]


def test_duplicate_architectures_are_expanded_once():
    # place 3 with conv is the same network as place 0: one grid point
    s = space({"place": [0, 3], "stages": {3: {"op": ["conv", "pssa"]}}})
    assert expand_space(s, BASE) == [{"place": 0}, {"place": 3, "stage3.op": "pssa"}]


@pytest.mark.parametrize(("name", "size"), [("stage_ablation", 5), ("op_ablation", 5), ("shift_ablation", 5),
                                            ("stage_search", 7 * 7 * 8 * 8)])
def test_shipped_spaces(name, size):
    _, config = load_study_config(name)
    points = expand_space(config.space, config.base.model)
    assert len(points) == size
    if config.sampler.name == "grid":
        assert list(config.plan) == points and config.n_trials == size + len(config.controls.roles)


def test_fixed_trial_rebuilds_the_best_spec_of_a_tpe_search():
    _, config = load_study_config("stage_search")
    factory = base_sampler_factory(config.sampler, 1)

    def objective(trial: optuna.Trial) -> float:
        spec = suggest_spec(trial, config.space, config.base.model)
        trial.set_user_attr("spec", spec.to_json())
        return sum(s.op.startswith("xvol") for s in spec.stages) + sum(s.shift for s in spec.stages) / 100

    study = optuna.create_study(direction="maximize", sampler=factory(0))
    study.optimize(objective, n_trials=12)
    best = study.best_trial
    rebuilt = suggest_spec(optuna.trial.FixedTrial(best.params), config.space, config.base.model)
    assert rebuilt == BackboneSpec.from_json(best.user_attrs["spec"])
    assert objective(optuna.trial.FixedTrial(best.params)) == best.value


def test_planned_sampler_serves_plan_points_by_assignment_then_its_base_sampler():
    _, config = load_study_config("stage_search", ["sampler.name=random"])
    plan = [{"stage1.op": "conv", "stage2.op": "conv", "stage3.op": "conv", "stage4.op": "conv"},
            {"stage1.op": "pssa", "stage1.shift": 2, "stage2.op": "conv", "stage3.op": "xvol_sa",
             "stage4.op": "conv"}]

    def run(seed: int) -> list[dict]:
        sampler = PlannedSampler(plan, base_sampler_factory(config.sampler, 1), seed)
        study = optuna.create_study(sampler=sampler)
        out = []
        for k in range(5):
            trial = study.ask()
            sampler.assign(trial.number, plan[k] if k < len(plan) else None)
            suggest_spec(trial, config.space, config.base.model)
            study.tell(trial, 0.0)
            out.append(trial.params)
        return out

    first, again, other = run(0), run(0), run(1)
    assert first[:2] == plan and other[:2] == plan
    assert first == again  # a single worker repeats itself
    assert first[2:] != other[2:]  # seeds per trial: other seeds draw other points
    grid = PlannedSampler(plan, None, 0)
    study = optuna.create_study(sampler=grid)
    trial = study.ask()
    with pytest.raises(RuntimeError, match="assign was not called"):
        suggest_spec(trial, config.space, config.base.model)
