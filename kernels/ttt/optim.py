"""Inner optimizers of a TTT layer, and the state that carries their moments between tokens.

The paper trains the hidden state by mini-batch gradient descent (§2.4): inside a mini-batch of
``b`` tokens every gradient is taken at the weights ``W_0`` in force when it began, and after its
``i``-th token the weights are ``W_0 - u_i`` with the gradient-descent step

    u_i = s_i * sum_{j<=i} lr_j * grad l(W_0; token j)

(``s_i``: the per-position scale ``max(1/i + offset_i, 0)``; ``lr_j``: the learnable per-token
inner learning rate). Another optimizer keeps that scheme and only changes what the step is: it
receives ``u_i`` as its gradient, with the moments it held at the mini-batch start, and returns
the step ``d_i``; the weights after token ``i`` are ``W_0 - d_i``. At the end of the mini-batch
``W_0 - d_b`` and the moments at ``b`` are carried into the next one.

* ``gd``: ``d = u`` (the paper; no moments);
* ``momentum`` (heavy ball): ``m = beta1 m_0 + u``, ``d = m``;
* ``adam``: ``m = beta1 m_0 + (1 - beta1) u``, ``v = beta2 v_0 + (1 - beta2) u^2``,
  ``d = lr * m_hat / sqrt(v_hat + eps^2)`` with bias correction at ``t`` = the mini-batch's
  1-based index. ``eps`` sits inside the square root so the step stays differentiable where
  ``v = 0`` (a parameter no token has moved yet); Adam is scale-invariant in ``u``, so it has its
  own step size ``lr``, and the learnable ``lr_j`` weight the tokens relative to each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

OPTIMIZERS = ("gd", "momentum", "adam")
N_MOMENTS = {"gd": 0, "momentum": 1, "adam": 2}


@dataclass(frozen=True)
class InnerOptimizer:
    """Which rule turns the gradient-descent step into the step taken, and its constants."""

    name: str = "gd"
    beta1: float = 0.9  # momentum coefficient (momentum) or first-moment decay (adam)
    beta2: float = 0.999
    lr: float = 1e-2  # adam's step size
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"inner_optimizer {self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"inner optimizer betas must be in [0, 1), got {self.beta1}, {self.beta2}")

    @property
    def n_moments(self) -> int:
        return N_MOMENTS[self.name]

    def step(
        self, u: torch.Tensor, moments: tuple[torch.Tensor, ...], t: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The step ``d`` for the gradient-descent step ``u`` of one parameter, and the new moments.

        ``moments`` are this parameter's at the mini-batch start (broadcastable against ``u``,
        which may carry an extra leading token dim); ``t`` is the 1-based mini-batch index.
        """
        if self.name == "gd":
            return u, ()
        if self.name == "momentum":
            m = self.beta1 * moments[0] + u
            return m, (m,)
        m = self.beta1 * moments[0] + (1 - self.beta1) * u
        v = self.beta2 * moments[1] + (1 - self.beta2) * u * u
        m_hat, v_hat = m / (1 - self.beta1**t), v / (1 - self.beta2**t)
        return self.lr * m_hat * torch.rsqrt(v_hat + self.eps**2), (m, v)


class GenericState(NamedTuple):
    """Where a generic inner learner stands between tokens (every tensor leads with ``(batch, heads)``).

    ``params``: the inner model's parameters at the current mini-batch's start. ``grads``:
    ``sum_j lr_j grad l(params; token j)`` over its tokens seen so far. ``moments``: the
    optimizer's moments at its start, one tuple per moment, each shaped like ``params``.
    ``pos``: tokens of the current mini-batch seen (0 .. b-1); ``steps``: mini-batches completed.
    """

    params: tuple[torch.Tensor, ...]
    grads: tuple[torch.Tensor, ...]
    moments: tuple[tuple[torch.Tensor, ...], ...]
    pos: int
    steps: int

    def numel_per_sequence(self) -> int:
        """Numbers held for one sequence: the decode state size."""
        tensors = [*self.params, *self.grads, *(t for m in self.moments for t in m)]
        return sum(t[0].numel() for t in tensors)


def fresh_generic_state(params: tuple[torch.Tensor, ...], optimizer: InnerOptimizer) -> GenericState:
    """The state before the first token: initial parameters, no gradient, zero moments."""
    zeros = tuple(torch.zeros_like(p) for p in params)
    return GenericState(tuple(params), zeros, tuple(zeros for _ in range(optimizer.n_moments)), 0, 0)
