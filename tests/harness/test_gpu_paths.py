"""The paths a GPU takes through the harness: checked on CPU with fakes, and for real with ``-m gpu``.

CPU: the checkpoint is written before evaluation, the recorded backend names training and
evaluation apart, memory is given back after a failed cell, the peak-memory counter is reset
after the warm-up, and a failed CUDA-graph capture restores the stream and reports its first
error. GPU (``gpu`` marker): a suite cell and the latency protocol on CUDA, float32 and bf16,
with and without CUDA graphs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import yaml

from harness import runner as runner_module
from harness.cli import main
from harness.measure import latency as latency_module
from harness.store.database import Store
from models import ModelSpec, build

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_checkpoint_is_saved_before_evaluation_so_an_eval_error_keeps_the_model(
    write_suite, tmp_path, monkeypatch, capsys
):
    def broken_evaluate(*args, **kwargs):
        raise RuntimeError("FlashAttention only supports fp16 and bf16 data type")

    monkeypatch.setattr(runner_module, "evaluate", broken_evaluate)
    assert main(["run", str(write_suite())]) == 1
    [run] = Store().runs()
    assert run.status == "failed" and "fp16 and bf16" in run.error
    assert (tmp_path / "results" / "checkpoints" / run.run_key / "model.safetensors").is_file()


class FakeModel:
    """``backends(device, dtype)`` as a model with flash-attn answers it on CUDA."""

    def backends(self, device, dtype=None, decode=False):
        half = dtype in (torch.float16, torch.bfloat16)
        return ["flash-attn" if device.type == "cuda" and half else "sdpa"]


def test_recorded_backend_is_the_one_of_the_dtype_training_and_evaluation_compute_in():
    assert runner_module.backend_label(FakeModel(), CPU) == "sdpa"
    # evaluation runs under the same bf16 autocast as training on CUDA, so flash-attn ran in both
    assert runner_module.backend_label(FakeModel(), torch.device("cuda")) == "flash-attn"


def test_memory_is_given_back_after_a_failed_cell_only(write_suite, monkeypatch, capsys):
    real_train, freed, calls = runner_module.train, [], []

    def oom_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runner_module, "train", oom_first)
    monkeypatch.setattr(runner_module, "free_memory", lambda **kw: freed.append(kw))
    assert main(["run", str(write_suite(sizes=["micro", "tiny"]))]) == 1
    first, second = Store().runs()
    assert first.status == "failed" and first.error.startswith("out of memory: OutOfMemoryError")
    assert second.status == "done" and freed == [{"collect": True}]


def test_peak_memory_is_reset_after_the_warm_up(monkeypatch):
    events = []
    monkeypatch.setattr(latency_module, "_reset_peak", lambda device: events.append("reset"))
    samples = latency_module.repeat_ms(lambda: events.append("call"), CPU, warmup=2, repeats=3)
    assert events == ["call", "call", "reset", "call", "call", "call"] and len(samples) == 3


class FakeCuda:
    """Just enough of ``torch.cuda`` to follow ``capture_graph``'s streams and capture on CPU."""

    def __init__(self, fail_capture_end: bool) -> None:
        self.current, self.log, self.fail_capture_end = "default", [], fail_capture_end
        cuda = self

        class Stream:
            def __init__(self, device=None):
                self.name = "side"

            def wait_stream(self, other):
                pass

        class CUDAGraph:
            def capture_begin(self):
                cuda.log.append(f"begin on {cuda.current}")

            def capture_end(self):
                cuda.log.append("end")
                if cuda.fail_capture_end:
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

            def replay(self):
                cuda.log.append("replay")

        self.Stream, self.CUDAGraph = Stream, CUDAGraph

    def current_stream(self, device=None):
        return self.Stream()

    @contextlib.contextmanager
    def stream(self, s):
        previous, self.current = self.current, s.name
        try:
            yield
        finally:
            self.current = previous

    def synchronize(self, device=None):
        pass


