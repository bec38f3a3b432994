"""The Hugging Face checkpoint format of Llama, Mamba and Mamba-2, mapped onto our own blocks.

A published checkpoint is a ``config.json`` and safetensors whose tensor names follow
``transformers``' classes. Three of them are our architectures with other names:

==========================  ======================  =========================================
``config.json`` model_type  ``transformers`` class  ours
==========================  ======================  =========================================
``llama``                   ``LlamaForCausalLM``    ``attention@transformer`` (GQA, RoPE base)
``mamba``                   ``MambaForCausalLM``    ``mamba@mamba_native``
``mamba2``                  ``Mamba2ForCausalLM``   ``mamba2@mamba_native``
==========================  ======================  =========================================

Each architecture is a ``HFArchitecture``: how a ``config.json`` becomes a ``ModelSpec`` (and
back), and one table of tensor names, ours against theirs. The table serves both directions;
an entry with several names on their side is one of our tensors cut in rows (our fused QKV
projection is Llama's q, k and v stacked). Anything a checkpoint asks that our blocks do not
compute (biases, other activations, RoPE scaling) is refused with one line, never ignored.

This module reads and writes plain dicts and tensors; it needs neither ``transformers`` nor
the harness. ``import_transformers`` is for the processes that do use ``transformers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from models.backbones import Size
from models.errors import MixbenchError
from models.lm import CausalLM, ModelSpec


class FormatError(MixbenchError, ValueError):
    """A checkpoint or a model this mapping cannot carry over; the message says what and where."""


# config.json fields as transformers' config classes default them: ``save_pretrained`` leaves out
# a field equal to its default, so a missing field means this value (checked in the tests).
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "num_key_value_heads": None,
        "head_dim": None,
    },
    "mamba": {
        "tie_word_embeddings": True,
        "layer_norm_epsilon": 1e-5,
        "hidden_act": "silu",
        "use_bias": False,
        "use_conv_bias": True,
        "conv_kernel": 4,
        "state_size": 16,
        "expand": 2,
    },
    "mamba2": {
        "tie_word_embeddings": False,
        "layer_norm_epsilon": 1e-5,
        "hidden_act": "silu",
        "use_bias": False,
        "use_conv_bias": True,
        "conv_kernel": 4,
        "state_size": 128,
        "expand": 2,
        "n_groups": 8,
        "num_heads": 128,
        "head_dim": 64,
        "chunk_size": 256,
        "time_step_limit": [0.0, float("inf")],
    },
}
MAMBA2_NORM_EPS = 1e-5  # the gated norm inside our Mamba2 block (models/mamba2.py)


def config_field(config: dict[str, Any], name: str) -> Any:
    """A config.json field, or transformers' default for it; a required field that is absent is refused."""
    if name in config:
        return config[name]
    defaults = DEFAULTS[config["model_type"]]
    if name not in defaults:
        raise FormatError(f"config.json ({config['model_type']}) has no {name!r}")
    return defaults[name]


def as_float(value: Any) -> float:
    """A number of config.json; transformers 5 writes infinity as ``{"__float__": "Infinity"}``."""
    return float(value["__float__"] if isinstance(value, dict) else value)


def require(config: dict[str, Any], name: str, allowed: Any, why: str) -> None:
    """Refuse a setting our blocks do not compute (e.g. ``use_bias: true``)."""
    value = config_field(config, name)
    if value != allowed:
        raise FormatError(f"config.json {name}={value!r} is not supported ({why}; only {allowed!r})")


# ------------------------------------------------------------------------ tensor name tables
Names = list[tuple[str, tuple[str, ...]]]  # (our name, their names: several = our rows, stacked)


def _llama_names(spec: ModelSpec) -> Names:
    names: Names = [("embed.weight", ("model.embed_tokens.weight",)), ("norm.weight", ("model.norm.weight",))]
    for i in range(spec.n_blocks):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        attn = tuple(f"{theirs}self_attn.{p}_proj.weight" for p in "qkv")
        names += [
            (ours + "norms.0.weight", (theirs + "input_layernorm.weight",)),
            (ours + "subs.0.qkv.weight", attn),
            (ours + "subs.0.out.weight", (theirs + "self_attn.o_proj.weight",)),
            (ours + "norms.1.weight", (theirs + "post_attention_layernorm.weight",)),
            *((f"{ours}subs.1.{p}.weight", (f"{theirs}mlp.{p}_proj.weight",)) for p in ("gate", "up", "down")),
        ]
    return names


