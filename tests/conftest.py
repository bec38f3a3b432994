"""Shared fixtures: FLOP counting, a small real-text corpus and suite, mamba-ssm references.

On CPU, ``scaled_dot_product_attention`` dispatches to a fused kernel that
torch.utils.flop_counter has no formula for, so FLOP-counting tests swap in the same
computation written with matmuls.

GPU-only tests carry the ``gpu`` marker (or, the older spelling, a ``skipif`` whose reason
names CUDA or a GPU, which is read as the marker): ``pytest -m gpu`` runs them all
(``scripts/gpu_check.py`` does), and without CUDA they skip with a reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
import sys
import types
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

# Triton's tl.dot rounds float32 inputs to TF32 (10-bit mantissa) by default; the tests compare
# Triton kernels (mamba-ssm's SSD) with float32 references at float32 tolerances, so every
# kernel this test process compiles uses IEEE float32. Set before any kernel is compiled.
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

_NAMES_A_GPU = re.compile(r"\b(CUDA|GPU)\b")

# What the dev extra installs for tests that skip without it. Where it is missing the tests skip
# with the reason, unless ``MIXBENCH_REQUIRE_DEV=1`` (CI): then the session stops before any test,
# naming what is missing, so a dependency dropped from the install can never pass as skips.
DEV_MODULES = {"transformers": "transformers", "lm_eval": "lm-eval", "submitit": "submitit", "kaleido": "kaleido"}


def missing_dev_modules() -> list[str]:
    return [dist for module, dist in DEV_MODULES.items() if importlib.util.find_spec(module) is None]


def pytest_configure(config):
    if os.environ.get("MIXBENCH_REQUIRE_DEV") and (missing := missing_dev_modules()):
        raise pytest.UsageError(f"MIXBENCH_REQUIRE_DEV is set but {', '.join(missing)} not installed ([dev] extra)")


def pytest_collection_modifyitems(config, items):
    """Mark GPU-only tests ``gpu``; without CUDA, skip them with the reason."""
    cuda = torch.cuda.is_available()
    for item in items:
        reasons = (str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))
        if item.get_closest_marker("gpu") is None and any(_NAMES_A_GPU.search(r) for r in reasons):
            item.add_marker(pytest.mark.gpu)
        if not cuda and item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (a gpu test: scripts/gpu_check.py runs it)"))


def matmul_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    scores = q @ k.transpose(-1, -2) * (scale or 1 / math.sqrt(q.shape[-1]))
    if is_causal:
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(s - t + 1), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.fixture
def count_flops(monkeypatch):
    """``with count_flops() as counter:`` counts FLOPs, attention included, under no_grad."""
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", matmul_sdpa)

    @contextmanager
    def counting():
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            yield counter

    return counting


KJV = Path(__file__).resolve().parent.parent / "harness" / "corpus" / "kjv.txt"


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """A real-text corpus small enough to pack in milliseconds: the first chapters of the KJV."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(KJV.read_text().splitlines()[:40]) + "\n")
    return path


@pytest.fixture
def write_suite(tmp_path, small_corpus):
    """``write_suite(**fields)`` writes a tiny runnable suite YAML and returns its path."""

    def write(name: str = "unit", **fields) -> Path:
        suite = {
            "name": name,
            "data": {"source": str(small_corpus), "tokenizer": "bytes", "seq_len": 32},
            "models": ["attention@transformer"],
            "sizes": ["micro"],
            # pinned: the tests assert CPU facts (sdpa, perf_counter); GPU variants set cuda themselves
            "train": {"tokens": 2048, "batch_tokens": 256, "lr": 3e-3, "log_every": 2, "device": "cpu"},
            "eval": {"position_buckets": 4, "max_val_sequences": 8},
        }
        suite.update(fields)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        return path

    return write


@pytest.fixture
def mamba_ssm_module():
    """``mamba_ssm_module("mamba_ssm.x.y")`` imports a mamba-ssm module, or skips with the reason.

    mamba-ssm is a GPU extra; its pure-PyTorch references run on CPU if the compiled scan
    module it imports eagerly is stubbed for the duration of the import. These are the only
    outside references for the Mamba blocks, so CI installs mamba-ssm and sets
    ``MIXBENCH_REQUIRE_MAMBA_SSM=1``, which turns every skip here into a failure.
    """

    def skip(reason: str):
        if os.environ.get("MIXBENCH_REQUIRE_MAMBA_SSM"):
            pytest.fail(f"MIXBENCH_REQUIRE_MAMBA_SSM is set but {reason}")
        pytest.skip(reason)

    def load(name: str):
        if importlib.util.find_spec("mamba_ssm") is None:
            skip("mamba-ssm is not installed (GPU extra: pip install -e .[gpu])")
        stubbed = not torch.cuda.is_available() and "selective_scan_cuda" not in sys.modules
        if stubbed:
            sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return importlib.import_module(name)
        except ImportError as exc:
            skip(f"mamba-ssm does not import here: {exc}")
        finally:
            if stubbed:
                del sys.modules["selective_scan_cuda"]

    return load


@pytest.fixture
def causal_conv1d_interface():
    """causal-conv1d's ``causal_conv1d_interface`` module (its pure-PyTorch ``causal_conv1d_ref`` and
    ``causal_conv1d_update_ref``), loaded without its compiled extension, or a skip with the reason.

    ``import causal_conv1d`` loads ``causal_conv1d_cuda`` (absent on CPU), so the interface file
    is executed with its compiled-function module stubbed, and every stub is removed again.
    """
    spec = importlib.util.find_spec("causal_conv1d")
    if spec is None or spec.origin is None:
        reason = "causal-conv1d is not installed (GPU extra: pip install -e .[gpu])"
        if os.environ.get("MIXBENCH_REQUIRE_MAMBA_SSM"):  # CI installs it beside mamba-ssm
            pytest.fail(f"MIXBENCH_REQUIRE_MAMBA_SSM is set but {reason}")
        pytest.skip(reason)
    stub = types.ModuleType("causal_conv1d.cpp_functions")
    for name in ("causal_conv1d_fwd_function", "causal_conv1d_bwd_function", "causal_conv1d_update_function"):
        setattr(stub, name, None)
    package = types.ModuleType("causal_conv1d")
    package.__path__ = []
    names = ("causal_conv1d", "causal_conv1d.cpp_functions")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update({"causal_conv1d": package, "causal_conv1d.cpp_functions": stub})
    try:
        path = Path(spec.origin).parent / "causal_conv1d_interface.py"
        module_spec = importlib.util.spec_from_file_location("mixbench_test_causal_conv1d_interface", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module
