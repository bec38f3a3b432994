"""The depthwise causal conv without causal-conv1d: the shift-add path == ``F.conv1d`` == causal-conv1d's reference.

Forward and every gradient (input, weight, bias, the entering window), with and without SiLU,
lengths shorter and longer than the width; the decode update equals the full conv token by
token. The Triton update kernel is tested under the interpreter (``mamba_triton_interpreted.py``).
"""

from __future__ import annotations

import pytest
import torch

from mixbench_kernels.causal_conv import causal_conv1d_reference, causal_conv1d_shift, causal_conv1d_update_reference


def make(batch=2, T=9, channels=6, width=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, T, channels, generator=g, dtype=dtype),
        "weight": torch.randn(channels, width, generator=g, dtype=dtype),
        "bias": torch.randn(channels, generator=g, dtype=dtype),
        "initial_state": torch.randn(batch, channels, width - 1, generator=g, dtype=dtype),
    }


def run(conv, inputs, activation, drop=()):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k not in drop}
    y, window = conv(**leaves, activation=activation)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    return y, window, torch.autograd.grad((y * w).sum(), list(leaves.values()))


@pytest.mark.parametrize(("T", "width"), [(1, 4), (3, 4), (17, 4), (9, 2), (5, 3)])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("drop", [(), ("initial_state", "bias")])
def test_shift_equals_conv1d_forward_and_gradients(T, width, activation, drop):
    inputs = make(T=T, width=width, seed=T)
    ours, ref = (
        run(causal_conv1d_shift, inputs, activation, drop),
        run(causal_conv1d_reference, inputs, activation, drop),
    )
    torch.testing.assert_close(ours[0], ref[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours[1], ref[1], atol=0, rtol=0)
    for a, b in zip(ours[2], ref[2]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_matches_causal_conv1d_reference(causal_conv1d_interface):
    inputs = {k: v.float() for k, v in make(T=33, channels=10).items()}
    for activation in (None, "silu"):
        ours = run(causal_conv1d_shift, inputs, activation)

        def theirs(x, weight, bias, initial_state, activation):
            y, final = causal_conv1d_interface.causal_conv1d_ref(
                x.transpose(1, 2), weight, bias, initial_state, return_final_states=True, activation=activation
            )
            return y.transpose(1, 2), final

        ref = run(theirs, inputs, activation)
        torch.testing.assert_close(ours[0], ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours[1], ref[1])
        for a, b in zip(ours[2], ref[2]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_update_steps_equal_the_whole_sequence():
    inputs = make(T=12)
    full, _ = causal_conv1d_reference(**inputs, activation="silu")
    window = inputs["initial_state"].clone()
    for t in range(12):
        y = causal_conv1d_update_reference(inputs["x"][:, t], window, inputs["weight"], inputs["bias"], "silu")
        torch.testing.assert_close(y, full[:, t], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(window, inputs["x"][:, -3:].transpose(1, 2))


def test_bad_arguments_say_what_in_one_line():
    inputs = make()
    for conv in (causal_conv1d_shift, causal_conv1d_reference):
        with pytest.raises(ValueError, match="activation must be None or 'silu', got 'relu'"):
            conv(inputs["x"], inputs["weight"], activation="relu")
        with pytest.raises(ValueError, match=r"weight must be \(channels, width\) with channels = x.shape\[-1\] = 6"):
            conv(inputs["x"], inputs["weight"][:5])