@pytest.mark.parametrize("fail_capture_end", [False, True])
def test_failed_graph_capture_restores_the_stream_and_reports_the_first_error(monkeypatch, fail_capture_end):
    fake = FakeCuda(fail_capture_end)
    for name in ("Stream", "CUDAGraph", "current_stream", "stream", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    calls = []

    def step():
        calls.append(fake.current)
        if len(calls) == 3:  # the warm-up runs twice, then the captured call fails
            raise RuntimeError("cannot capture: a host sync (.item()) in step")

    with pytest.raises(RuntimeError, match=r"^cannot capture: a host sync"):
        latency_module.capture_graph(step, torch.device("cuda"))
    assert calls == ["side", "side", "side"] and fake.log == ["begin on side", "end"]
    assert fake.current == "default"  # restored, whether or not ending the capture raised


def test_a_captured_graph_is_replayed_on_the_callers_stream(monkeypatch):
    fake = FakeCuda(fail_capture_end=False)
    for name in ("Stream", "CUDAGraph", "current_stream", "stream", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    replay = latency_module.capture_graph(lambda: None, torch.device("cuda"))
    replay()
    assert fake.log == ["begin on side", "end", "replay"] and fake.current == "default"


def test_latency_rows_and_dashboard_carry_each_modes_backend(tmp_path, monkeypatch, capsys):
    """A fused decode (mamba-ssm's step on a GPU) is recorded on the decode rows, not the prefill ones."""
    from models.lm import CausalLM

    monkeypatch.setattr(
        CausalLM, "backends", lambda self, device, dtype=None, decode=False: ["fused-step" if decode else "scan"]
    )
    suite = {
        "name": "modes",
        "models": ["mamba@mamba_native"],
        "sizes": ["micro"],
        "latency": {"contexts": [8], "warmup": 0, "repeats": 1, "decode_tokens": 2, "vocab_size": 64, "device": "cpu"},
    }
    path = tmp_path / "modes.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["latency", str(path)]) == 0
    assert {(r.mode, r.backend) for r in Store().latency_rows("modes")} == {
        ("prefill", "scan"),
        ("decode", "fused-step"),
    }
    assert main(["report", "-o", str(tmp_path / "dash")]) == 0
    page = (tmp_path / "dash" / "modes.html").read_text()
    assert "<td>decode</td>" in page and "<td>fused-step</td>" in page and "<td>scan</td>" in page


# --- the same paths on a GPU ----------------------------------------------------------------


@pytest.mark.gpu
def test_a_cell_trains_and_evaluates_on_cuda(write_suite, tmp_path, capsys):
    suite = write_suite(train={"tokens": 2048, "batch_tokens": 256, "lr": 3e-3, "device": "cuda"})
    assert main(["run", str(suite)]) == 0, capsys.readouterr().out
    [run] = Store().runs()
    assert run.status == "done" and not run.environment["device"].startswith("cpu")
    model = build(ModelSpec.parse("attention@transformer", "micro", 256))
    assert run.backend == runner_module.backend_label(model, torch.device("cuda"))
    assert (tmp_path / "results" / "checkpoints" / run.run_key / "model.safetensors").is_file()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_latency_on_cuda_records_events_peak_memory_and_the_backend_of_each_mode(tmp_path, capsys, dtype, cuda_graphs):
    suite = {
        "name": "gpu",
        "models": ["attention@transformer", "mamba@mamba_native"],
        "sizes": ["micro"],
        "latency": {
            "contexts": [64],
            "warmup": 1,
            "repeats": 2,
            "decode_tokens": 4,
            "vocab_size": 256,
            "device": "cuda",
            "dtype": dtype,
            "cuda_graphs": cuda_graphs,
        },
    }
    path = Path(tmp_path) / "gpu.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["latency", str(path)]) == 0, capsys.readouterr().out
    rows = Store().latency_rows("gpu")
    assert len(rows) == 4 and all(r.status == "ok" for r in rows)
    for r in rows:
        details = r.environment["latency"]
        assert details["timer"] == "cuda-events" and r.peak_memory_bytes > 0 and not r.device.startswith("cpu")
        model = build(ModelSpec.parse(f"{r.mixer}@{r.backbone}", "micro", 256))
        ran = model.backends(torch.device("cuda"), latency_module.DTYPES[dtype], decode=r.mode == "decode")
        assert r.backend.removesuffix("+cuda-graph") == ",".join(ran)  # the backend of the row's mode
        if r.mixer == "attention" and dtype == "float32":
            assert r.backend.startswith("sdpa")  # flash-attn takes no float32
        if cuda_graphs and r.mode == "decode":
            assert details["cuda_graph"] == "used" and r.backend.endswith("+cuda-graph"), details["cuda_graph"]
