"""DeferredFiniteChecks: no host read on the loss path inside it; check() raises what the immediate
checks would have raised, then resets; each check runs once per call.

Every objective the training engine builds (build_loss, as train/loop.py does) runs forward and
backward under host_reads() and native_reads(): inside the context nothing reads a tensor's value on
the host, neither in Python nor in an ATen op (the fused ops' C++ included), and the same run
without it is seen reading (so the guard can fail). The distributed path (gather_distributed, the
all-reduced check) is in test_distributed_loss.py.
"""

from __future__ import annotations

import pytest
import torch
from host_reads import host_reads, native_reads

from fmicl_engine.loss import (DeferredFiniteChecks, LossArgumentError, NonFiniteLossError, build_loss, emmi_loss,
                               fmicl_loss, infonce_loss)
from fmicl_engine.loss.validation import BOUNDS, CRITICS, DIVERGENCES, SIMILARITIES

N, DIM = 8, 3

# Every objective of the engine: (loss name, keywords), both backends of the pairwise objectives.
ENGINE_OBJECTIVES = [
    *(("fmicl", dict(divergence=d, similarity=s, backend=b))
      for d in DIVERGENCES for s in SIMILARITIES for b in ("fused", "reference")),
    *(("infonce", dict(backend=b)) for b in ("fused", "reference")),
    *(("align_uniform", dict(backend=b)) for b in ("fused", "reference")),
    ("rpc", {}),
    ("emmi", {}),
    *(("mi_bound", dict(bound=b, critic=c, dim=DIM)) for b in BOUNDS for c in CRITICS),
]


def objective_id(case):
    name, keywords = case
    return "-".join([name, *(str(v) for k, v in keywords.items() if k != "dim")])


def views(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(N, DIM, generator=g)
    z2 = z1 + 0.5 * torch.randn(N, DIM, generator=g)
    return z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()


def training_step(case, dtype=torch.float32):
    """A loss built as the engine builds it, forward and backward; the host reads seen meanwhile
    (Python's, then the ATen ops')."""
    name, keywords = case
    loss_fn = build_loss(name, **keywords)
    z1, z2 = views(dtype)
    with native_reads() as native, host_reads() as reads:
        loss = loss_fn(z1, z2)
        loss.backward()
    return loss.detach(), reads + native


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ENGINE_OBJECTIVES, ids=objective_id)
def test_deferred_checks_read_nothing_on_the_host(case, dtype):
    with DeferredFiniteChecks() as checks:
        loss, reads = training_step(case, dtype)
        assert reads == [], "host reads on the loss path:\n" + "\n".join(reads)
        checks.check()  # nothing failed: returns
    assert torch.isfinite(loss)


@pytest.mark.parametrize("case", ENGINE_OBJECTIVES, ids=objective_id)
def test_each_value_check_runs_once(case, monkeypatch):
    recorded = []
    record = DeferredFiniteChecks.record
    monkeypatch.setattr(DeferredFiniteChecks, "record",
                        lambda self, bad, failure, value=None: recorded.append(failure) or record(self, bad, failure,
                                                                                                   value))
    with DeferredFiniteChecks():
        training_step(case)
    messages = [failure.message for failure in recorded]
    assert len(set(messages)) == len(messages), "a check ran twice:\n" + "\n".join(messages)
    if case[0] in ("fmicl", "infonce", "align_uniform") and case[1]["backend"] == "fused":
        assert any("gradient of the fused loss" in m for m in messages)  # z1, z2, the gradient, the loss
        assert len(messages) == 4, messages


@pytest.mark.parametrize("case", ENGINE_OBJECTIVES, ids=objective_id)
def test_immediate_checks_are_seen_reading(case):
    _, reads = training_step(case)
    assert any("validation.py" in read for read in reads), reads


def test_native_guard_sees_reads_inside_an_op():
    with native_reads() as reads:
        torch.linalg.cholesky(torch.eye(3))  # checks its info flag on the host, in C++
    assert reads == ["aten::_local_scalar_dense (in aten::item < aten::_linalg_check_errors < aten::linalg_cholesky)"]


