"""Suite files: validate a YAML suite and expand its grid into cells with stable run keys.

A suite is one small validated config (pydantic, unknown fields refused). Its grid
(models × sizes × sequence lengths, × task parameters, learning rates and seeds where the
suite lists several) expands into cells; each cell's canonical config, with
every default filled in (the mixer's own defaults included), hashes to its ``run_key``, so
changing anything that could change a number makes a new run, and nothing else does.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.common.names import MetricName
from harness.config.launcher import LauncherSection
from harness.data import DataConfig, DataError
from harness.tasks import TaskError, TaskParamError, get_task
from models.backbones import BACKBONES, SIZES
from models.errors import MixbenchError
from models.lm import split_arch
from models.registry import UnknownMixerError, get_mixer, mixer_defaults

# Bumped whenever the training or evaluation protocol changes what a cell would measure.
PROTOCOL_VERSION = 2  # 2: the per-rank sampler's data order (harness/engine/sampler.py), bf16 evaluation on CUDA


class SuiteError(MixbenchError):
    """A suite that cannot run; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainSection(_Section):
    tokens: int | Literal["chinchilla"] = "chinchilla"
    tokens_per_param: float = Field(20.0, gt=0)  # the Chinchilla recipe
    batch_tokens: int = Field(524288, gt=0)
    micro_batch_size: int | None = Field(None, gt=0)  # sequences per forward pass (accumulation)
    # One value, or one per size; a list is a grid (one cell per learning rate, best kept at report time).
    lr: float | list[float] | dict[str, float | list[float]] = 3e-3
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, gt=0)
    # The model's initialisation and the data order; a suite's ``seeds`` list makes it a grid axis.
    seed: int = Field(0, ge=0)
    log_every: int = Field(10, gt=0)
    device: str = "auto"
    # How the cell runs, not what it computes (left out of the run key; harness/engine/parallel.py, resume.py):
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"  # under torchrun; auto: FSDP from 300M parameters
    checkpoint_every: int = Field(0, ge=0)  # steps between mid-cell checkpoints (0: only on SIGTERM/SIGUSR1)
    keep_checkpoints: int = Field(2, gt=0)
    compile: bool = False  # torch.compile per block
    activation_checkpointing: bool = False  # recompute each block in the backward pass
    peak_tflops: float | None = Field(None, gt=0)  # the device's peak for MFU (default: harness/measure/mfu.py table)
    # A guard, not a setting (also left out of the run key): the most passes over the training
    # split (a corpus's blocks, a task's n_train sequences) the budget may take. A small split
    # repeats epochs (harness/engine/sampler.py); every run records how many as `data/epochs`, and a
    # cell that would exceed this stops before training with one line. None: no limit.
    max_epochs: float | None = Field(None, gt=0)
    # Trackers that mirror the live curve (harness/monitor/loggers.py; the [trackers] extra); the store stays the truth.
    loggers: list[Literal["tensorboard", "wandb"]] = []

    ENGINE_FIELDS: ClassVar[tuple[str, ...]] = (
        "parallel",
        "checkpoint_every",
        "keep_checkpoints",
        "compile",
        "activation_checkpointing",
        "peak_tflops",
        "max_epochs",
        "loggers",
    )

    @field_validator("tokens")
    @classmethod
    def _positive_tokens(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v <= 0:
            raise ValueError("must be a positive token count or 'chinchilla'")
        return v

    @field_validator("lr")
    @classmethod
    def _lr_grids(cls, v: float | list[float] | dict[str, float | list[float]]) -> float | list[float] | dict:
        for grid in v.values() if isinstance(v, dict) else [v]:
            if isinstance(grid, list) and (not grid or len(set(grid)) != len(grid)):
                raise ValueError(f"a learning-rate grid must list distinct values, got {grid}")
        return v


class EvalSection(_Section):
    position_buckets: int = Field(16, gt=0)
    max_val_sequences: int = Field(256, gt=0)
    batch_size: int = Field(8, gt=0)
    # lm-eval tasks run on the final model (harness/evaluate/lm_eval_adapter.py; needs the [eval] extra)
    lm_eval: list[str] = []
    lm_eval_limit: int | None = Field(None, gt=0)  # documents per task (None: all)


class LatencySection(_Section):
    """The latency protocol (``harness/measure/latency.py``): every model of the suite at each size.

    No data is read: prompts are random token ids over ``vocab_size`` (default 32000, the
    Llama tokenizer the paper's models use). ``sizes`` defaults to the suite's ``sizes``.
    """

    contexts: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)  # prefill lengths
    sizes: list[str] | None = None
    batch: int = Field(1, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    warmup: int = Field(2, ge=0)
    repeats: int = Field(5, gt=0)
    decode_tokens: int = Field(16, gt=0)  # tokens timed per decode sample; reported per token
    device: str = "auto"
    cuda_graphs: bool = False  # decode replayed as one CUDA graph (ignored on CPU)
    vocab_size: int = Field(32000, gt=1)
    seed: int = 0

    @field_validator("contexts")
    @classmethod
    def _distinct_contexts(cls, contexts: list[int]) -> list[int]:
        if len(set(contexts)) != len(contexts):
            raise ValueError(f"contexts {contexts} repeat a length")
        return contexts

    @field_validator("sizes")
    @classmethod
    def _latency_sizes_exist(cls, sizes: list[str] | None) -> list[str] | None:
        unknown = [s for s in sizes or [] if s not in SIZES]
        if unknown:
            raise ValueError(f"unknown size(s) {unknown}; known: {', '.join(SIZES)}")
        return sizes

    @model_validator(mode="after")
    def _graphs_need_cuda(self) -> "LatencySection":
        if self.cuda_graphs and self.device.startswith("cpu"):
            raise ValueError("cuda_graphs needs a CUDA device (device is 'cpu')")
        return self


class TaskSection(_Section):
    """A synthetic task instead of text (``harness/tasks``): a task suite scores accuracy, not perplexity.

    ``params`` are the task's own parameters; a list is a grid axis (one cell per value), so
    ``num_kv_pairs: [4, 16, 64]`` makes three cells per model, size and sequence length. The
    suite's ``seq_lens`` give the sequence lengths and its ``data`` section is unused.
    """

    name: str
    params: dict[str, Any] = {}
    n_train: int = Field(10000, gt=0)  # training sequences (cycled in epochs)
    n_val: int = Field(1000, gt=0)  # held-out sequences the accuracy is measured on
    seed: int = 0  # the data's seed (the model's is train.seed)
    # Drop the grid points that cannot fit (e.g. 64 pairs in 64 tokens) instead of refusing the suite.
    skip_infeasible: bool = False

    @field_validator("name")
    @classmethod
    def _known_task(cls, name: str) -> str:
        try:
            get_task(name)
        except TaskError as exc:
            raise ValueError(str(exc)) from None
        return name

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the parameters' values, lists expanded, in file order."""
        axes = {k: v if isinstance(v, list) else [v] for k, v in self.params.items()}
        return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]

    def config(self, params: dict[str, Any], seq_len: int) -> dict[str, Any]:
        """The canonical task config of one cell: every parameter with its default filled in."""
        task = get_task(self.name)(**params)
        return {
            "name": self.name,
            "params": task.params(),
            "seq_len": seq_len,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "seed": self.seed,
        }

    def feasible(self, params: dict[str, Any], seq_len: int) -> bool:
        try:
            get_task(self.name)(**params).check(seq_len)
        except TaskParamError:
            return False
        return True

    def check_grid(self, seq_lens: list[int]) -> None:
        """Every grid point must be valid and, unless ``skip_infeasible``, fit every sequence length."""
        task_cls = get_task(self.name)
        grid = self.grid()
        if not grid:
            empty = [k for k, v in self.params.items() if v == []]
            raise ValueError(f"task.params.{empty[0]}: an empty list gives no cells")
        fits = 0
        for params in grid:
            try:
                task = task_cls(**params)
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    known = ", ".join(task_cls.model_fields)
                    raise ValueError(
                        f"task.params.{field}: unknown parameter of task {self.name!r}; known: {known}"
                    ) from None
                raise ValueError(f"task.params.{field}: {err['msg']} (got {err.get('input')!r})") from None
            for seq_len in seq_lens:
                try:
                    task.check(seq_len)
                    fits += 1
                except TaskParamError as exc:
                    if not self.skip_infeasible:
                        raise ValueError(
                            f"task.params.{exc.field}: {exc} (task {self.name}, {params}); shrink the grid or set "
                            "task.skip_infeasible: true to skip the points that do not fit"
                        ) from None
        if not fits:
            raise ValueError(f"task: no point of the grid fits any of the sequence lengths {seq_lens}")


