"""The latency protocol: prefill time and per-token decode time vs context length, per mixer.

Every model of a suite (``mixer@backbone``) is built at each size of the suite's ``latency``
section (the same size preset for every mixer: equal model size), its weights cast to the
section's ``dtype`` (as for serving; no autocast), put in eval mode, and measured under
``torch.no_grad`` at each context length ``T`` of the sweep:

* **prefill**: ``model.prefill(ids)`` on random token ids ``(batch, T)``, end to end:
  embeddings, every block (building the decode state) and the LM head over all ``T``
  positions. One sample is one call; tokens/s is ``batch * T / time``.
* **decode**: after one (untimed) prefill of length ``T``, ``decode_tokens`` successive
  ``model.step`` calls on random token ids ``(batch,)``. One sample is that whole run divided
  by ``decode_tokens``, so the figure is milliseconds per token at context ``T``; tokens/s is
  ``batch / time``. Every sample starts from the post-prefill state; a mixer that updates its
  state in place (the attention KV cache, mamba-ssm's fused step) does the same work per token
  from it. Sampling is not timed.

Each measurement runs ``warmup`` untimed repetitions, then ``repeats`` timed ones, and stores
their median and 20th/80th percentiles. On CUDA the time is taken with CUDA events around the
work and a synchronisation after it, and the peak of ``torch.cuda.max_memory_allocated``
(reset after the warm-up, so it is the timed calls' peak; weights and decode state included)
is stored; on CPU the clock is ``time.perf_counter`` and peak memory is not measured
(``NULL``): a process-wide RSS figure would mostly show the allocator's history, not the
measurement. With ``cuda_graphs: true`` the ``decode_tokens`` steps are captured once as a
single CUDA graph and each sample is one replay (the backend column then ends in
``+cuda-graph``; a mixer whose step cannot be captured falls back to eager and says so, with
the first error of the capture). The backend column is the backend of the row's mode:
``model.backends(device, dtype)`` for prefill, ``decode=True`` for decode (they differ where a
mixer's step runs its own kernels).

An out-of-memory error at a context is stored as a row with status ``oom`` and the sweep goes
on with the next measurement; any other error is a ``failed`` row. The latency table has no
error or config column, so each row's ``environment`` JSON holds, besides the machine, a
``latency`` entry: the protocol settings (warmup, repeats, decode tokens, vocabulary, seed,
mixer settings), the parameter counts, the raw samples, the timer, and the error if any.

Reruns: ``mixbench latency`` always measures and *replaces* the rows with the same (suite,
model, size, mode, context, batch, dtype, device), one model at a time in one transaction, so
the table never holds duplicates and an interrupted sweep keeps every model it finished.
``mixbench run`` measures only the models that do not yet have a row for every point of the
sweep with the same protocol settings (the latency analogue of skipping done cells).
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from harness.common.errors import one_line
from harness.common.names import FINISHED, PointStatus
from harness.common.progress import progress_bar
from harness.config.cells import nothing_matches
from harness.config.suite import LatencySection, Suite, SuiteError
from harness.engine.device_memory import free_memory
from harness.engine.train import seed_everything
from harness.measure.environment import device_name, environment
from harness.store.checkpoints import load_meta
from harness.store.database import Latency, Store, StoreError
from models import ModelSpec, build, split_arch

MODES = ("prefill", "decode")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_OOM_MESSAGE = re.compile(r"out of memory|not enough memory|can't allocate memory", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """One model to measure: an architecture at a size, with its mixer settings filled in.

    ``spec`` is set for a stored run measured by ``mixbench latency SUITE --run RUN_KEY`` (an
    imported checkpoint has its own dimensions and vocabulary; ``size`` is then its name).
    """

    arch: str
    size: str
    mixer_settings: dict[str, Any]
    spec: ModelSpec | None = None
    run_key: str | None = None

    @property
    def mixer(self) -> str:
        return split_arch(self.arch)[0]

    @property
    def backbone(self) -> str:
        return split_arch(self.arch)[1]

    @property
    def label(self) -> str:
        return f"{self.arch}/{self.size}"


@dataclass
class Measurement:
    """One point of the sweep: its samples (ms) or why there are none."""

    mode: str
    context: int
    status: str  # ok | oom | failed
    samples_ms: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    error: str | None = None
    cuda_graph: str | None = None  # decode with cuda_graphs: "used" or why not


@dataclass
class LatencySummary:
    measured: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    oom: list[tuple[str, str, int]] = field(default_factory=list)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)


def latency_section(suite: Suite) -> LatencySection:
    if suite.spec.latency is None:
        raise SuiteError(f"{suite.path}: no latency section; add e.g. 'latency: {{contexts: [512, 1024, 2048]}}'")
    return suite.spec.latency


def targets(suite: Suite, only: str | None = None, *, must_match: bool = False) -> list[Target]:
    """Every model × latency size, filtered by the glob ``only`` over ``arch/size`` or ``arch``.

    ``must_match``: a glob that selects no model is an error naming the models there are (for
    ``mixbench latency``; ``run --only`` may pick training cells and no latency model).
    """
    spec, section = suite.spec, latency_section(suite)
    every = [
        Target(arch, size, spec.mixer_settings(split_arch(arch)[0]))
        for arch in spec.models
        for size in section.sizes or spec.sizes
    ]
    out = [t for t in every if only is None or fnmatch.fnmatch(t.label, only) or fnmatch.fnmatch(t.arch, only)]
    if must_match and only is not None and not out:
        raise nothing_matches(only, suite.name, "latency model", [t.label for t in every])
    return out


def stored_target(store: Store, run_key: str) -> Target:
    """A finished run's architecture (its own dimensions and vocabulary), named by its size label."""
    run = store.run(run_key)
    if run.status not in FINISHED or not run.checkpoint_path:
        raise StoreError(f"run {run_key} has no final checkpoint (status {run.status}) to take the architecture from")
    spec = ModelSpec(**load_meta(Path(run.checkpoint_path))["spec"])
    return Target(spec.arch, run.size, dict(spec.mixer_overrides), spec=spec, run_key=run_key)


