"""Suite files: validate a YAML suite and expand its grid into cells with stable run keys.

A suite is one small validated config (pydantic, unknown fields refused). Its grid
(models × sizes × sequence lengths) expands into cells; each cell's canonical config, with
every default filled in (the mixer's own defaults included), hashes to its ``run_key``, so
changing anything that could change a number makes a new run, and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.backbones import BACKBONES, SIZES
from models.registry import UnknownMixerError, get_mixer, mixer_defaults

# Bumped whenever the training or evaluation protocol changes what a cell would measure.
PROTOCOL_VERSION = 1


class SuiteError(Exception):
    """A suite that cannot run; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    source: str = "builtin:kjv"
    tokenizer: str = "builtin:kjv"
    seq_len: int = Field(256, gt=1)
    text_field: str = "text"
    split: str = "train"
    val_fraction: float = Field(0.05, gt=0, lt=1)
    max_tokens: int | None = Field(None, gt=0)


class TrainSection(_Section):
    tokens: int | Literal["chinchilla"] = "chinchilla"
    tokens_per_param: float = Field(20.0, gt=0)  # the Chinchilla recipe
    batch_tokens: int = Field(524288, gt=0)
    micro_batch_size: int | None = Field(None, gt=0)  # sequences per forward pass (accumulation)
    lr: float | dict[str, float] = 3e-3  # one value, or one per size
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(10, gt=0)
    device: str = "auto"

    @field_validator("tokens")
    @classmethod
    def _positive_tokens(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v <= 0:
            raise ValueError("must be a positive token count or 'chinchilla'")
        return v


class EvalSection(_Section):
    position_buckets: int = Field(16, gt=0)
    max_val_sequences: int = Field(256, gt=0)
    batch_size: int = Field(8, gt=0)


def _check_arch(arch: str) -> str:
    """``mixer@backbone`` with a known backbone and a mixer the registry can build."""
    mixer, sep, backbone = arch.rpartition("@")
    if not sep or not mixer:
        raise ValueError(f"{arch!r} must be written 'mixer@backbone', e.g. 'attention@transformer'")
    if backbone not in BACKBONES:
        raise ValueError(f"{arch!r}: unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    try:
        get_mixer(mixer)
    except UnknownMixerError as exc:
        raise ValueError(str(exc)) from None
    return arch


class SuiteSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataSection = DataSection()
    models: list[Annotated[str, AfterValidator(_check_arch)]] = Field(min_length=1)
    sizes: list[str] = Field(min_length=1)
    seq_lens: list[int] | None = None  # grid axis; default: data.seq_len
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    overrides: dict[str, dict[str, Any]] = {}

    @field_validator("sizes")
    @classmethod
    def _sizes_exist(cls, sizes: list[str]) -> list[str]:
        unknown = [s for s in sizes if s not in SIZES]
        if unknown:
            raise ValueError(f"unknown size(s) {unknown}; known: {', '.join(SIZES)}")
        return sizes

    @model_validator(mode="after")
    def _cross_checks(self) -> "SuiteSpec":
        if isinstance(self.train.lr, dict):
            missing = [s for s in self.sizes if s not in self.train.lr]
            if missing:
                raise ValueError(f"train.lr has no learning rate for size(s) {missing}")
        mixers = {arch.rpartition("@")[0] for arch in self.models}
        for mixer, settings in self.overrides.items():
            if mixer not in mixers:
                raise ValueError(f"overrides.{mixer}: no model in this suite uses mixer {mixer!r}")
            known = mixer_defaults(get_mixer(mixer))
            unknown = sorted(set(settings) - set(known))
            if unknown:
                raise ValueError(f"overrides.{mixer}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return self


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a model spec at a size and sequence length, fully specified."""

    suite: str
    arch: str
    size: str
    seq_len: int
    data: DataSection
    train: TrainSection  # lr resolved to this cell's size
    eval: EvalSection
    mixer_settings: dict[str, Any]
    base_dir: Path  # where relative data paths in the suite file are resolved

    @property
    def mixer(self) -> str:
        return self.arch.rpartition("@")[0]

    @property
    def backbone(self) -> str:
        return self.arch.rpartition("@")[2]

    @property
    def config(self) -> dict[str, Any]:
        """The canonical config: everything that determines this cell's numbers."""
        return {
            "protocol": PROTOCOL_VERSION,
            "suite": self.suite,
            "model": {"arch": self.arch, "size": self.size, "mixer_settings": self.mixer_settings},
            "data": self.data.model_dump(),
            "train": self.train.model_dump(),
            "eval": self.eval.model_dump(),
        }

    @property
    def run_key(self) -> str:
        canonical = json.dumps(self.config, sort_keys=True, separators=(",", ":"), default=str)
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
        s = self.spec
        out: list[Cell] = []
        for arch in s.models:
            mixer = arch.rpartition("@")[0]
            settings = {**mixer_defaults(get_mixer(mixer)), **s.overrides.get(mixer, {})}
            for size in s.sizes:
                lr = s.train.lr[size] if isinstance(s.train.lr, dict) else s.train.lr
                for seq_len in s.seq_lens or [s.data.seq_len]:
                    out.append(
                        Cell(
                            suite=s.name,
                            arch=arch,
                            size=size,
                            seq_len=seq_len,
                            data=s.data.model_copy(update={"seq_len": seq_len}),
                            train=s.train.model_copy(update={"lr": lr}),
                            eval=s.eval,
                            mixer_settings=settings,
                            base_dir=self.path.parent,
                        )
                    )
        return out


def _format_validation(path: Path, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        problems.append(f"{where}: {msg}")
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
    return Suite(spec=spec, path=path.resolve())
