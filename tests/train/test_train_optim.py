"""Optimisers: parameter groups, LARS against a hand computation, construction from the config."""

import pytest
import torch
from torch import nn

from fmicl_engine.config import config_from_dict
from fmicl_engine.train.optim import LARS, build_optimizer, parameter_groups


def test_biases_and_norms_are_exempt_from_decay():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    groups = parameter_groups([net], weight_decay=0.1, exclude_bias_and_norm=True)
    assert [len(g["params"]) for g in groups] == [2, 3]  # two weight matrices | bias, bn weight, bn bias
    assert groups[0]["weight_decay"] == 0.1 and groups[0]["lars_adapt"]
    assert groups[1]["weight_decay"] == 0.0 and not groups[1]["lars_adapt"]
    everything = parameter_groups([net], weight_decay=0.1, exclude_bias_and_norm=False)
    assert len(everything) == 1 and len(everything[0]["params"]) == 5


def test_lars_matches_a_hand_computation():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    b = nn.Parameter(torch.randn(5, dtype=torch.float64))
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt = LARS([{"params": [w], "weight_decay": 0.01, "lars_adapt": True},
                {"params": [b], "weight_decay": 0.0, "lars_adapt": False}],
               lr=0.5, momentum=0.9, trust_coefficient=0.02)
    grads = [(torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)) for _ in range(2)]
    vw, vb, ew, eb = torch.zeros_like(w0), torch.zeros_like(b0), w0.clone(), b0.clone()
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        u = gw + 0.01 * ew
        u = u * (0.02 * ew.norm() / u.norm())
        vw = 0.9 * vw + u
        ew = ew - 0.5 * vw
        vb = 0.9 * vb + gb  # the exempt group: plain momentum SGD
        eb = eb - 0.5 * vb
    torch.testing.assert_close(w.detach(), ew, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.detach(), eb, rtol=1e-12, atol=1e-12)


def test_lars_leaves_zero_weights_unscaled():
    w = nn.Parameter(torch.zeros(3))
    opt = LARS([w], lr=1.0, momentum=0.0, trust_coefficient=1e-3)
    w.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(w.detach(), -torch.ones(3))  # trust ratio 1 where ||w|| = 0


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("lars", LARS)])
def test_build_optimizer_from_config(name, cls):
    cfg = config_from_dict({"optim": {"name": name, "lr": 0.3, "weight_decay": 0.05}})
    model, critic = nn.Linear(4, 4), nn.Linear(2, 2)
    opt = build_optimizer(cfg.optim, [model, critic])
    assert isinstance(opt, cls)
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(p) for m in (model, critic) for p in m.parameters()}  # the critic trains too
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0.0
    assert all(g["lr"] == 0.3 for g in opt.param_groups)