def test_guard_sees_reads_in_a_python_backward():
    class ReadsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            assert bool(torch.isfinite(grad).all())
            return grad

    x = torch.ones(2, requires_grad=True)
    with host_reads() as reads:
        ReadsInBackward.apply(x).sum().backward()
    assert len(reads) == 1 and "Tensor.__bool__" in reads[0]


# ---------------------------------------------------------------------------------------------
# check(): the error of the immediate check, the first one since the last check, then a reset
# ---------------------------------------------------------------------------------------------

def _nan_row(z):
    return z.detach().index_fill(0, torch.tensor([1]), float("nan"))


def _half_views():  # f-MICL SH, sigma 0.25: a finite loss whose float16 gradient overflows
    g = torch.Generator().manual_seed(4)
    return [z.requires_grad_() for z in torch.randn(2, 6, 5, generator=g, dtype=torch.float64).half().unbind()]


FAILING = {  # name -> (a call that fails, the error's argument)
    "sh-tiny-sigma-reference": (lambda z1, z2: fmicl_loss(z1, z2, "sh", sigma=1e-3, backend="reference"), "sigma"),
    "pearson-tiny-tau-fused": (lambda z1, z2: fmicl_loss(z1, z1, "pearson", "cosine", tau=0.01, backend="fused"),
                               "tau"),
    "fused-gradient-overflow": (lambda z1, z2: fmicl_loss(*_half_views(), "sh", sigma=0.25, backend="fused"), "sigma"),
    "nan-embedding-fused": (lambda z1, z2: infonce_loss(_nan_row(z1), z2, backend="fused"), "z1"),
    "inf-embedding-reference": (lambda z1, z2: build_loss("rpc")(z1, z2.detach() / 0), "z2"),
    "emmi-singular-covariance": (lambda z1, z2: emmi_loss(1e3 * z1[:2], 1e3 * z1[:2], eps=1e-30), "eps"),
}


def immediate_error(call):
    with pytest.raises((NonFiniteLossError, LossArgumentError)) as info:
        call(*views())
    return info.value


@pytest.mark.parametrize("failing", FAILING)
def test_check_raises_the_immediate_error_then_resets(failing):
    call, argument = FAILING[failing]
    expected = immediate_error(call)
    assert expected.argument == argument
    with DeferredFiniteChecks() as checks:
        call(*views())  # recorded, not raised
        with pytest.raises(type(expected)) as info:
            checks.check()
        checks.check()  # reset: nothing recorded since
    assert info.value.argument == argument
    assert str(info.value) == str(expected) + " (a deferred check: it happened within the steps since the last check)"


def test_the_first_failure_since_the_last_check_is_raised():
    sh, _ = FAILING["sh-tiny-sigma-reference"]
    pearson, _ = FAILING["pearson-tiny-tau-fused"]
    with DeferredFiniteChecks() as checks:
        for step in range(3):
            fmicl_loss(*views())  # finite
            if step == 1:
                sh(*views())
        pearson(*views())
        with pytest.raises(NonFiniteLossError, match=r"sigma=0\.001") as info:
            checks.check()
        assert info.value.argument == "sigma"
        pearson(*views())
        with pytest.raises(NonFiniteLossError, match="gradient of the fused loss") as info:
            checks.check()
        assert info.value.argument == "tau"


def test_leaving_the_context_checks_and_restores_immediate_checks():
    sh, _ = FAILING["sh-tiny-sigma-reference"]
    with pytest.raises(NonFiniteLossError, match="since the last check"):
        with DeferredFiniteChecks():
            sh(*views())
    with pytest.raises(NonFiniteLossError) as info:  # immediate again
        sh(*views())
    assert "since the last check" not in str(info.value)
    with pytest.raises(KeyError):  # an exception leaving the block is not replaced by the check's
        with DeferredFiniteChecks():
            sh(*views())
            raise KeyError("engine error")


def test_nested_contexts_record_in_the_innermost():
    sh, _ = FAILING["sh-tiny-sigma-reference"]
    with DeferredFiniteChecks() as outer:
        with pytest.raises(NonFiniteLossError):
            with DeferredFiniteChecks():
                sh(*views())
        outer.check()  # the inner one had it
        sh(*views())
        with pytest.raises(NonFiniteLossError):
            outer.check()
