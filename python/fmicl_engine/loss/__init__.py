"""The objectives of fmicl-engine, as defined in the project's LOSSES.md.

Functions return the loss to minimise as a 0-dim tensor; each has an ``nn.Module`` twin taking the
same keywords, registered by name in ``LOSS_REGISTRY`` for ``build_loss(name, **kwargs)``.

    fmicl_loss, infonce_loss, align_uniform_loss   pairwise; backend "auto" | "fused" | "reference"
    rpc_loss, emmi_loss                            reference (pure PyTorch) only
    mi_bound(scores, bound)                        InfoNCE / NWJ / DV bound of a critic's scores
    MIBoundLoss(bound, critic, dim, hidden=None)   -bound(critic(z1, z2)), trainable critic

Errors: LossArgumentError (a ValueError; ``.argument`` names the input or keyword) for invalid
arguments (meta tensors included: they have no values to check), NonFiniteLossError (a
FloatingPointError; ``.argument`` names the hyperparameter it is owed to) when the loss overflows
to inf/NaN.

The checks of values on the device (finite embeddings or scores, loss and fused gradient; each
once per call) raise at once, a host-device sync each; inside ``with DeferredFiniteChecks() as checks:`` they
are recorded on the device instead, and ``checks.check()`` (one sync) raises the first failure since
the last check. Nothing else on the fused path reads a device value, and under ``torch.no_grad()``
the fused ops compute the loss without its gradient.
"""

from fmicl_engine.loss.functional import align_uniform_loss, emmi_loss, fmicl_loss, infonce_loss, rpc_loss
from fmicl_engine.loss.mi_bounds import BilinearCritic, ConcatCritic, MIBoundLoss, SeparableCritic, mi_bound
from fmicl_engine.loss.modules import AlignUniformLoss, EMMILoss, FMICLLoss, InfoNCELoss, RPCLoss
from fmicl_engine.loss.registry import LOSS_REGISTRY, REQUIRED, build_loss, loss_keywords
from fmicl_engine.loss.validation import DeferredFiniteChecks, LossArgumentError, NonFiniteLossError

__all__ = [
    "fmicl_loss", "infonce_loss", "align_uniform_loss", "rpc_loss", "emmi_loss", "mi_bound",
    "FMICLLoss", "InfoNCELoss", "AlignUniformLoss", "RPCLoss", "EMMILoss", "MIBoundLoss",
    "BilinearCritic", "SeparableCritic", "ConcatCritic",
    "LOSS_REGISTRY", "REQUIRED", "build_loss", "loss_keywords",
    "LossArgumentError", "NonFiniteLossError", "DeferredFiniteChecks",
]