def _check_arch(arch: str) -> str:
    """``mixer@backbone`` with a known backbone and a mixer the registry can build."""
    mixer, backbone = split_arch(arch)
    if backbone not in BACKBONES:
        raise ValueError(f"{arch!r}: unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    try:
        get_mixer(mixer)
    except UnknownMixerError as exc:
        raise ValueError(str(exc)) from None
    return arch


class SuiteSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataConfig = DataConfig()
    models: list[Annotated[str, AfterValidator(_check_arch)]] = Field(min_length=1)
    sizes: list[str] = Field(min_length=1)
    seq_lens: list[int] | None = None  # grid axis; default: data.seq_len
    # Grid axis: one cell per seed, each its own train.seed (the model's initialisation and the
    # data order; a task's sequences stay task.seed's). Default: train.seed alone. Reports show
    # the median and the range over seeds and pick the learning rate by the median.
    seeds: list[Annotated[int, Field(ge=0)]] | None = None
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    overrides: dict[str, dict[str, Any]] = {}
    latency: LatencySection | None = None
    task: TaskSection | None = None  # a synthetic-task suite (accuracy) instead of text (perplexity)
    launcher: LauncherSection = LauncherSection()  # what each cell's job asks of Slurm (--launcher slurm)

    def mixer_settings(self, mixer: str) -> dict[str, Any]:
        """The mixer's defaults with this suite's overrides on top: what a cell is built with."""
        return {**mixer_defaults(get_mixer(mixer)), **self.overrides.get(mixer, {})}

    @property
    def trains(self) -> bool:
        """False for a latency-only suite: one with a ``latency`` section and no ``train`` section.

        Such a suite's ``data``/``train``/``eval`` are unused and ``run`` trains nothing.
        """
        return self.latency is None or "train" in self.model_fields_set

    @field_validator("sizes")
    @classmethod
    def _sizes_exist(cls, sizes: list[str]) -> list[str]:
        unknown = [s for s in sizes if s not in SIZES]
        if unknown:
            raise ValueError(f"unknown size(s) {unknown}; known: {', '.join(SIZES)}")
        return sizes

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"must list distinct seeds, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _cross_checks(self) -> "SuiteSpec":
        if self.seeds is not None and "seed" in self.train.model_fields_set:
            raise ValueError("train.seed and seeds are both set: list every seed in `seeds` and drop train.seed")
        if self.task is not None and self.eval.lm_eval:
            raise ValueError("eval.lm_eval needs a text suite: a task suite has no tokenizer to score text with")
        if isinstance(self.train.lr, dict):
            missing = [s for s in self.sizes if s not in self.train.lr]
            if missing:
                raise ValueError(f"train.lr has no learning rate for size(s) {missing}")
        mixers = {split_arch(arch)[0] for arch in self.models}
        for mixer, settings in self.overrides.items():
            if mixer not in mixers:
                raise ValueError(f"overrides.{mixer}: no model in this suite uses mixer {mixer!r}")
            known = mixer_defaults(get_mixer(mixer))
            unknown = sorted(set(settings) - set(known))
            if unknown:
                raise ValueError(f"overrides.{mixer}: unknown setting(s) {unknown}; known: {sorted(known)}")
        if self.task is not None:
            self.task.check_grid(self.seq_lens or [self.data.seq_len])
        return self


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a model spec at a size and sequence length, fully specified."""

    suite: str
    arch: str
    size: str
    seq_len: int
    data: DataConfig
    train: TrainSection  # lr resolved to this cell's size
    eval: EvalSection
    mixer_settings: dict[str, Any]
    base_dir: Path  # where relative data paths in the suite file are resolved
    task: dict[str, Any] | None = None  # a task cell's canonical task config (``TaskSection.config``)
    lr_grid: tuple[float, ...] | None = None  # the learning rates this cell competes with, its own included
    seeds: tuple[int, ...] | None = None  # the seeds this cell is repeated over, its own (train.seed) included

    @property
    def mixer(self) -> str:
        return split_arch(self.arch)[0]

    @property
    def backbone(self) -> str:
        return split_arch(self.arch)[1]

    @property
    def config(self) -> dict[str, Any]:
        """The canonical config: everything that determines this cell's numbers.

        A task cell has ``task`` (name, every parameter, seq_len, sizes and seed of its data)
        in place of ``data``. A cell of a learning-rate grid or a seed list also has
        ``selection``: the grid, the seeds, and the rule that picks the winning learning rate
        (the best median over seeds). That says how the run is compared, not what it computes,
        so the run key leaves it out: widening the grid or adding seeds retrains nothing done.
        The seed itself is ``train.seed``, in the key like any other setting; a suite without
        ``seeds`` keeps seed 0, so its keys are those from before seeds were an axis.
        """
        config = {
            "protocol": PROTOCOL_VERSION,
            "suite": self.suite,
            "model": {"arch": self.arch, "size": self.size, "mixer_settings": self.mixer_settings},
            "data": self.data.model_dump(exclude={"workers"}),  # how fast, not what
            "train": self.train.model_dump(),
            "eval": self.eval.model_dump(),
        }
        if self.task is not None:
            del config["data"]
            config["task"] = self.task
        if self.lr_grid is not None or self.seeds is not None:
            metric, goal = (MetricName.TASK_ACCURACY, "max") if self.task is not None else (MetricName.VAL_LOSS, "min")
            config["selection"] = {
                "lr_grid": list(self.lr_grid or [self.train.lr]),
                "seeds": list(self.seeds or [self.train.seed]),
                "metric": metric,
                "goal": goal,
                "over_seeds": "median",  # the lr whose median over seeds is best (harness/report/seeds.py)
            }
        return config

    @property
    def run_key(self) -> str:
        hashed = {k: v for k, v in self.config.items() if k != "selection"}
        hashed["train"] = {k: v for k, v in hashed["train"].items() if k not in TrainSection.ENGINE_FIELDS}
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def resolve_path(self, value: str) -> str:
        """A path relative to the suite file if such a file exists, else the value as written."""
        candidate = self.base_dir / value
        return str(candidate.resolve()) if candidate.exists() else value


@dataclass(frozen=True)
class Suite:
    spec: SuiteSpec
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def cells(self) -> list[Cell]:
        """Every cell, seed by seed: a run stopped early has whole grids at its first seeds."""
        s = self.spec
        out: list[Cell] = []
        seeds = s.seeds or [s.train.seed]
        for seed, arch in itertools.product(seeds, s.models):
            settings = s.mixer_settings(split_arch(arch)[0])
            for size in s.sizes:
                lr = s.train.lr[size] if isinstance(s.train.lr, dict) else s.train.lr
                lrs, grid = (lr, tuple(lr)) if isinstance(lr, list) else ([lr], None)
                for seq_len in s.seq_lens or [s.data.seq_len]:
                    # A text suite has one "task point" (None); a task suite one per grid point that fits.
                    points = [None] if s.task is None else [p for p in s.task.grid() if s.task.feasible(p, seq_len)]
                    for point in points:
                        for one_lr in lrs:
                            out.append(
                                Cell(
                                    suite=s.name,
                                    arch=arch,
                                    size=size,
                                    seq_len=seq_len,
                                    data=s.data.model_copy(update={"seq_len": seq_len}),
                                    train=s.train.model_copy(update={"lr": one_lr, "seed": seed}),
                                    eval=s.eval,
                                    mixer_settings=settings,
                                    base_dir=self.path.parent,
                                    task=None if point is None else s.task.config(point, seq_len),
                                    lr_grid=grid,
                                    seeds=None if s.seeds is None else tuple(s.seeds),
                                )
                            )
        return out


def _format_validation(path: Path, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        problems.append(f"{where}: {msg}" if where else msg)  # a cross-check names its own fields
    return f"{path}: " + "; ".join(problems)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem is one ``SuiteError`` naming file and field."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: suite file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(f"{path}:{where}: malformed YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite must be a YAML mapping with at least 'name', 'models' and 'sizes'")
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(_format_validation(path, exc)) from None
    except DataError as exc:  # the data section checks itself (harness/data/source.py: DataConfig)
        raise SuiteError(f"{path}: {exc}") from None
    return Suite(spec=spec, path=path.resolve())
