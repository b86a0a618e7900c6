"""float64 gradcheck of every reference objective, MI bound and critic."""

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from fmicl_engine.loss import (MIBoundLoss, align_uniform_loss, emmi_loss, fmicl_loss, infonce_loss, mi_bound,
                               rpc_loss)


def pair(seed, n=3, d=3):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("similarity", ["gaussian", "cosine"])
@pytest.mark.parametrize("divergence,tsallis_alpha", [
    ("kl", 1.5), ("js", 1.5), ("pearson", 1.5), ("sh", 1.5), ("tsallis", 1.5), ("tsallis", 0.6), ("vlc", 1.5)])
def test_fmicl_gradcheck(divergence, tsallis_alpha, similarity, normalize):
    def loss(z1, z2):
        return fmicl_loss(z1, z2, divergence, similarity, sigma=0.9, tau=0.7, mu=1.3, alpha=0.8,
                          tsallis_alpha=tsallis_alpha, normalize=normalize, backend="reference")

    assert gradcheck(loss, pair(0))


@pytest.mark.parametrize("normalize", [True, False])
def test_rpc_gradcheck(normalize):
    assert gradcheck(lambda a, b: rpc_loss(a, b, tau=0.6, alpha=0.2, beta=0.01, gamma=0.5, normalize=normalize),
                     pair(1))


def test_infonce_gradcheck():
    assert gradcheck(lambda a, b: infonce_loss(a, b, tau=0.4, backend="reference"), pair(2))


@pytest.mark.parametrize("align_alpha", [2.0, 1.5])
def test_align_uniform_gradcheck(align_alpha):
    assert gradcheck(lambda a, b: align_uniform_loss(a, b, align_alpha=align_alpha, t=1.5, lambda_uniform=0.7,
                                                     backend="reference"), pair(3))


def test_emmi_gradcheck():
    assert gradcheck(lambda a, b: emmi_loss(a, b, eps=1e-3), pair(4, n=7, d=2))


@pytest.mark.parametrize("bound", ["infonce", "nwj", "dv"])
def test_mi_bound_gradcheck(bound):
    scores = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    assert gradcheck(lambda s: mi_bound(s, bound), (scores,))


@pytest.mark.parametrize("critic", ["bilinear", "separable", "concat"])
@pytest.mark.parametrize("bound", ["infonce", "nwj", "dv"])
def test_mi_bound_loss_gradcheck_inputs_and_critic_parameters(bound, critic):
    torch.manual_seed(6)
    module = MIBoundLoss(bound, critic, dim=3, hidden=None if critic == "bilinear" else 5).double()
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().normal_(0, 0.5).requires_grad_() for _, p in module.named_parameters()]

    def loss(z1, z2, *values):
        return functional_call(module, dict(zip(names, values)), (z1, z2))

    assert gradcheck(loss, (*pair(7, n=4), *params))
