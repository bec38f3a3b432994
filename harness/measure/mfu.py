"""Model FLOPs utilisation: analytic training FLOPs per second over the devices' peak.

MFU = ``flops/train`` (``harness.measure.flops``: 3 × the analytic forward) / elapsed seconds /
(peak per device × devices). The peaks are the vendors' dense bf16 tensor-core figures
(no sparsity). A device not in the table has no MFU unless ``train.peak_tflops`` says its
peak; a CPU has none.
"""

from __future__ import annotations

import torch

# dense bf16 TFLOP/s per GPU, by a substring of torch.cuda.get_device_name()
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "A100": 312.0,
}


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s, the override if given, None if unknown."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def mfu(train_flops: float, seconds: float, peak: float | None, devices: int = 1) -> float | None:
    """The fraction of ``devices`` × ``peak`` TFLOP/s that ``train_flops`` in ``seconds`` used."""
    if peak is None or seconds <= 0:
        return None
    return train_flops / seconds / (peak * 1e12 * devices)
