"""Random TTT-Linear/TTT-MLP inputs and a forward+backward run of one form of the op.

Shared by the Triton tests under the interpreter (``ttt_triton_interpreted.py``) and on a GPU
(``test_ttt_triton.py``): every leaf that the layer trains or feeds in gets a gradient, and the
output state gets a random cotangent too, so the gradients through the state are checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mixbench_kernels.ttt import TTTState, fresh_state


@dataclass(frozen=True)
class Case:
    kind: str  # "linear" or "mlp"
    batch: int
    heads: int
    seq: int
    dim: int
    mb: int  # mini-batch size
    pos: int = 0  # where the starting state is in its mini-batch

    def __str__(self) -> str:
        return f"{self.kind}-B{self.batch}H{self.heads}T{self.seq}d{self.dim}b{self.mb}p{self.pos}"


def make_leaves(case: Case, device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 leaves, pushed off their initial values so that every term of the function matters."""
    g = torch.Generator().manual_seed(seed)
    b, h, t, d = case.batch, case.heads, case.seq, case.dim

    def rnd(*shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset

    leaves = dict(q=rnd(b, h, t, d), k=rnd(b, h, t, d), v=rnd(b, h, t, d))
    leaves["lr"] = torch.rand(b, h, t, generator=g, dtype=torch.float64) * 0.3
    leaves["token_scale"] = 1.0 / torch.arange(1, case.mb + 1, dtype=torch.float64) + rnd(case.mb, scale=0.05)
    leaves["ln_weight"], leaves["ln_bias"] = rnd(h, 1, d, scale=0.3, offset=1.0), rnd(h, 1, d, scale=0.3)
    widths = (d, 4 * d, d) if case.kind == "mlp" else (d, d)
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        leaves[f"W{i}"] = rnd(h, d_in, d_out, scale=d_in**-0.5)
        leaves[f"b{i}"] = rnd(h, 1, d_out, scale=0.3)
        if case.pos:  # a state mid-mini-batch carries a partial gradient sum
            leaves[f"sum_W{i}"] = rnd(b, h, d_in, d_out, scale=0.1)
            leaves[f"sum_b{i}"] = rnd(b, h, 1, d_out, scale=0.1)
    return {k: v.to(device) for k, v in leaves.items()}


def run_form(form, leaves: dict[str, torch.Tensor], case: Case, dtype: torch.dtype, **kwargs):
    """Forward and backward of ``form`` on ``leaves`` cast to ``dtype``: the output, end state and gradients."""
    leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in leaves.items()}
    n_layers = 2 if case.kind == "mlp" else 1

    def tile(t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(0).expand(case.batch, *t.shape)

    params = tuple((tile(leaves[f"W{i}"]), tile(leaves[f"b{i}"])) for i in range(1, n_layers + 1))
    if case.pos:
        sums = tuple((leaves[f"sum_W{i}"], leaves[f"sum_b{i}"]) for i in range(1, n_layers + 1))
        state = TTTState(params, sums, case.pos)
    else:
        state = fresh_state(params)
    y, end = form(
        leaves["q"],
        leaves["k"],
        leaves["v"],
        leaves["lr"],
        state,
        token_scale=leaves["token_scale"],
        ln_weight=leaves["ln_weight"],
        ln_bias=leaves["ln_bias"],
        **kwargs,
    )
    outputs = {"y": y} | {f"end_{i}": t for i, t in enumerate(t for layer in end.params + end.grads for t in layer)}
    g = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device) for t in outputs.values()]
    loss = sum((t.double() * c).sum() for t, c in zip(outputs.values(), cotangents))
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    return {k: v.detach().double() for k, v in outputs.items()}, end.pos, {k: v.double() for k, v in grads.items()}


def relative_errors(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """``max |ours - ref| / max |ref|`` per name (shapes must match)."""
    errors = {}
    for name, r in ref.items():
        assert ours[name].shape == r.shape, name
        errors[name] = ((ours[name] - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
    return errors