MAMBA_MIXER = {  # ours (under the block's mixer) -> theirs (under ``mixer.``)
    "mamba": {
        "in_proj.weight": "in_proj.weight",
        "conv.conv.weight": "conv1d.weight",
        "conv.conv.bias": "conv1d.bias",
        "x_proj.weight": "x_proj.weight",
        "dt_proj.weight": "dt_proj.weight",
        "dt_proj.bias": "dt_proj.bias",
        "A_log": "A_log",
        "D": "D",
        "out_proj.weight": "out_proj.weight",
    },
    "mamba2": {
        "in_proj.weight": "in_proj.weight",
        "conv.conv.weight": "conv1d.weight",
        "conv.conv.bias": "conv1d.bias",
        "dt_bias": "dt_bias",
        "A_log": "A_log",
        "D": "D",
        "norm_weight": "norm.weight",
        "out_proj.weight": "out_proj.weight",
    },
}


def _mamba_names(spec: ModelSpec) -> Names:
    names: Names = [("embed.weight", ("backbone.embeddings.weight",)), ("norm.weight", ("backbone.norm_f.weight",))]
    for i in range(spec.n_blocks):
        ours, theirs = f"blocks.{i}.", f"backbone.layers.{i}."
        names.append((ours + "norms.0.weight", (theirs + "norm.weight",)))
        names += [(f"{ours}subs.0.{a}", (f"{theirs}mixer.{b}",)) for a, b in MAMBA_MIXER[spec.mixer].items()]
    return names


def names(spec: ModelSpec) -> Names:
    """Every tensor of the model, ours against theirs; the LM head when it is not tied."""
    table = _llama_names(spec) if spec.mixer == "attention" else _mamba_names(spec)
    if not spec.tie_embeddings:
        table.append(("head.weight", ("lm_head.weight",)))
    return table


# ------------------------------------------------------------------------ config.json <-> spec
def _llama_spec(config: dict[str, Any], name: str) -> ModelSpec:
    get = partial(config_field, config)
    d, heads = config["hidden_size"], config["num_attention_heads"]
    kv = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or d // heads
    if head_dim * heads != d:
        raise FormatError(f"config.json head_dim={head_dim} x {heads} heads != hidden_size {d} (ours needs equality)")
    require(config, "hidden_act", "silu", "our MLP is SwiGLU")
    require(config, "attention_bias", False, "our attention projections have no bias")
    require(config, "mlp_bias", False, "our MLP has no bias")
    # transformers 5 writes rope_parameters; older checkpoints (Llama 3.1's) carry rope_scaling,
    # which transformers still applies: a scaling in either is refused, never silently dropped.
    ropes = [r for r in (config.get("rope_parameters"), config.get("rope_scaling")) if r]
    for r in ropes:
        kind = r.get("rope_type", r.get("type", "default"))
        if kind != "default":
            raise FormatError(f"config.json rope type {kind!r} is not supported (only plain RoPE with a base)")
    rope = ropes[0] if ropes else {}
    base = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    dims = Size(
        d_model=d,
        n_layers=config["num_hidden_layers"],
        n_heads=heads,
        mlp_hidden=config["intermediate_size"],
        n_kv_heads=None if kv == heads else kv,
    )
    return ModelSpec(
        "attention",
        "transformer",
        name,
        config["vocab_size"],
        {"rope_base": float(base)},
        bool(get("tie_word_embeddings")),
        dims,
        float(get("rms_norm_eps")),
    )


def _mamba_common(config: dict[str, Any]) -> tuple[int, int]:
    """Checks shared by Mamba and Mamba-2; returns (d_model, expand)."""
    get = partial(config_field, config)
    require(config, "hidden_act", "silu", "our Mamba blocks use SiLU")
    require(config, "use_bias", False, "our Mamba projections have no bias")
    require(config, "use_conv_bias", True, "our Mamba conv has a bias")
    d = config["hidden_size"]
    inner = config.get("intermediate_size", get("expand") * d)
    if inner % d:
        raise FormatError(f"config.json intermediate_size {inner} is not a multiple of hidden_size {d}")
    return d, inner // d


def _mamba_spec(config: dict[str, Any], name: str) -> ModelSpec:
    get = partial(config_field, config)
    d, expand = _mamba_common(config)
    settings = {
        "d_state": get("state_size"),
        "d_conv": get("conv_kernel"),
        "expand": expand,
        "dt_rank": config.get("time_step_rank", math.ceil(d / 16)),
    }
    if settings["dt_rank"] == "auto":
        settings["dt_rank"] = math.ceil(d / 16)
    dims = Size(d_model=d, n_layers=config["num_hidden_layers"], n_heads=1, mlp_hidden=0)
    return ModelSpec(
        "mamba",
        "mamba_native",
        name,
        config["vocab_size"],
        settings,
        bool(get("tie_word_embeddings")),
        dims,
        float(get("layer_norm_epsilon")),
    )


