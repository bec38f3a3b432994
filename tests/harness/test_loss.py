"""``harness.engine.loss.cross_entropy``: the plain float32 ``F.cross_entropy`` computed in row chunks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.engine.loss import cross_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [16, 101, 203], ids=["chunks+remainder", "two-chunks+1", "plain-path"])
def test_chunked_loss_and_gradients_equal_the_plain_float32_cross_entropy(dtype, rows):
    torch.manual_seed(0)
    logits = (torch.randn(203, 97) * 3).to(dtype).requires_grad_()
    targets = torch.randint(0, 97, (203,))
    targets[::7] = -100  # unscored positions (harness.tasks.IGNORE_INDEX) count neither in the sum nor the mean
    plain = F.cross_entropy(logits.float(), targets)
    (g_plain,) = torch.autograd.grad(plain / 4, logits)  # / 4: a gradient-accumulation step's scaling
    chunked = cross_entropy(logits, targets, chunk_elements=97 * rows)
    (g_chunked,) = torch.autograd.grad(chunked / 4, logits)
    assert chunked.dtype == torch.float32 and g_chunked.dtype == dtype
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=0)  # the same per-token terms, summed in another order
    assert torch.equal(g_chunked, g_plain)  # each element by the same operations: bit for bit


def test_the_loss_is_nan_without_a_scored_token_like_the_plain_one_and_bad_shapes_are_one_line():
    logits = torch.randn(40, 8, requires_grad=True)
    none_scored = torch.full((40,), -100)
    assert (
        cross_entropy(logits, none_scored, chunk_elements=8 * 4).isnan()
        and F.cross_entropy(logits, none_scored).isnan()
    )
    with pytest.raises(
        ValueError, match=r"expected logits \(tokens, vocab\) and targets \(tokens,\), got \(2, 20, 8\)"
    ):
        cross_entropy(logits.view(2, 20, 8), none_scored)
    with pytest.raises(ValueError, match=r"got \(40, 8\) and \(39,\)"):
        cross_entropy(logits, none_scored[:39])
