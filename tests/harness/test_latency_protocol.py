"""The latency protocol proven with a fake clock: what is timed, how many calls, how it is divided.

A real micro model is measured through ``mixbench latency`` at batch 2 with the CPU clock
replaced by a fake one that only moves when the model works: each ``prefill`` and ``step``
call and each row the LM head scores advance it by a known cost, and every call that must not
be timed (warm-up, the prefill before decoding) costs ``UNTIMED_MS`` more. So any untimed
call inside a sample, a missing division, a head left out or a missing batch factor changes
the stored numbers, which are compared with values worked out by hand.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from harness.cli import main
from harness.measure import latency as latency_module
from harness.store.database import Store

WARMUP, REPEATS, DECODE_TOKENS, BATCH, CONTEXTS = 2, 3, 5, 2, (8, 16)
PREFILL_MS, STEP_MS, HEAD_MS_PER_ROW = 2.0, 3.0, 0.5  # the costs of a timed call
UNTIMED_MS = 1000.0  # added to every call that must not be timed


class FakeClock:
    """Seconds, like ``time.perf_counter``; moves only when ``advance`` is called."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1e3


class Calls:
    """Counts the model's calls; decides from each call's ordinal whether it is a timed one."""

    def __init__(self) -> None:
        self.prefill_shapes: list[tuple[int, ...]] = []
        self.step_shapes: list[tuple[int, ...]] = []
        self.head_rows: list[int] = []
        self.prefill_states: list[object] = []  # the state each decode measurement starts from
        self.first_step_states: list[object] = []  # the state each decode sample starts from


def instrument(model: torch.nn.Module, clock: FakeClock, calls: Calls) -> None:
    """Per context the protocol makes W+R prefill calls (W warm-up), then one untimed prefill
    and (W+R) runs of DECODE_TOKENS steps (the first W runs warm-up)."""
    real_prefill, real_step = model.prefill, model.step
    per_context_prefills, per_context_steps = WARMUP + REPEATS + 1, (WARMUP + REPEATS) * DECODE_TOKENS

    def head_hook(_module, inputs, _output):
        rows = inputs[0].shape[:-1].numel()
        calls.head_rows.append(rows)
        clock.advance(HEAD_MS_PER_ROW * rows)

    def prefill(ids):
        i = len(calls.prefill_shapes) % per_context_prefills
        calls.prefill_shapes.append(tuple(ids.shape))
        clock.advance(PREFILL_MS + (UNTIMED_MS if i < WARMUP or i == WARMUP + REPEATS else 0.0))
        logits, state = real_prefill(ids)
        if i == WARMUP + REPEATS:
            calls.prefill_states.append(state)
        return logits, state

    def step(tokens, state):
        j = len(calls.step_shapes) % per_context_steps
        calls.step_shapes.append(tuple(tokens.shape))
        if j % DECODE_TOKENS == 0:
            calls.first_step_states.append(state)
        clock.advance(STEP_MS + (UNTIMED_MS if j < WARMUP * DECODE_TOKENS else 0.0))
        return real_step(tokens, state)

    model.head.register_forward_hook(head_hook)
    model.prefill, model.step = prefill, step


def test_latency_protocol_times_exactly_the_promised_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    clock, calls, real_build = FakeClock(), Calls(), latency_module.build

    def build(spec):
        model = real_build(spec)
        instrument(model, clock, calls)
        return model

    monkeypatch.setattr(latency_module, "clock", clock)
    monkeypatch.setattr(latency_module, "build", build)
    section = {
        "contexts": list(CONTEXTS),
        "warmup": WARMUP,
        "repeats": REPEATS,
        "decode_tokens": DECODE_TOKENS,
        "batch": BATCH,
        "vocab_size": 64,
        "device": "cpu",
    }
    suite = {"name": "lat", "models": ["attention@transformer"], "sizes": ["micro"], "latency": section}
    (tmp_path / "lat.yaml").write_text(yaml.safe_dump(suite))
    assert main(["latency", str(tmp_path / "lat.yaml")]) == 0, capsys.readouterr().out

    # The calls: batch 2 everywhere; per context W+R timed-or-warm-up prefills, one before decoding,
    # and (W+R) x DECODE_TOKENS steps.
    n = WARMUP + REPEATS
    assert calls.prefill_shapes == [(BATCH, t) for t in CONTEXTS for _ in range(n + 1)]
    assert calls.step_shapes == [(BATCH,)] * (len(CONTEXTS) * n * DECODE_TOKENS)
    prefill_head_rows = [BATCH * t for t in CONTEXTS for _ in range(n + 1)]
    assert sorted(calls.head_rows) == sorted(prefill_head_rows + [BATCH] * len(calls.step_shapes))
    # Every decode sample (warm-up included) starts from the state the untimed prefill left.
    assert len(calls.first_step_states) == len(CONTEXTS) * n
    for c, state in enumerate(calls.prefill_states):
        assert all(s is state for s in calls.first_step_states[c * n : (c + 1) * n])

    rows = {(r.mode, r.context): r for r in Store().latency_rows("lat")}
    assert sorted(rows) == sorted((mode, t) for mode in ("prefill", "decode") for t in CONTEXTS)
    for t in CONTEXTS:
        # prefill: the call and the LM head over batch x T rows; no warm-up in any sample
        prefill_ms = PREFILL_MS + HEAD_MS_PER_ROW * BATCH * t  # 10 ms at T=8, 18 ms at T=16
        # decode: DECODE_TOKENS steps, each a step and the head over BATCH rows, divided by DECODE_TOKENS
        decode_ms = STEP_MS + HEAD_MS_PER_ROW * BATCH  # 4 ms per token
        for mode, ms, tokens in (("prefill", prefill_ms, BATCH * t), ("decode", decode_ms, BATCH)):
            r = rows[(mode, t)]
            assert r.environment["latency"]["samples_ms"] == pytest.approx([ms] * REPEATS, rel=1e-9), (mode, t)
            assert (r.p20_ms, r.median_ms, r.p80_ms) == pytest.approx((ms, ms, ms), rel=1e-9)
            assert r.tokens_per_s == pytest.approx(tokens / (ms / 1e3), rel=1e-9), (mode, t)
            assert r.batch == BATCH and r.status == "ok"
    assert rows[("prefill", 8)].tokens_per_s == pytest.approx(1600.0)  # 2 x 8 tokens in 10 ms
    assert rows[("decode", 8)].tokens_per_s == pytest.approx(500.0)  # 2 tokens every 4 ms
