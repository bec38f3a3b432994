"""One registry for every sequence mixer, however it was registered.

Three doors lead in and they all end here, so the harness has exactly one place to ask:

* the ``@register_mixer("name")`` decorator (the built-ins in this package);
* the ``mixbench.mixers`` entry-point group (a third-party package declares
  ``[project.entry-points."mixbench.mixers"] my_mixer = "my_pkg.mod:MyMixer"``);
* a dotted path ``my_pkg.mod:MyMixer`` written straight into a suite file.

A mixer whose optional dependency is missing (or whose entry point fails to import) still
lists, marked unavailable with the reason, so ``mixbench mixers`` explains instead of hiding.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn

from models.errors import MixbenchError
from models.mixer import Backend, backends_of

ENTRY_POINT_GROUP = "mixbench.mixers"

# Keyword arguments the model builder supplies from the size preset and backbone; they are
# not per-mixer settings, so they are never part of a mixer's defaults or overrides.
MODEL_LEVEL_KWARGS = ("d_model", "layer_idx", "n_heads", "n_kv_heads", "n_layers", "backbone")


class UnknownMixerError(MixbenchError, LookupError):
    """Raised for a name that no registration door knows; the message lists the known ones."""


@dataclass
class MixerEntry:
    """What the registry knows of one mixer: where it came from and whether it can run."""

    name: str
    origin: str  # "builtin", "entry-point <value>", or "path"
    cls: type[nn.Module] | None = None
    import_error: str | None = None
    backends: tuple[Backend, ...] = field(default_factory=tuple)

    @property
    def available(self) -> bool:
        return self.cls is not None and any(b.unavailable_reason(None) is None for b in self.backends)

    def unavailable_reason(self) -> str | None:
        if self.import_error is not None:
            return self.import_error
        reasons = [f"{b.name}: {b.unavailable_reason(None)}" for b in self.backends]
        return None if self.available else "; ".join(reasons)


_REGISTRY: dict[str, MixerEntry] = {}
_entry_points_loaded = False


def register_mixer(name: str, origin: str = "builtin"):
    """Class decorator: make ``cls`` buildable as ``name`` (e.g. ``attention@transformer``)."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not None and existing.cls is not cls:
            raise ValueError(f"mixer name {name!r} is already registered by {existing.cls.__module__}")
        _REGISTRY[name] = MixerEntry(name=name, origin=origin, cls=cls, backends=backends_of(cls))
        return cls

    return decorate


def _load_entry_points() -> None:
    """Import third-party mixers once; a broken plugin is listed, never fatal to the others."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        origin = f"entry-point {ep.value}"
        try:
            cls = ep.load()
        except Exception as exc:
            _REGISTRY[ep.name] = MixerEntry(ep.name, origin, import_error=f"import failed: {exc}")
            continue
        register_mixer(ep.name, origin=origin)(cls)


def _import_dotted(path: str) -> type[nn.Module]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownMixerError(f"mixer {path!r}: cannot import module {module_name!r} ({exc})") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError as exc:
        raise UnknownMixerError(f"mixer {path!r}: module {module_name!r} has no attribute {attr!r}") from exc
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise UnknownMixerError(f"mixer {path!r} is not an nn.Module subclass")
    return obj


def get_entry(name: str) -> MixerEntry:
    """Resolve a short name, an entry-point name, or a ``module:Class`` dotted path."""
    import models  # noqa: F401 - importing the package registers the built-ins

    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        register_mixer(name, origin="path")(_import_dotted(name))
        return _REGISTRY[name]
    _load_entry_points()
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = ", ".join(sorted(_REGISTRY)) or "none"
    raise UnknownMixerError(
        f"unknown mixer {name!r}; known mixers: {known} (or give a dotted path 'package.module:Class')"
    )


def get_mixer(name: str) -> type[nn.Module]:
    """The mixer class for ``name``; raises with the reason if it cannot run on this machine."""
    entry = get_entry(name)
    if entry.cls is None:
        raise UnknownMixerError(f"mixer {name!r} is unavailable: {entry.import_error}")
    return entry.cls


def list_mixers() -> list[MixerEntry]:
    """Every registered mixer, built-ins and entry points, sorted by name."""
    import models  # noqa: F401

    _load_entry_points()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def mixer_defaults(cls: type[nn.Module]) -> dict[str, Any]:
    """The per-mixer settings a suite may override: keyword parameters with defaults.

    They live in the mixer's own ``__init__`` signature ("defaults beside the mixer"), so the
    canonical config of a run can be filled in without instantiating anything.
    """
    defaults: dict[str, Any] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in MODEL_LEVEL_KWARGS or p.name == "self":
            continue
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is not p.empty:
            defaults[p.name] = p.default
    return defaults


def build_mixer(name: str, model_kwargs: dict[str, Any], overrides: dict[str, Any]) -> nn.Module:
    """Instantiate a mixer: model-level kwargs it accepts, plus validated overrides."""
    cls = get_mixer(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = set(overrides) - set(mixer_defaults(cls))
    if unknown and not takes_any:
        raise TypeError(
            f"mixer {name!r} has no setting(s) {sorted(unknown)}; its settings are {sorted(mixer_defaults(cls))}"
        )
    kwargs = {k: v for k, v in model_kwargs.items() if takes_any or k in params}
    return cls(**kwargs, **overrides)


def active_backend(
    mixer: nn.Module, device: torch.device, dtype: torch.dtype | None = None, decode: bool = False
) -> str:
    """The backend ``mixer`` runs on ``device`` with ``dtype`` inputs (its ``step`` if ``decode``).

    Mixers without declared backends are plain torch.
    """
    select = getattr(mixer, "select_backend", None)
    return select(device, dtype, decode) if select is not None else "torch"
