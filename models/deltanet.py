"""``deltanet``: DeltaNet, the delta-rule member of the linear-attention family (Yang et al. 2024).

Per head, ``S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1})`` and ``o_t = scale * q_t S_t``: one step of
online gradient descent on ``1/2 ||k_t S - v_t||^2`` per token, i.e. TTT-Linear with mini-batch 1
and no LayerNorm, residual or bias (``tests/models/test_linear_family.py`` shows it through the
generic ``ttt`` kernel). ``beta_t = sigmoid(x_t w_beta)`` per head; queries and keys are
L2-normalised per head, which keeps ``I - beta k^T k`` a contraction. The outer layer (projections,
LayerNorm over heads, output projection, backends) is ``LinearFamilyMixer``'s. Left out from fla's
layer: the short convolutions and the SiLU feature map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixbench_kernels.delta_rule import delta_rule_chunked, delta_rule_fla, delta_rule_flops, delta_rule_reference
from models.linear_attention import LinearFamilyMixer
from models.registry import register_mixer


@register_mixer("deltanet")
class DeltaNet(LinearFamilyMixer):
    """DeltaNet (module doc)."""

    kernels = {"fla": delta_rule_fla, "chunked": delta_rule_chunked, "reference": delta_rule_reference}

    def __init__(
        self, d_model: int, layer_idx: int = 0, n_heads: int = 4, chunk_size: int = 64, backend: str = "auto"
    ) -> None:
        super().__init__(d_model, n_heads, chunk_size, backend)
        self.beta_proj = nn.Linear(d_model, n_heads, bias=False)
        nn.init.normal_(self.beta_proj.weight, std=0.02)

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v = super()._inputs(x)
        beta = torch.sigmoid(self.beta_proj(x)).transpose(1, 2)
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, beta

    def flops(self, seq_len: int) -> int:
        """Matmul FLOPs of the chunked form (2 per multiply-add)."""
        hd = self.head_dim
        rule = delta_rule_flops(seq_len, self.n_heads, hd, hd, self.chunk_size)
        return self._projection_flops(seq_len) + 2 * seq_len * self.d_model * self.n_heads + rule