def _mamba2_spec(config: dict[str, Any], name: str) -> ModelSpec:
    get = partial(config_field, config)
    d, expand = _mamba_common(config)
    eps = float(get("layer_norm_epsilon"))
    if eps != MAMBA2_NORM_EPS:
        raise FormatError(
            f"config.json layer_norm_epsilon={eps} is not supported (our Mamba2 norm uses {MAMBA2_NORM_EPS})"
        )
    low, high = (as_float(v) for v in get("time_step_limit"))
    if low > 0 or high != float("inf"):
        raise FormatError(f"config.json time_step_limit={[low, high]} is not supported (our Mamba2 does not clamp dt)")
    heads, headdim = get("num_heads"), get("head_dim")
    if heads * headdim != expand * d:
        raise FormatError(f"config.json num_heads {heads} x head_dim {headdim} != expand x hidden_size = {expand * d}")
    settings = {
        "d_state": get("state_size"),
        "d_conv": get("conv_kernel"),
        "expand": expand,
        "headdim": headdim,
        "ngroups": get("n_groups"),
        "chunk_size": get("chunk_size"),
    }
    dims = Size(d_model=d, n_layers=config["num_hidden_layers"], n_heads=heads, mlp_hidden=0)
    return ModelSpec(
        "mamba2", "mamba_native", name, config["vocab_size"], settings, bool(get("tie_word_embeddings")), dims, eps
    )


def _llama_config(model: CausalLM) -> dict[str, Any]:
    spec, attn = model.spec, model.blocks[0].mixer
    return {
        "hidden_size": attn.d_model,
        "num_attention_heads": attn.n_heads,
        "num_key_value_heads": attn.n_kv_heads,
        "head_dim": attn.head_dim,
        "intermediate_size": model.blocks[0].subs[1].gate.out_features,
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": attn.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": attn.rope_base},
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }


def _mamba_config(model: CausalLM) -> dict[str, Any]:
    m = model.blocks[0].mixer
    return {
        "hidden_size": m.d_model,
        "intermediate_size": m.d_inner,
        "expand": m.d_inner // m.d_model,
        "state_size": m.d_state,
        "conv_kernel": m.d_conv,
        "time_step_rank": m.dt_rank,
        "layer_norm_epsilon": model.spec.norm_eps,
        "hidden_act": "silu",
        "use_bias": False,
        "use_conv_bias": True,
        "residual_in_fp32": True,
    }


def _mamba2_config(model: CausalLM) -> dict[str, Any]:
    m = model.blocks[0].mixer
    return {
        "hidden_size": m.d_model,
        "expand": m.d_inner // m.d_model,
        "num_heads": m.heads,
        "head_dim": m.headdim,
        "n_groups": m.ngroups,
        "state_size": m.d_state,
        "conv_kernel": m.d_conv,
        "chunk_size": m.chunk_size,
        "layer_norm_epsilon": MAMBA2_NORM_EPS,
        "hidden_act": "silu",
        "use_bias": False,
        "use_conv_bias": True,
        "residual_in_fp32": True,
        "time_step_limit": [0.0, float("inf")],
    }


@dataclass(frozen=True)
class HFArchitecture:
    model_type: str  # config.json's "model_type"
    hf_class: str  # transformers' class, config.json's "architectures"
    arch: str  # ours, mixer@backbone
    spec: Callable[[dict[str, Any], str], ModelSpec]  # config.json, a name -> our spec
    config: Callable[[CausalLM], dict[str, Any]]  # our model -> its config.json fields (beyond the common ones)


ARCHITECTURES = {
    a.model_type: a
    for a in (
        HFArchitecture("llama", "LlamaForCausalLM", "attention@transformer", _llama_spec, _llama_config),
        HFArchitecture("mamba", "MambaForCausalLM", "mamba@mamba_native", _mamba_spec, _mamba_config),
        HFArchitecture("mamba2", "Mamba2ForCausalLM", "mamba2@mamba_native", _mamba2_spec, _mamba2_config),
    )
}
BY_ARCH = {a.arch: a for a in ARCHITECTURES.values()}


def architecture(config: dict[str, Any]) -> HFArchitecture:
    """The mapping for a config.json; an architecture we do not map is refused with the ones we do."""
    kind = config.get("model_type")
    if kind not in ARCHITECTURES:
        known = ", ".join(f"{k} ({a.hf_class})" for k, a in ARCHITECTURES.items())
        raise FormatError(f"config.json model_type {kind!r} cannot be imported; known: {known}")
    return ARCHITECTURES[kind]


