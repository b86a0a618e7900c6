"""One reading of an objective's keywords (loss_signature) serves the loss registry, the config's
[loss] checks and the arguments the engine supplies; one spelling hint serves loss and config errors."""

import inspect

import pytest

from fmicl_engine.config import ConfigErrors, config_from_dict, engine_loss_arguments, loss_parameters
from fmicl_engine.config import loader
from fmicl_engine.config.loader import ENGINE_SUPPLIED_LOSS_ARGUMENTS
from fmicl_engine.loss import LOSS_REGISTRY, REQUIRED, LossArgumentError, build_loss, loss_keywords
from fmicl_engine.loss import validation
from fmicl_engine.loss.registry import LossKeyword, loss_signature


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.mark.parametrize("name", list(LOSS_REGISTRY))
def test_every_view_comes_from_the_one_signature(name):
    signature = loss_signature(name)
    assert all(isinstance(keyword, LossKeyword) for keyword in signature.values())
    assert loss_keywords(name) == {key: keyword.default for key, keyword in signature.items()}
    assert loss_parameters(name) == {key: tuple(keyword) for key, keyword in signature.items()
                                     if key not in ENGINE_SUPPLIED_LOSS_ARGUMENTS}
    # the keywords are the module's, in its order, with its defaults
    init = list(inspect.signature(LOSS_REGISTRY[name].__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in init] == [(key, keyword.default) for key, keyword in signature.items()]


def test_annotations_are_resolved_types():
    fmicl = loss_signature("fmicl")
    assert fmicl["sigma"] == LossKeyword(float, 0.5)
    assert fmicl["divergence"] == LossKeyword(str, "kl") and fmicl["normalize"] == LossKeyword(bool, True)
    mi_bound = loss_signature("mi_bound")
    assert mi_bound["dim"] == LossKeyword(int, REQUIRED)
    assert mi_bound["hidden"] == LossKeyword(int | None, None)


def test_the_signature_is_read_once_per_objective():
    assert loss_signature("rpc") is loss_signature("rpc")


def test_engine_supplied_arguments_are_the_ones_the_objective_takes():
    cfg = config_from_dict({"model": {"projector_out_dim": 16}})
    for name in LOSS_REGISTRY:
        supplied = engine_loss_arguments(name, cfg, world_size=2)
        assert set(supplied) <= set(ENGINE_SUPPLIED_LOSS_ARGUMENTS) & set(loss_signature(name))
        assert set(supplied) == set(ENGINE_SUPPLIED_LOSS_ARGUMENTS) & set(loss_signature(name))


def test_an_unknown_objective_is_a_loss_argument_error():
    with pytest.raises(LossArgumentError) as info:
        loss_signature("infonse")
    assert info.value.argument == "name" and "(did you mean 'infonce'?)" in str(info.value)


def test_one_spelling_hint_for_loss_arguments_and_config_keys():
    assert loader.did_you_mean is validation.did_you_mean
    assert not hasattr(loader, "_did_you_mean")
    hint = validation.did_you_mean
    assert hint("sigam", ["sigma", "tau"]) == " (did you mean 'sigma'?)"
    assert hint("sigam", ["sigma", "tau"], "loss.") == " (did you mean 'loss.sigma'?)"
    assert hint("zzz", ["sigma", "tau"]) == "" and hint(3, ["3"]) == ""
    with pytest.raises(LossArgumentError, match=r"\(did you mean 'pearson'\?\)"):
        build_loss("fmicl", divergence="pearsn")
    with pytest.raises(ConfigErrors, match=r"\(did you mean 'loss.sigma'\?\)"):
        config_from_dict({"loss": {"sigam": 0.5}})


def test_dead_helpers_are_gone():
    assert not hasattr(validation, "check_embeddings")
    assert not hasattr(validation, "PAIRWISE_OBJECTIVES")
