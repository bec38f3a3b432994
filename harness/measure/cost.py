"""What a suite costs before launching it: GPU-hours per cell from measured speeds, else assumed MFU.

Time per cell differs by architecture far more than FLOPs say (at 125m, T=2048 on an H200,
attention trains at 21% MFU and TTT-Linear at 8%), so an estimate uses, in this order:

1. tokens/s measured for the same (mixer, backbone, size, context) on the same GPU kind: the
   ``throughput`` table (``benchmarks/train_loop.py --store``) and finished GPU runs
   (``train/tokens_per_s`` over ``train/world_size``), the newest first. The rate is per GPU and
   scales linearly with ``--gpus`` (an assumption: it ignores communication).
2. otherwise the analytic training FLOPs at :data:`ASSUMED_MFU` of the kind's dense bf16 peak
   (``harness.measure.mfu``), labelled *assumed* wherever it is printed.

GPU-hours = tokens / (tokens/s per GPU) / 3600 whatever the GPU count; the wall time divides by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from harness.common.names import MetricName, RunStatus
from harness.measure.mfu import PEAK_BF16_TFLOPS
from harness.store.database import Run, Store
from models.errors import MixbenchError

ASSUMED_MFU = 0.20  # between the measured attention (21%) and TTT-Linear (8%) at 125m on an H200


def duration(seconds: float) -> str:
    """``2d 03:04``, ``03:04:05``: how long a run still needs, to the minute past a day."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours:02d}:{minutes:02d}" if days else f"{hours:02d}:{minutes:02d}:{secs:02d}"


class CostError(MixbenchError, ValueError):
    """A GPU kind or count the estimate cannot use, said in one line."""


def gpu_kind(name: str) -> str:
    """The table's spelling of a GPU kind given on the command line (case and spaces aside)."""
    wanted = name.replace(" ", "").lower()
    for kind in PEAK_BF16_TFLOPS:
        if kind.replace(" ", "").lower() == wanted:
            return kind
    raise CostError(f"--gpu {name}: unknown GPU kind; known kinds: {', '.join(PEAK_BF16_TFLOPS)}")


def kind_of_device(device_name: str) -> str | None:
    """The kind a device name (``torch.cuda.get_device_name``) is, as ``harness.measure.mfu.peak_tflops`` matches it."""
    return next((kind for kind in PEAK_BF16_TFLOPS if kind in device_name), None)


@dataclass(frozen=True)
class Measurement:
    mixer: str
    backbone: str
    size: str
    seq_len: int
    backend: str
    gpu: str
    tokens_per_s_per_gpu: float
    source: str
    when: datetime


def _utc(when: datetime | None) -> datetime:
    if when is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def measurements(store: Store) -> list[Measurement]:
    """Every stored training speed on a known GPU kind: benchmark rows and finished runs."""
    found = [
        Measurement(
            t.mixer,
            t.backbone,
            t.size,
            t.seq_len,
            t.backend,
            t.gpu,
            t.tokens_per_s / t.gpus,
            t.source,
            _utc(t.created_at),
        )
        for t in store.throughputs()
        if t.gpu in PEAK_BF16_TFLOPS and t.gpus > 0 and t.tokens_per_s > 0
    ]
    wanted = (MetricName.TOKENS_PER_S, "train/world_size")
    values = {(key, name): v for key, _s, name, v in store.metric_values() if name in wanted}
    for run in store.runs():
        kind = kind_of_device(str((run.environment or {}).get("device", "")))
        rate = values.get((run.run_key, MetricName.TOKENS_PER_S))
        if run.status == RunStatus.DONE and kind is not None and rate:
            per_gpu = rate / values.get((run.run_key, "train/world_size"), 1.0)
            found.append(
                Measurement(
                    run.mixer,
                    run.backbone,
                    run.size,
                    run.seq_len,
                    run.backend or "-",
                    kind,
                    per_gpu,
                    f"run {run.run_key}",
                    _utc(run.finished_at),
                )
            )
    return found


@dataclass(frozen=True)
class Estimate:
    gpu_hours: float
    wall_hours: float
    basis: str  # "measured ..." or "assumed MFU 20%"
    measured: bool


def estimate(
    mixer: str,
    backbone: str,
    size: str,
    seq_len: int,
    tokens: int,
    train_flops: float,
    gpu: str,
    gpus: int,
    known: list[Measurement],
) -> Estimate:
    """GPU-hours of one cell that trains ``tokens`` tokens (``train_flops`` FLOPs) on ``gpus`` GPUs of kind ``gpu``."""
    if gpus < 1:
        raise CostError(f"--gpus {gpus}: give at least one GPU")
    same = [
        m for m in known if (m.mixer, m.backbone, m.size, m.seq_len, m.gpu) == (mixer, backbone, size, seq_len, gpu)
    ]
    if same:
        m = max(same, key=lambda m: m.when)
        seconds_on_one = tokens / m.tokens_per_s_per_gpu
        basis = f"measured {m.tokens_per_s_per_gpu:,.0f} tokens/s/GPU ({m.backend}; {m.source})"
    else:
        seconds_on_one = train_flops / (PEAK_BF16_TFLOPS[gpu] * 1e12 * ASSUMED_MFU)
        basis = f"assumed MFU {ASSUMED_MFU:.0%}"
    gpu_hours = seconds_on_one / 3600
    return Estimate(gpu_hours, gpu_hours / gpus, basis, bool(same))


def actual_gpu_hours(values: dict[str, float]) -> float | None:
    """A finished run's GPU-hours from its stored ``train/seconds`` and ``train/world_size``."""
    seconds = values.get("train/seconds")
    return None if seconds is None else seconds * values.get("train/world_size", 1.0) / 3600


def predicted_gpu_hours(run: Run, values: dict[str, float], known: list[Measurement]) -> Estimate | None:
    """What a dry run before this GPU run started would have said: measurements made before it, not its own."""
    kind = kind_of_device(str((run.environment or {}).get("device", "")))
    tokens, flops = values.get("train/tokens"), values.get(MetricName.TRAIN_FLOPS)
    if kind is None or tokens is None or flops is None:
        return None
    started = _utc(run.started_at)
    earlier = [m for m in known if m.when < started and m.source != f"run {run.run_key}"]
    return estimate(
        run.mixer,
        run.backbone,
        run.size,
        run.seq_len,
        int(tokens),
        flops,
        kind,
        int(values.get("train/world_size", 1.0)),
        earlier,
    )
