"""The freeze plan: frozen parameters and BatchNorm statistics really do not change; trainable ones do."""

import pytest
import timm
import torch

from graft.core.freeze import FreezePlan
from graft.core.strategies import plan_for_mode
from graft.errors import ConfigError
from graft.image.model import build_transfer_model


def _model():
    torch.manual_seed(0)
    return build_transfer_model(timm.create_model("test_efficientnet"), "linear", 3)


def _one_training_step(model, plan):
    plan.apply(model)
    optimizer = torch.optim.SGD(plan.param_groups(model), lr=0.1)
    plan.train_mode(model)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("mode,unfreeze", [("extract", None), ("finetune", 2)])
def test_frozen_stages_do_not_change_and_trainable_ones_do(mode, unfreeze):
    model = _model()
    plan = plan_for_mode(mode, model.stage_names, unfreeze=unfreeze)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_training_step(model, plan)
    after = model.state_dict()
    for index, name in enumerate(model.stage_names):
        changed = any(
            not torch.equal(before[k], after[k])
            for k in after
            if k.startswith(f"stages.{name}.") and after[k].is_floating_point()
        )
        assert changed == (index >= plan.trainable_from), f"stage {name}: changed={changed}"
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


def test_extract_mode_freezes_batchnorm_statistics():
    model = _model()
    plan = plan_for_mode("extract", model.stage_names)
    before = model.stages["stem"][1].running_mean.clone()
    _one_training_step(model, plan)
    assert torch.equal(before, model.stages["stem"][1].running_mean)


def test_bn_policy_frozen_keeps_statistics_of_trained_stages():
    model = _model()
    plan = plan_for_mode("finetune", model.stage_names, unfreeze=len(model.stage_names), bn_policy="frozen")
    before = model.stages["stem"][1].running_mean.clone()
    _one_training_step(model, plan)
    assert torch.equal(before, model.stages["stem"][1].running_mean)
    assert model.stages["stem"][0].weight.requires_grad


def test_backbone_learning_rate_is_smaller_than_head():
    model = _model()
    plan = plan_for_mode("finetune", model.stage_names, lr=1e-3, unfreeze=1)
    plan.apply(model)
    groups = {g["name"]: g["lr"] for g in plan.param_groups(model)}
    assert groups == {"head": 1e-3, "backbone": pytest.approx(1e-4)}


def test_plan_round_trips_through_json_and_rejects_unknown_keys():
    model = _model()
    plan = plan_for_mode("finetune", model.stage_names, unfreeze=2)
    assert FreezePlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ConfigError, match="unknown keys"):
        FreezePlan.from_dict({**plan.to_dict(), "surprise": 1})


def test_unfreeze_out_of_range_is_a_clear_error():
    model = _model()
    with pytest.raises(ConfigError, match="--unfreeze must be between 1 and"):
        plan_for_mode("finetune", model.stage_names, unfreeze=99)
    with pytest.raises(ConfigError, match="--mode must be one of"):
        plan_for_mode("bogus", model.stage_names)


def test_stages_reproduce_the_timm_forward():
    backbone = timm.create_model("test_efficientnet").eval()
    model = build_transfer_model(backbone, "linear", 3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(
            model.forward_features(x), backbone.forward_head(backbone.forward_features(x), pre_logits=True), atol=1e-6
        )
        middle = model.forward_stages(x, 0, 3)
        assert torch.allclose(model(middle, start=3), model(x), atol=1e-6)