def spec_from_config(config: dict[str, Any], name: str) -> ModelSpec:
    """Our ``ModelSpec`` for a Hugging Face config.json (a missing field is refused, naming it)."""
    arch = architecture(config)
    try:
        return arch.spec(config, name)
    except KeyError as exc:
        raise FormatError(f"config.json ({arch.model_type}) has no {exc.args[0]!r}") from None


# ------------------------------------------------------------------------ weights
def load_into(model: CausalLM, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's tensors (their names) into ``model``; every tensor must fit and be used.

    A tensor whose shape differs from what the config implies is named; so is a missing one and
    a left-over one (a checkpoint that holds more than its config says is not silently cut).
    """
    ours = model.state_dict()
    used: set[str] = set()
    with torch.no_grad():
        for name, theirs in names(model.spec):
            missing = [t for t in theirs if t not in tensors]
            if missing:
                raise FormatError(f"the checkpoint has no tensor {missing[0]!r}")
            parts = [tensors[t] for t in theirs]
            value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            if value.shape != ours[name].shape:
                got = " + ".join(f"{t} {tuple(p.shape)}" for t, p in zip(theirs, parts))
                raise FormatError(f"tensor {got} does not fit: the config implies {tuple(ours[name].shape)}")
            ours[name].copy_(value)
            used.update(theirs)
    left = sorted(set(tensors) - used - ({"lm_head.weight"} if model.spec.tie_embeddings else set()))
    if left:
        raise FormatError(f"the checkpoint holds tensor {left[0]!r}, which its config does not account for")


def hf_config(model: CausalLM, max_positions: int) -> tuple[HFArchitecture, dict[str, Any]]:
    """The config.json that makes ``transformers`` build the same model; refused for other architectures."""
    arch = BY_ARCH.get(model.spec.arch)
    if arch is None:
        raise FormatError(f"{model.spec.arch} has no transformers class (exported with trust_remote_code instead)")
    config = {
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "vocab_size": model.spec.vocab_size,
        "num_hidden_layers": len(model.blocks),
        "tie_word_embeddings": model.spec.tie_embeddings,
        "max_position_embeddings": max_positions,
        "torch_dtype": "float32",
        **arch.config(model),
    }
    if arch.model_type == "mamba2" and model.spec.norm_eps != MAMBA2_NORM_EPS:
        config["tie_word_embeddings"] = False  # see hf_tensors: the residual stream is rescaled
    return arch, config


def hf_tensors(model: CausalLM) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names (fused rows cut apart), contiguous copies.

    Mamba-2 in ``transformers`` has one epsilon for the block norms and the gated norm inside
    the mixer; ours has 1e-6 and 1e-5. An RMSNorm with epsilon ``e`` of ``x`` equals one with
    ``c^2 e`` of ``c x``, so the residual stream is scaled by ``c = sqrt(1e-5 / norm_eps)``
    (embeddings and every ``out_proj``), which makes every block norm and the final norm see
    epsilon 1e-5 while computing exactly what ours does; the head keeps the unscaled
    embeddings, so such an export is untied.
    """
    state = model.state_dict()
    scale = 1.0
    if model.spec.mixer == "mamba2" and model.spec.norm_eps != MAMBA2_NORM_EPS:
        scale = math.sqrt(MAMBA2_NORM_EPS / model.spec.norm_eps)
    out: dict[str, torch.Tensor] = {}
    for name, theirs in names(model.spec):
        value = state[name].detach()
        if scale != 1.0 and (name == "embed.weight" or name.endswith("out_proj.weight")):
            value = value * scale
        if len(theirs) == 1:
            out[theirs[0]] = value.contiguous().clone()
            continue
        attn = model.blocks[0].mixer  # a fused projection: Llama's q, k and v rows
        rows = [attn.d_model, attn.kv_dim, attn.kv_dim]
        out.update((t, p.contiguous().clone()) for t, p in zip(theirs, value.split(rows, dim=0)))
    if scale != 1.0 and model.spec.tie_embeddings:
        out["lm_head.weight"] = state["head.weight"].detach().contiguous().clone()
    return out


def import_transformers():
    """``transformers`` on its own PyTorch paths, never Hugging Face's hub kernels.

    A comparison with our blocks wants ``transformers``' reference code, and hub kernels would
    be downloaded at first use (``from_pretrained`` asks for them unless ``USE_HUB_KERNELS=0``).
    Their package, ``kernels``, no longer shares its name with ours (``mixbench_kernels``,
    ``kernels/README.md``). Call this before the first ``transformers`` model import.
    """
    import os

    os.environ["USE_HUB_KERNELS"] = "0"
    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    def unavailable(*args: Any, **kwargs: Any) -> bool:
        return False

    import_utils.is_kernels_available = unavailable
    utils.is_kernels_available = unavailable
    import transformers

    return transformers