def resolve_device(section: LatencySection, suite: Suite) -> torch.device:
    if section.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(section.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SuiteError(f"{suite.path}: latency.device is {section.device!r} but no CUDA GPU is available")
    return device


def protocol(section: LatencySection, target: Target) -> dict[str, Any]:
    """The settings that decide a measurement beyond its table key (stored, and compared on resume)."""
    settings = {
        "warmup": section.warmup,
        "repeats": section.repeats,
        "decode_tokens": section.decode_tokens,
        "vocab_size": section.vocab_size if target.spec is None else target.spec.vocab_size,
        "seed": section.seed,
        "cuda_graphs": section.cuda_graphs,
        "mixer_settings": target.mixer_settings,
    }
    if target.run_key is not None:  # a stored run's architecture: its dimensions decide the figures too
        settings["run_key"] = target.run_key
    return json.loads(json.dumps(settings, default=str))  # exactly what the JSON column returns


# --- timing -------------------------------------------------------------------------------

# The CPU clock, a module attribute so the protocol's tests can drive it (a fake clock proves
# what is timed and what is not, which a real clock cannot).
clock: Callable[[], float] = time.perf_counter


def time_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of ``fn()`` in ms: CUDA events and a synchronisation on GPU, perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    begin = clock()
    fn()
    return (clock() - begin) * 1e3


def repeat_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, per: int = 1) -> list[float]:
    """``warmup`` untimed calls, then ``repeats`` timed ones, each divided by ``per``.

    The peak-memory counter is reset after the warm-up, so the peak read after this is the
    timed calls' (what they hold and allocate), not the warm-up's (autotuning, first-call caches).
    """
    for _ in range(warmup):
        fn()
    _reset_peak(device)
    return [time_ms(fn, device) / per for _ in range(repeats)]


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and bool(_OOM_MESSAGE.search(str(exc)))


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def capture_graph(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` captured as one CUDA graph (after a side-stream warm-up, as PyTorch asks); returns its replay.

    If ``fn`` fails during capture, the capture is ended and the first error is raised (not
    the one ending a broken capture raises), and the current stream is restored whatever
    happens: ``torch.cuda.graph``'s exit leaves the capture stream current when ending fails.
    """
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # restores the previous stream on any exit
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        graph.capture_begin()
        try:
            fn()
        except BaseException:
            try:
                graph.capture_end()  # leave capture mode; a broken capture raises again here
            except Exception:
                pass
            raise
        graph.capture_end()
    torch.cuda.synchronize(device)
    return graph.replay


class Sweep:
    """Measures one built model at every context of a latency section."""

    def __init__(self, model: torch.nn.Module, section: LatencySection, device: torch.device) -> None:
        self.model, self.section, self.device = model, section, device
        self.generator = torch.Generator().manual_seed(section.seed)

    def _ids(self, *shape: int) -> torch.Tensor:
        vocab = self.model.spec.vocab_size  # the section's, or a stored run's own
        return torch.randint(0, vocab, shape, generator=self.generator).to(self.device)

    def prefill(self, context: int) -> Measurement:
        s = self.section
        ids = self._ids(s.batch, context)
        samples = repeat_ms(lambda: self.model.prefill(ids), self.device, s.warmup, s.repeats)
        return Measurement("prefill", context, PointStatus.OK, samples, _peak(self.device))

    def decode(self, context: int) -> Measurement:
        s, model = self.section, self.model
        ids, tokens = self._ids(s.batch, context), self._ids(s.decode_tokens, s.batch)
        logits, state = model.prefill(ids)
        del logits, ids

        def run() -> None:
            st = state
            for token in tokens:
                _, st = model.step(token, st)

        graph_note = None
        if s.cuda_graphs and self.device.type == "cuda":
            try:
                run = capture_graph(run, self.device)
                graph_note = "used"
            except Exception as exc:
                if is_oom(exc):
                    raise
                graph_note = f"unsupported, ran eagerly: {one_line(exc)}"
                torch.cuda.synchronize(self.device)
        samples = repeat_ms(run, self.device, s.warmup, s.repeats, per=s.decode_tokens)
        return Measurement("decode", context, PointStatus.OK, samples, _peak(self.device), cuda_graph=graph_note)


def sweep_points(section: LatencySection) -> Iterator[tuple[str, int]]:
    """The sweep's points in the order they are measured: per context, prefill then decode."""
    for context in section.contexts:
        for mode in MODES:
            yield mode, context


def guarded(measure: Callable[[int], Measurement], mode: str, context: int, device: torch.device) -> Measurement:
    """Run one measurement; an OOM or an error becomes a row instead of ending the sweep."""
    try:
        return measure(context)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        status = PointStatus.OOM if is_oom(exc) else PointStatus.FAILED
        result = Measurement(mode, context, status, error=one_line(exc))
    # The exception (and the tensors its traceback holds) is gone here, so memory can be returned.
    free_memory(device, collect=True)
    return result


def to_row(
    m: Measurement,
    *,
    suite: str,
    target: Target,
    section: LatencySection,
    device: torch.device,
    backend: str,
    env: dict[str, Any],
) -> dict[str, Any]:
    median = p20 = p80 = tokens_per_s = None
    if m.status == "ok":
        p20, median, p80 = (float(v) for v in np.percentile(m.samples_ms, [20, 50, 80]))
        tokens = section.batch * (m.context if m.mode == "prefill" else 1)
        tokens_per_s = tokens / (median / 1e3) if median > 0 else None
    if m.cuda_graph == "used":
        backend += "+cuda-graph"
    details = {**env["latency"], "samples_ms": m.samples_ms, "error": m.error, "cuda_graph": m.cuda_graph}
    return {
        "suite": suite,
        "mixer": target.mixer,
        "backbone": target.backbone,
        "size": target.size,
        "mode": m.mode,
        "context": m.context,
        "batch": section.batch,
        "dtype": section.dtype,
        "device": env["device"],
        "backend": backend,
        "status": m.status,
        "median_ms": median,
        "p20_ms": p20,
        "p80_ms": p80,
        "tokens_per_s": tokens_per_s,
        "peak_memory_bytes": m.peak_memory_bytes,
        "environment": {**env, "latency": details},
    }


class LatencyRunner:
    def __init__(self, suite: Suite, store: Store, console: Console | None = None) -> None:
        self.suite, self.store = suite, store
        self.section = latency_section(suite)
        self.console = console or Console()

    def is_measured(self, target: Target, device: torch.device) -> bool:
        """Whether the store has an ok/oom row for every point of the sweep, made with these settings."""
        want = protocol(self.section, target)
        s, name = self.section, device_name(device)
        have = {
            (r.mode, r.context)
            for r in self.store.latency_rows(self.suite.name)
            if (r.mixer, r.backbone, r.size, r.batch, r.dtype, r.device)
            == (target.mixer, target.backbone, target.size, s.batch, s.dtype, name)
            and r.status in (PointStatus.OK, PointStatus.OOM)
            and ((r.environment or {}).get("latency") or {}).get("protocol") == want
        }
        return all(point in have for point in sweep_points(s))

    def run(
        self, only: str | None = None, resume: bool = False, chosen: list[Target] | None = None, must_match: bool = True
    ) -> LatencySummary:
        """Measure every target (only the unmeasured ones if ``resume``); store each model's rows as it ends.

        ``chosen`` replaces the suite's models (a stored run's ``stored_target``). ``must_match``:
        ``only`` must select a model (``targets``).
        """
        s, summary = self.section, LatencySummary()
        device = resolve_device(s, self.suite)
        todo = []
        for target in targets(self.suite, only, must_match=must_match) if chosen is None else chosen:
            if resume and self.is_measured(target, device):
                summary.skipped.append(target.label)
            else:
                todo.append(target)
        if not todo:
            return summary
        self.console.print(
            f"latency: {len(todo)} model(s) × {len(s.contexts)} contexts × {{prefill, decode}} on "
            f"{device_name(device)}, batch {s.batch}, {s.dtype}"
        )
        notes = []
        with progress_bar("latency", total=len(todo) * len(s.contexts) * len(MODES), unit="points") as bar:
            for target in todo:
                rows = self.measure(target, device, bar)
                self.store.replace_latency(rows)
                summary.measured.append(target.label)
                for r in rows:
                    details = r["environment"]["latency"]
                    if r["status"] == "oom":
                        summary.oom.append((target.label, r["mode"], r["context"]))
                    elif r["status"] == "failed":
                        summary.failed.append((target.label, r["mode"], r["context"], details["error"]))
                    if details.get("cuda_graph") not in (None, "used"):
                        notes.append(f"{target.label} decode T{r['context']}: cuda graph {details['cuda_graph']}")
        for label, mode, context in summary.oom:
            self.console.print(f"[yellow]{label} {mode} T{context}: out of memory (recorded)[/]")
        for label, mode, context, error in summary.failed:
            self.console.print(f"[red]{label} {mode} T{context}: failed: {error}[/]")
        for note in notes:
            self.console.print(f"[yellow]{note}[/]")
        if s.cuda_graphs and device.type != "cuda":
            self.console.print("[yellow]latency.cuda_graphs is ignored on CPU[/]")
        return summary

    def measure(self, target: Target, device: torch.device, bar: Any) -> list[dict[str, Any]]:
        """Build ``target`` and run the sweep; every point yields one row, whatever happens."""
        s = self.section
        timer = "cuda-events" if device.type == "cuda" else "perf_counter"
        env = {**environment(device), "latency": {"protocol": protocol(s, target), "timer": timer}}
        model, backends, measurements, built = None, dict.fromkeys(MODES, "-"), [], True
        try:
            seed_everything(s.seed)
            spec = target.spec or ModelSpec.parse(
                target.arch, target.size, s.vocab_size, mixer_overrides=dict(target.mixer_settings)
            )
            with torch.device(device):
                model = build(spec)
            model = model.to(device=device, dtype=DTYPES[s.dtype]).eval()
            # the backend of each mode: decode may run other kernels than prefill (mamba-ssm's fused step)
            dtype = DTYPES[s.dtype]
            backends = {mode: ",".join(model.backends(device, dtype, decode=mode == "decode")) for mode in MODES}
            env["latency"]["n_params"] = model.num_params()
            env["latency"]["n_params_non_embedding"] = model.num_params(non_embedding=True)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            status, error = (PointStatus.OOM if is_oom(exc) else PointStatus.FAILED), one_line(exc)
            measurements = [Measurement(mode, c, status, error=error) for mode, c in sweep_points(s)]
            model, built = None, False
            bar.update(advance=len(measurements))
        if model is not None:
            sweep = Sweep(model, s, device)
            for mode, context in sweep_points(s):
                m = guarded(getattr(sweep, mode), mode, context, device)
                measurements.append(m)
                figures = {"ms": float(np.median(m.samples_ms))} if m.samples_ms else {}
                bar.update(**figures)
            del sweep
        del model
        free_memory(device, collect=not built)
        return [
            to_row(m, suite=self.suite.name, target=target, section=s, device=device, backend=backends[m.mode], env=env)
            for m in measurements
        ]


# --- presentation -------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def latency_table(rows: list[Latency], title: str) -> Table:
    """The stored measurements as a table a person can paste."""
    table = Table(title=title)
    for col in (
        "model",
        "size",
        "mode",
        "context",
        "batch",
        "dtype",
        "status",
        "median ms",
        "p20–p80 ms",
        "tokens/s",
        "peak MiB",
        "backend",
        "device",
    ):
        numeric = col in {"context", "batch", "median ms", "tokens/s", "peak MiB"}
        table.add_column(col, justify="right" if numeric else "left")
    order = lambda r: (r.mixer, r.backbone, r.size, r.device, r.dtype, r.batch, r.mode != "prefill", r.context)  # noqa: E731
    for r in sorted(rows, key=order):
        ok = r.status == PointStatus.OK
        table.add_row(
            f"{r.mixer}@{r.backbone}",
            r.size,
            r.mode,
            str(r.context),
            str(r.batch),
            r.dtype,
            r.status if ok else f"[red]{r.status}[/]",
            f"{r.median_ms:.3f}" if ok else "-",
            f"{r.p20_ms:.3f}–{r.p80_ms:.3f}" if ok else "-",
            f"{r.tokens_per_s:,.0f}" if ok and r.tokens_per_s else "-",
            _mib(r.peak_memory_bytes),
            r.backend,
            r.device,
        )
    return table


def plan_table(suite: Suite, only: str | None = None) -> Table:
    """A dry run of the latency section: the models, their sizes and parameter counts, the sweep."""
    s = latency_section(suite)
    table = Table(title=f"suite {suite.name}: latency plan (batch {s.batch}, {s.dtype}, device {s.device})")
    for col in ("model", "size", "params", "contexts", "measurements"):
        table.add_column(col, justify="right" if col in {"params", "measurements"} else "left")
    for t in targets(suite, only):
        spec = ModelSpec.parse(t.arch, t.size, s.vocab_size, mixer_overrides=dict(t.mixer_settings))
        with torch.device("meta"):  # no memory: counting a 1.3b model costs nothing
            n_params = build(spec).num_params()
        contexts = ", ".join(map(str, s.contexts))
        table.add_row(t.arch, t.size, f"{n_params:,}", contexts, str(len(s.contexts) * len(MODES)))
    return table
