"""Argument and value checks shared by every loss backend (reference, fused CPU, fused CUDA).

Each argument check raises :class:`LossArgumentError` naming the offending argument
(``err.argument``), so a config error points at the config key. The hyperparameter bundles
(``fmicl_hyperparameters`` ...) return the validated keywords as a dict: the one form in which they
are passed to a backend.

Value checks (finite embeddings, a finite loss, a finite gradient of a fused op, positive-definite
EMMI covariances) read a device value, a host-device sync on a GPU. They all go through
``raise_if``: at once by default, or, inside :class:`DeferredFiniteChecks`, recorded on the device
and raised by its ``check()``. Checks of Python values, shapes, dtypes and devices read host
metadata only and always raise at once.
"""

from __future__ import annotations

import contextvars
import difflib
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch

DIVERGENCES = ("kl", "js", "pearson", "sh", "tsallis", "vlc")
SIMILARITIES = ("gaussian", "cosine")
BACKENDS = ("auto", "fused", "reference")
BOUNDS = ("infonce", "nwj", "dv")
CRITICS = ("bilinear", "separable", "concat")


class LossArgumentError(ValueError):
    """An invalid input or hyperparameter of a loss; ``argument`` names it (e.g. ``"sigma"``)."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument

    def __reduce__(self):  # picklable across processes (the default would drop ``argument``)
        return type(self), (self.argument, str(self))


class NonFiniteLossError(FloatingPointError):
    """The loss evaluated to inf/NaN although every argument was valid on its own.

    A ``FloatingPointError`` rather than a ``ValueError``: the arguments passed their checks, it is the
    arithmetic that overflowed for this combination (e.g. SH with a tiny sigma). ``argument`` names
    the hyperparameter to change first (``"sigma"``, ``"tau"``, ``"eps"``), or None.
    """

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument

    def __reduce__(self):
        return type(self), (str(self), self.argument)


def did_you_mean(word, choices: Iterable, prefix: str = "") -> str:
    """" (did you mean 'x'?)" for the choice closest to ``word``, or "" when none is close or
    ``word`` is not a string. ``prefix`` goes before the suggestion (a config section: "loss.").

    The one spelling hint of the package: loss arguments and config keys both use it.
    """
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(choice) for choice in choices], n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------------------
# Scalars
# ---------------------------------------------------------------------------------------------


def check_real(name: str, value) -> float:
    """A finite real number (bool is refused: ``sigma=True`` is a config mistake, not 1.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LossArgumentError(name, f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise LossArgumentError(name, f"{name} must be finite, got {value}")
    return value


def check_positive(name: str, value) -> float:
    value = check_real(name, value)
    if value <= 0:
        raise LossArgumentError(name, f"{name} must be > 0, got {value}")
    return value


def check_nonnegative(name: str, value) -> float:
    value = check_real(name, value)
    if value < 0:
        raise LossArgumentError(name, f"{name} must be >= 0, got {value}")
    return value


def check_tsallis_alpha(value) -> float:
    value = check_positive("tsallis_alpha", value)
    if value == 1.0:
        raise LossArgumentError(
            "tsallis_alpha", "tsallis_alpha must differ from 1 (its limit is the kl divergence: use divergence='kl')"
        )
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise LossArgumentError(name, f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise LossArgumentError(
            name, f"{name}={value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}"
        )
    return value


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------


def _check_layout(name: str, z, min_rows: int) -> None:
    if not isinstance(z, torch.Tensor):
        raise LossArgumentError(name, f"{name} must be a torch.Tensor, got {type(z).__name__}")
    check_not_meta(name, z)
    if z.dim() != 2:
        raise LossArgumentError(name, f"{name} must be 2-D (batch, dim), got shape {tuple(z.shape)}")
    if z.shape[0] < min_rows or z.shape[1] < 1:
        raise LossArgumentError(
            name, f"{name} needs at least {min_rows} rows and 1 column, got shape {tuple(z.shape)}"
        )
    if not z.is_floating_point():
        raise LossArgumentError(name, f"{name} must have a floating-point dtype, got {z.dtype}")


def check_not_meta(name: str, z: torch.Tensor) -> None:
    """Meta tensors are refused rather than given a shape-only loss: the loss promises a checked
    value, and a meta tensor has none. torch.compile traces with FakeTensors, whose device is the
    real one, so they pass (the value checks are graph breaks there)."""
    if z.device.type == "meta":
        raise LossArgumentError(name, f"{name} is a meta tensor: meta tensors have no values, so the loss can "
                                      f"neither compute nor check it; pass tensors on a real device")


def _check_finite(name: str, z: torch.Tensor) -> None:
    # One reduction (and, unless deferred, a device sync): it turns a silent NaN loss into an
    # error that names the input.
    raise_if(~torch.isfinite(z).all(), Failure(LossArgumentError, name, f"{name} contains inf or NaN"))


def check_pair(z1, z2, min_rows: int = 2) -> None:
    """Two views' embeddings: each a finite floating-point (rows, dim) tensor with at least
    ``min_rows`` rows and one column, both with the same shape, dtype and device."""
    _check_layout("z1", z1, min_rows)
    _check_layout("z2", z2, min_rows)
    if z1.shape != z2.shape:
        raise LossArgumentError("z2", f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and "
                                      f"{tuple(z2.shape)}")
    if z1.dtype != z2.dtype:
        raise LossArgumentError("z2", f"z1 and z2 must have the same dtype, got {z1.dtype} and {z2.dtype}")
    if z1.device != z2.device:
        raise LossArgumentError("z2", f"z1 and z2 must be on the same device, got {z1.device} and {z2.device}")
    _check_finite("z1", z1)
    _check_finite("z2", z2)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference computes (and returns the loss) in: float32 for float16/bfloat16,
    whose range (float16 overflows at 65504) and 8-bit mantissa (bfloat16) are too narrow for
    exp/log of similarities; the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_finite_loss(loss: torch.Tensor, objective: str, *, scale: str | None = None,
                      hyperparameters: dict | None = None, group=None, **context) -> torch.Tensor:
    """Return ``loss``; raise NonFiniteLossError if it is inf/NaN (via ``raise_if``: one device
    sync, or deferred).

    The error's ``argument`` is the hyperparameter to change first: given ``hyperparameters`` (the
    objective's validated keywords), the one the overflow is owed to (``Failure.overflow``, worked
    out when the error is raised); otherwise ``scale``. ``context`` holds the values the message
    shows (divergence, sigma ...). ``group``: a process group whose ranks each hold a share of the
    loss (gather_distributed); they agree (one all-reduce of one element), so all raise or none: a
    rank raising alone would leave the others waiting in the backward's collective.
    """
    described = ", ".join(f"{k}={v!r}" for k, v in context.items())
    failure = Failure(NonFiniteLossError, scale,
                      f"{objective} loss is {{value}} ({described}) in {loss.dtype}: a term of the objective "
                      f"overflows this dtype for these inputs; {{advice}}or pass float64 embeddings",
                      overflow_diagnosis(objective, hyperparameters, loss.dtype))
    raise_if(~torch.isfinite(loss), failure, value=loss, group=group)
    return loss


# ---------------------------------------------------------------------------------------------
# Raising on a device value: at once, or deferred to DeferredFiniteChecks.check()
# ---------------------------------------------------------------------------------------------


class Failure(NamedTuple):
    """The error a value check raises. Hashable: a deferred record keeps one entry per distinct check."""

    error_type: type  # LossArgumentError or NonFiniteLossError
    argument: str | None  # the error's ``argument``
    message: str  # "{value}" in it stands for the offending value (the loss, a Cholesky order)
    # A non-finite loss's (overflow_diagnosis), or None: with it, the hyperparameter the overflow is
    # owed to (worked out only when the error is raised) replaces ``argument``. "{advice}" in the
    # message becomes what to do about the argument.
    overflow: tuple | None = None

    def error(self, value: str = "", note: str = "") -> Exception:
        argument, message, advice = self.argument, self.message, ""
        if self.overflow is not None:
            from fmicl_engine.loss.reference import overflow_argument  # here: reference imports this module

            objective, items, dtype = self.overflow
            hyperparameters = dict(items)
            argument = overflow_argument(objective, hyperparameters, dtype)
            if argument is not None:
                advice = f"{_OVERFLOW_ADVICE[argument]} ({argument}={hyperparameters[argument]!r}), "
        elif argument in _OVERFLOW_ADVICE:
            advice = f"{_OVERFLOW_ADVICE[argument]}, "
        message = message.replace("{advice}", advice).replace("{value}", value) + note
        if self.error_type is LossArgumentError:
            return LossArgumentError(argument, message)
        return self.error_type(message, argument=argument)


def overflow_diagnosis(objective: str, hyperparameters: dict | None, dtype: torch.dtype) -> tuple | None:
    """``Failure.overflow`` of ``objective``'s loss (or fused gradient) computed in ``dtype``; None
    without hyperparameters."""
    if hyperparameters is None:
        return None
    return objective, tuple(sorted(hyperparameters.items())), dtype


# What to do about each hyperparameter a non-finite loss can be owed to (reference.overflow_argument).
_OVERFLOW_ADVICE = {
    "sigma": "increase sigma", "tau": "increase tau", "eps": "increase eps", "t": "decrease t",
    "mu": "bring mu closer to 1", "alpha": "decrease alpha", "tsallis_alpha": "bring tsallis_alpha closer to 1",
    "align_alpha": "decrease align_alpha", "lambda_uniform": "decrease lambda_uniform", "beta": "decrease beta",
    "gamma": "decrease gamma",
}


def overflow_advice(argument: str) -> str:
    """What to do about ``argument`` when the loss overflows for its value ("increase sigma")."""
    return _OVERFLOW_ADVICE.get(argument, f"change {argument}")


_OTHER_RANK = "finite here but not on another rank"
_DEFERRED: contextvars.ContextVar[DeferredFiniteChecks | None] = contextvars.ContextVar(
    "fmicl_engine_deferred_finite_checks", default=None)


def raise_if(bad: torch.Tensor, failure: Failure, *, value: torch.Tensor | None = None, group=None) -> None:
    """Raise ``failure.error()`` if the 0-dim bool tensor ``bad`` is true; ``value`` (0-dim) is
    shown for "{value}" in the message.

    At once by default: one device sync, after, with a process ``group``, one all-reduce of one
    element so that the ranks agree and all raise or none (a rank whose own ``bad`` is false shows
    "finite here but not on another rank" for "{value}"). Inside :class:`DeferredFiniteChecks`:
    neither a sync nor a collective; the verdict is recorded on the device for its ``check()``.
    """
    deferred = _DEFERRED.get()
    if deferred is not None:
        deferred.record(bad, failure, value)
        return
    bad_anywhere = bad
    if group is not None:
        import torch.distributed as dist

        flag = bad.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        bad_anywhere = flag.bool()
    if bool(bad_anywhere):
        shown = "" if value is None else f"{value.item():g}"
        raise failure.error(shown if bool(bad) else _OTHER_RANK)


class DeferredFiniteChecks:
    """The loss's value checks without a host-device sync per call: ``check()`` reads them at once.

    Inside ``with checks:`` (in the thread that entered it), every value check of
    fmicl_engine.loss (finite embeddings, finite loss, finite gradient of a fused op,
    positive-definite EMMI covariances) records its verdict on the device instead of reading it:
    per device, two 0-dim tensors hold the first check that failed since the last ``check()`` and
    the value it shows. Nothing is read on the host and nothing is all-reduced per call. Argument
    checks of Python values, shapes, dtypes and devices still raise at once.

    ``check()`` reads the record (one sync per device, one in practice), resets it, and raises the
    error the immediate check would have raised first (same type, ``argument`` and message, which
    adds that it happened within the steps since the last check), or returns None. Leaving the
    context without an exception calls ``check()``, so nothing non-finite leaves it silently.
    Between two checks an optimiser may step on non-finite gradients: a training loop calls
    ``check()`` on its logging steps and before saving each checkpoint.

    ``group`` (distributed runs): ``check()`` first all-reduces the flag over the group (one
    collective per check: every rank calls it at the same step, one device per rank), and every
    rank raises: the failing rank its own error, the others a NonFiniteLossError (argument None)
    saying that another rank failed. Without a group each rank raises on its own; under torchrun
    that still ends the job, once torchrun stops the ranks waiting in their next collective.
    """

    _NOTE = " (a deferred check: it happened within the steps since the last check)"

    def __init__(self, group=None):
        self.group = group
        self._codes: dict[Failure, int] = {}  # each distinct failure recorded -> its code 1, 2, ... (0: none)
        self._records: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # -> (first code, its value)
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> DeferredFiniteChecks:
        self._tokens.append(_DEFERRED.set(self))
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        _DEFERRED.reset(self._tokens.pop())
        if exc_type is None:
            self.check()

    def record(self, bad: torch.Tensor, failure: Failure, value: torch.Tensor | None = None) -> None:
        """Keep ``failure`` (and ``value``) on ``bad``'s device if ``bad`` and nothing failed before."""
        code = self._codes.setdefault(failure, len(self._codes) + 1)
        if bad.device not in self._records:
            with torch.inference_mode(False):  # updated in place, also by later calls outside inference mode
                self._records[bad.device] = (torch.zeros((), dtype=torch.int64, device=bad.device),
                                             torch.zeros((), dtype=torch.float64, device=bad.device))
        first_code, first_value = self._records[bad.device]
        first = bad & (first_code == 0)
        first_code.masked_fill_(first, code)
        if value is not None:
            first_value.copy_(torch.where(first, value.detach().to(torch.float64), first_value))

    def check(self) -> None:
        """Raise the first failure recorded since the last check, as described above; reset."""
        rows = []
        for first_code, first_value in self._records.values():
            failed = (first_code != 0).to(torch.int32)
            if self.group is not None:
                import torch.distributed as dist

                dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=self.group)
            rows.append(torch.stack([first_code.double(), first_value, failed.double()]).tolist())  # the sync
            first_code.zero_()
        failures, self._codes = list(self._codes), {}
        for code, value, _ in rows:
            if code:
                raise failures[int(code) - 1].error(f"{value:g}", self._NOTE)
        if any(failed_anywhere for _, _, failed_anywhere in rows):
            raise NonFiniteLossError("a check of the loss failed on another rank within the steps since the last "
                                     "check (that rank's error names it); every value was finite on this rank")


# ---------------------------------------------------------------------------------------------
# Hyperparameter bundles: validated keywords, in the form every backend receives them. The
# defaults live in the public signatures (functional.py, modules.py), not here.
# ---------------------------------------------------------------------------------------------


def fmicl_hyperparameters(divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize) -> dict:
    return dict(
        divergence=check_choice("divergence", divergence, DIVERGENCES),
        similarity=check_choice("similarity", similarity, SIMILARITIES),
        sigma=check_positive("sigma", sigma),
        tau=check_positive("tau", tau),
        mu=check_positive("mu", mu),
        alpha=check_nonnegative("alpha", alpha),
        tsallis_alpha=check_tsallis_alpha(tsallis_alpha),
        normalize=check_bool("normalize", normalize),
    )


def infonce_hyperparameters(tau, normalize) -> dict:
    return dict(tau=check_positive("tau", tau), normalize=check_bool("normalize", normalize))


def align_uniform_hyperparameters(align_alpha, t, lambda_uniform) -> dict:
    return dict(
        align_alpha=check_positive("align_alpha", align_alpha),
        t=check_positive("t", t),
        lambda_uniform=check_nonnegative("lambda_uniform", lambda_uniform),
    )


def rpc_hyperparameters(tau, alpha, beta, gamma, normalize) -> dict:
    return dict(
        tau=check_positive("tau", tau),
        alpha=check_nonnegative("alpha", alpha),
        beta=check_nonnegative("beta", beta),
        gamma=check_nonnegative("gamma", gamma),
        normalize=check_bool("normalize", normalize),
    )


def emmi_hyperparameters(eps) -> dict:
    return dict(eps=check_positive("eps", eps))
