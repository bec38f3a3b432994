"""Backend choice by device and dtype, probes that load the compiled extension, decode backends."""

from __future__ import annotations

import importlib

import pytest
import torch

from models import ModelSpec, build
from models.attention import Attention
from models.mixer import Backend, SequenceMixer, always, import_error, needs_cuda_module

CPU = torch.device("cpu")


class HalfOnly(SequenceMixer):
    backends = (Backend("half-kernel", always, (torch.float16, torch.bfloat16)), Backend("torch", always))


def test_a_backend_is_chosen_by_dtype_as_well_as_device():
    mixer = HalfOnly()
    assert mixer.select_backend(CPU, torch.bfloat16) == "half-kernel"
    assert mixer.select_backend(CPU, torch.float32) == "torch"  # float32 never reaches a half-only kernel
    assert mixer.select_backend(CPU) == "half-kernel"  # dtype not asked: the device decides
    forced = HalfOnly(backend="half-kernel")
    with pytest.raises(
        RuntimeError, match="backend 'half-kernel' cannot run: needs float16/bfloat16 inputs, got float32"
    ):
        forced.select_backend(CPU, torch.float32)


def test_attention_declares_flash_attn_for_half_precision_only():
    flash = Attention.backends[0]
    assert flash.name == "flash-attn" and flash.dtypes == (torch.float16, torch.bfloat16)
    model = build(ModelSpec.parse("attention@transformer", "micro", vocab_size=50))
    assert model.backends(CPU, torch.float32) == ["sdpa"] == model.backends(CPU, torch.float32, decode=True)


def test_probe_imports_the_compiled_extension_once_and_says_why_it_failed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend, to reach the import
    calls = []
    real_import = importlib.import_module

    def failing_import(name: str, *args):
        if name == "mixbench_fake_kernels_cuda":  # a found package whose .so was built for another torch
            calls.append(name)
            raise ImportError("mixbench_fake_kernels_cuda.so: undefined symbol: _ZN3c10\nmore detail")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", failing_import)
    import_error.cache_clear()
    try:
        probe = needs_cuda_module("torch", "mixbench_fake_kernels_cuda")
        reason = probe(torch.device("cuda"))
        assert reason == (
            "mixbench_fake_kernels_cuda does not import: "
            "ImportError: mixbench_fake_kernels_cuda.so: undefined symbol: _ZN3c10"
        )
        assert probe(torch.device("cuda")) == reason and calls == ["mixbench_fake_kernels_cuda"]  # imported once
        assert probe(CPU) == "needs a CUDA device, got cpu"
    finally:
        import_error.cache_clear()


def test_probe_without_cuda_or_package_says_so():
    assert needs_cuda_module("mixbench_no_such_package")(None) == "package 'mixbench_no_such_package' is not installed"
    if not torch.cuda.is_available():
        assert needs_cuda_module("torch", "torch")(None) == "needs a CUDA GPU"


def test_decode_backends_are_chosen_separately():
    class FusedDecode(SequenceMixer):
        backends = (Backend("kernel", always), Backend("torch", always))
        decode_backends = (Backend("kernel", lambda device: "no decode kernel here"), Backend("torch", always))

    mixer = FusedDecode()
    assert mixer.select_backend(CPU) == "kernel" and mixer.select_backend(CPU, decode=True) == "torch"
    with pytest.raises(RuntimeError, match="backend 'kernel' cannot run: no decode kernel here"):
        FusedDecode(backend="kernel").select_backend(CPU, decode=True)
