"""The public API of fmicl_engine.loss: argument errors, modules, registry, backend dispatch."""

import inspect
import pickle
import sys
import types

import pytest
import torch

import fmicl_engine.loss as loss_package
from fmicl_engine.loss import (LOSS_REGISTRY, REQUIRED, AlignUniformLoss, EMMILoss, FMICLLoss, InfoNCELoss,
                               LossArgumentError, MIBoundLoss, NonFiniteLossError, RPCLoss, align_uniform_loss,
                               build_loss, emmi_loss, fmicl_loss, infonce_loss, loss_keywords, mi_bound, rpc_loss)


def pair(n=4, d=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def reference_fmicl(z1, z2, **kwargs):
    return fmicl_loss(z1, z2, backend="reference", **kwargs)


def reference_infonce(z1, z2, **kwargs):
    return infonce_loss(z1, z2, backend="reference", **kwargs)


def reference_align_uniform(z1, z2, **kwargs):
    return align_uniform_loss(z1, z2, backend="reference", **kwargs)


ALL_FUNCTIONS = [reference_fmicl, reference_infonce, reference_align_uniform, rpc_loss, emmi_loss]

# ---------------------------------------------------------------------------------------------
# Errors name the argument
# ---------------------------------------------------------------------------------------------

z1, z2 = pair()
BAD_INPUTS = [
    ("z1", lambda: (z1[0], z2[0])),                            # 1-D
    ("z1", lambda: (z1[None], z2[None])),                      # 3-D
    ("z1", lambda: (z1[:1], z2[:1])),                          # N < 2: no negatives
    ("z1", lambda: (z1[:, :0], z2[:, :0])),                    # no columns
    ("z1", lambda: (z1.numpy(), z2)),                          # not a tensor
    ("z1", lambda: (z1.long(), z2.long())),                    # integer
    ("z2", lambda: (z1, z2[:3])),                              # shapes differ
    ("z2", lambda: (z1, z2.double())),                         # dtypes differ
    ("z2", lambda: (z1, z2.to("meta"))),                       # devices differ
    ("z1", lambda: (z1.index_fill(0, torch.tensor([1]), float("nan")), z2)),
    ("z2", lambda: (z1, z2.index_fill(1, torch.tensor([0]), float("inf")))),
]


@pytest.mark.parametrize("loss_fn", ALL_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("argument,make", BAD_INPUTS)
def test_bad_embeddings_name_the_argument(loss_fn, argument, make):
    with pytest.raises(LossArgumentError, match=argument) as info:
        loss_fn(*make())
    assert info.value.argument == argument
    assert isinstance(info.value, ValueError)


BAD_HYPERPARAMETERS = [
    (fmicl_loss, dict(sigma=0.0), "sigma"), (fmicl_loss, dict(sigma=-1.0), "sigma"),
    (fmicl_loss, dict(sigma=float("inf")), "sigma"), (fmicl_loss, dict(sigma="0.5"), "sigma"),
    (fmicl_loss, dict(sigma=True), "sigma"),
    (fmicl_loss, dict(tau=0), "tau"), (fmicl_loss, dict(mu=0.0), "mu"), (fmicl_loss, dict(alpha=-0.1), "alpha"),
    (fmicl_loss, dict(tsallis_alpha=1.0), "tsallis_alpha"), (fmicl_loss, dict(tsallis_alpha=0.0), "tsallis_alpha"),
    (fmicl_loss, dict(divergence="hellinger"), "divergence"), (fmicl_loss, dict(similarity="cos"), "similarity"),
    (fmicl_loss, dict(normalize=1), "normalize"), (fmicl_loss, dict(backend="cuda"), "backend"),
    (fmicl_loss, dict(gather_distributed="yes"), "gather_distributed"),
    (infonce_loss, dict(tau=-0.5), "tau"), (infonce_loss, dict(backend="fusd"), "backend"),
    (align_uniform_loss, dict(t=0.0), "t"), (align_uniform_loss, dict(align_alpha=0.0), "align_alpha"),
    (align_uniform_loss, dict(lambda_uniform=-1.0), "lambda_uniform"),
    (rpc_loss, dict(tau=0.0), "tau"), (rpc_loss, dict(beta=-1.0), "beta"), (rpc_loss, dict(gamma=-1.0), "gamma"),
    (emmi_loss, dict(eps=0.0), "eps"),
]


@pytest.mark.parametrize("loss_fn,kwargs,argument", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_name_the_argument(loss_fn, kwargs, argument):
    with pytest.raises(LossArgumentError, match=argument) as info:
        loss_fn(z1, z2, **kwargs)
    assert info.value.argument == argument


def test_unknown_choices_suggest_the_closest():
    with pytest.raises(LossArgumentError, match="did you mean 'pearson'"):
        fmicl_loss(z1, z2, divergence="pearsn", backend="reference")
    with pytest.raises(LossArgumentError, match="did you mean 'cosine'"):
        fmicl_loss(z1, z2, similarity="cosin", backend="reference")
    with pytest.raises(LossArgumentError, match="did you mean 'dv'") as info:
        mi_bound(torch.zeros(3, 3), "dvv")
    assert info.value.argument == "bound"


def test_mi_bound_argument_errors():
    for scores in (torch.zeros(3), torch.zeros(3, 4), torch.zeros(1, 1), torch.zeros(3, 3, dtype=torch.long)):
        with pytest.raises(LossArgumentError) as info:
            mi_bound(scores, "nwj")
        assert info.value.argument == "scores"
    with pytest.raises(LossArgumentError) as info:
        MIBoundLoss("nwj", "bilinear", 3, hidden=10)
    assert info.value.argument == "hidden"
    with pytest.raises(LossArgumentError) as info:
        MIBoundLoss("nwj", "seperable", 3)
    assert info.value.argument == "critic" and "did you mean 'separable'" in str(info.value)
    with pytest.raises(LossArgumentError) as info:
        MIBoundLoss("nwj", "concat", 0)
    assert info.value.argument == "dim"
    with pytest.raises(LossArgumentError) as info:
        MIBoundLoss("nwj", "concat", 4)(z1, z2)  # embeddings of width 3
    assert info.value.argument == "z1"


def test_error_types_and_pickling():
    assert issubclass(LossArgumentError, ValueError)
    assert issubclass(NonFiniteLossError, FloatingPointError)
    for err in (LossArgumentError("sigma", "sigma must be > 0"), NonFiniteLossError("overflow", argument="tau")):
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err) and str(copy) == str(err) and copy.argument == err.argument


def test_emmi_reports_eps_when_covariance_is_singular():
    # eps far below float32 resolution of the variances: rank-deficient covariance, Cholesky fails.
    z = torch.randn(2, 8) * 1e3
    with pytest.raises(NonFiniteLossError) as info:
        emmi_loss(z, z, eps=1e-30)
    assert info.value.argument == "eps"


# ---------------------------------------------------------------------------------------------
# Modules and registry
# ---------------------------------------------------------------------------------------------

MODULE_FUNCTIONS = [(FMICLLoss, fmicl_loss), (InfoNCELoss, infonce_loss), (AlignUniformLoss, align_uniform_loss),
                    (RPCLoss, rpc_loss), (EMMILoss, emmi_loss)]


@pytest.mark.parametrize("module_class,function", MODULE_FUNCTIONS)
def test_module_takes_the_function_keywords_with_the_same_defaults(module_class, function):
    module_params = list(inspect.signature(module_class.__init__).parameters.values())[1:]
    function_params = list(inspect.signature(function).parameters.values())[2:]  # drop z1, z2
    assert [(p.name, p.default, p.kind) for p in module_params] == \
           [(p.name, p.default, p.kind) for p in function_params]


def test_module_forward_equals_function():
    a, b = pair(dtype=torch.float64)
    cases = [
        (FMICLLoss("js", "cosine", tau=0.3, alpha=0.5, backend="reference"),
         fmicl_loss(a, b, "js", "cosine", tau=0.3, alpha=0.5, backend="reference")),
        (InfoNCELoss(tau=0.2, backend="reference"), infonce_loss(a, b, tau=0.2, backend="reference")),
        (AlignUniformLoss(t=1.0, backend="reference"), align_uniform_loss(a, b, t=1.0, backend="reference")),
        (RPCLoss(alpha=0.3), rpc_loss(a, b, alpha=0.3)),
        (EMMILoss(eps=1e-2), emmi_loss(a, b, eps=1e-2)),
    ]
    for module, expected in cases:
        assert module(a, b).item() == expected.item()


def test_modules_validate_eagerly():
    with pytest.raises(LossArgumentError) as info:
        FMICLLoss(sigma=-1)
    assert info.value.argument == "sigma"
    with pytest.raises(LossArgumentError) as info:
        InfoNCELoss(backend="fast")
    assert info.value.argument == "backend"


def test_registry_and_build_loss():
    assert LOSS_REGISTRY == {"fmicl": FMICLLoss, "infonce": InfoNCELoss, "align_uniform": AlignUniformLoss,
                             "rpc": RPCLoss, "emmi": EMMILoss, "mi_bound": MIBoundLoss}
    module = build_loss("fmicl", divergence="vlc", sigma=0.3, backend="reference")
    assert isinstance(module, FMICLLoss) and module.hparams["divergence"] == "vlc" and module.hparams["sigma"] == 0.3
    critic_loss = build_loss("mi_bound", bound="dv", critic="concat", dim=3, hidden=7)
    assert critic_loss.critic.layer1.out_features == 7
    assert loss_keywords("rpc") == {"tau": 0.5, "alpha": 0.0, "beta": 0.001, "gamma": 1.0, "normalize": True}
    assert loss_keywords("mi_bound") == {"bound": REQUIRED, "critic": REQUIRED, "dim": REQUIRED, "hidden": None}


def test_build_loss_errors_suggest_names():
    with pytest.raises(LossArgumentError, match="did you mean 'infonce'") as info:
        build_loss("infonc")
    assert info.value.argument == "name"
    with pytest.raises(LossArgumentError, match="did you mean 'lambda_uniform'") as info:
        build_loss("align_uniform", lambda_uniformity=2.0)
    assert info.value.argument == "lambda_uniformity"
    with pytest.raises(LossArgumentError) as info:
        build_loss("mi_bound", bound="nwj")
    assert info.value.argument == "critic"


# ---------------------------------------------------------------------------------------------
# Backend dispatch (against a stand-in for fmicl_engine.loss.fused)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_fused(monkeypatch):
    calls = []
    module = types.ModuleType("fmicl_engine.loss.fused")
    module.supported = True
    module.result = torch.tensor(7.0)

    def supports(objective, z1, z2, **hyperparameters):
        calls.append(("supports", objective, hyperparameters))
        return module.supported

    def pairwise_loss(objective, z1, z2, *, gather_distributed, **hyperparameters):
        calls.append(("pairwise_loss", objective, gather_distributed, hyperparameters))
        return module.result

    def missing_kernels(device):
        return None

    module.supports, module.pairwise_loss, module.missing_kernels = supports, pairwise_loss, missing_kernels
    module.calls = calls
    monkeypatch.setitem(sys.modules, "fmicl_engine.loss.fused", module)
    monkeypatch.setattr(loss_package, "fused", module, raising=False)
    return module


def test_auto_uses_fused_when_supported(fake_fused):
    loss = fmicl_loss(z1, z2, "js", "cosine", tau=0.3)
    assert loss.item() == 7.0
    expected = dict(divergence="js", similarity="cosine", sigma=0.5, tau=0.3, mu=1.0, alpha=1.0, tsallis_alpha=1.5,
                    normalize=True)
    assert fake_fused.calls == [("supports", "fmicl", expected), ("pairwise_loss", "fmicl", False, expected)]


def test_auto_falls_back_to_reference_when_unsupported(fake_fused):
    fake_fused.supported = False
    assert infonce_loss(z1, z2, tau=0.3).item() == infonce_loss(z1, z2, tau=0.3, backend="reference").item()
    assert [c[0] for c in fake_fused.calls] == ["supports"]


def test_fused_and_gather_distributed_always_use_fused(fake_fused):
    fake_fused.supported = False
    align_uniform_loss(z1, z2, backend="fused")
    infonce_loss(z1, z2, backend="reference", gather_distributed=True)
    assert fake_fused.calls == [
        ("pairwise_loss", "align_uniform", False, dict(align_alpha=2.0, t=2.0, lambda_uniform=1.0)),
        ("pairwise_loss", "infonce", True, dict(tau=0.5, normalize=True)),
    ]


def test_reference_never_touches_fused(fake_fused):
    fmicl_loss(z1, z2, backend="reference")
    assert fake_fused.calls == []


def test_non_finite_fused_result_raises(fake_fused):
    fake_fused.result = torch.tensor(float("inf"))
    with pytest.raises(NonFiniteLossError, match="sigma=0.25") as info:
        fmicl_loss(z1, z2, "sh", sigma=0.25, backend="fused")
    assert info.value.argument == "sigma"


def test_defaults_left_open_by_the_paper_are_the_spec_choices():
    # LOSSES.md marks these as choices; a silent change of default changes every result.
    from fmicl_engine.loss import loss_keywords

    assert loss_keywords("emmi")["eps"] == 1e-4
    fm = loss_keywords("fmicl")
    assert (fm["mu"], fm["alpha"], fm["tsallis_alpha"], fm["normalize"]) == (1.0, 1.0, 1.5, True)
    rpc = loss_keywords("rpc")
    assert (rpc["alpha"], rpc["beta"], rpc["gamma"]) == (0.0, 0.001, 1.0)
    au = loss_keywords("align_uniform")
    assert (au["align_alpha"], au["t"], au["lambda_uniform"]) == (2.0, 2.0, 1.0)


def test_positional_build_loss_and_a_missing_process_group_name_the_problem():
    import pytest
    import torch

    from fmicl_engine.loss import LossArgumentError, build_loss, fmicl_loss

    with pytest.raises(LossArgumentError, match=r"by keyword, e.g. build_loss\('fmicl', divergence=...\); got positional 'kl'"):
        build_loss("fmicl", "kl")
    with pytest.raises(LossArgumentError, match="needs an initialised torch.distributed process group") as err:
        fmicl_loss(torch.randn(4, 3), torch.randn(4, 3), gather_distributed=True)
    assert err.value.argument == "gather_distributed"
