"""``mixbench import`` and ``mixbench export``: published checkpoints in, our runs out, in the Hugging Face format.

Import reads a folder in the Hugging Face format (``config.json``, safetensors, tokenizer
files), or a Hub id resolved to such a folder by ``huggingface_hub`` (a revision pins it), maps
the weights onto our own blocks (``models.hf_format``) and stores the model as a run with
status ``imported``: its checkpoint folder holds our weights, the spec that rebuilds them and
the checkpoint's own tokenizer, so evaluation, ``lm-eval`` and the dashboards take it as they
take a trained run. Its source, revision and tokenizer are in the run's config and environment.

Export writes a run's checkpoint as a Hugging Face folder: for Llama, Mamba and Mamba-2 with
``transformers``' own config and tensor names (``AutoModelForCausalLM`` loads it without custom
code); for every other architecture our weights beside a ``modeling_mixbench.py`` that
``trust_remote_code`` runs, which builds the model with mixbench itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import models
from harness.common.names import FINISHED, RunStatus
from harness.data import DataError, load_tokenizer
from harness.data.common import cause, looks_like_hub_id
from harness.engine.parallel import backend_label
from harness.measure.environment import environment
from harness.store.checkpoints import load_checkpoint, save_checkpoint
from harness.store.database import RunRecord, Store
from models import build
from models.errors import MixbenchError
from models.hf_format import (
    FormatError,
    hf_config,
    hf_tensors,
    load_into,
    spec_from_config,
)

IMPORTED_SUITE = "imported"  # the suite column of an imported run (its evaluations go to their suites)
DEFAULT_CONTEXT = 2048  # the context recorded for a model whose config has no max_position_embeddings
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", *TOKENIZER_FILES]
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
REMOTE_CODE = Path(models.__file__).resolve().parent / "hf_remote_code.py"


class HFError(MixbenchError):
    """A source or a run that cannot be imported or exported; one line saying what and where."""


def resolve_source(source: str, revision: str | None = None) -> tuple[Path, str]:
    """A local folder (revision: the sha256 of its config and weights) or a Hub id, downloaded.

    The Hub path is ``huggingface_hub.snapshot_download`` (honouring ``HF_HUB_OFFLINE`` and the
    cache): the revision recorded is the commit it resolved to.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise HFError(f"--revision applies to a Hub id; {source} is a local folder")
        return path.resolve(), "sha256:" + folder_digest(path)
    if path.exists() or not looks_like_hub_id(source, (".json", ".safetensors")):
        raise HFError(
            f"{source}: not a folder in the Hugging Face format, nor a Hub id like 'state-spaces/mamba-130m-hf'"
        )
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(source, revision=revision, allow_patterns=HUB_FILES))
    except Exception as exc:
        raise HFError(f"cannot fetch {source!r} from the Hugging Face Hub: {cause(exc)}") from None
    return folder, folder.name  # snapshots/<commit>


def folder_digest(folder: Path) -> str:
    """sha256 over config.json and the safetensors files, in name order (what makes the numbers)."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        if f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``config.json`` and every tensor of the folder's safetensors (sharded or not)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HFError(f"{folder}: no config.json (a Hugging Face model folder has one)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise HFError(f"{config_path}: not valid JSON ({exc})") from None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise HFError(
            f"{folder}: no *.safetensors weights (a pytorch_model.bin is not read: it would run pickled code)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError) as exc:
            raise HFError(f"{f}: cannot read ({cause(exc)})") from None
    return config, tensors


def import_checkpoint(
    source: str, name: str, store: Store, checkpoint_dir: Path, revision: str | None = None
) -> RunRecord:
    """Map ``source`` onto our blocks and store it as an ``imported`` run; returns its record."""
    if not NAME.match(name):
        raise HFError(f"--as {name!r}: use 1 to 32 letters, digits, '.', '_' or '-'")
    folder, resolved = resolve_source(source, revision)
    if not (folder / "tokenizer.json").is_file():
        raise HFError(f"{folder}: no tokenizer.json; an imported model is evaluated with its own tokenizer")
    config, tensors = read_folder(folder)
    try:
        spec = spec_from_config(config, name)
        model = build(spec)
        load_into(model, tensors)
    except FormatError as exc:
        raise HFError(f"{source}: {exc}") from None
    context = int(config.get("max_position_embeddings") or DEFAULT_CONTEXT)
    origin = {"source": source, "revision": resolved, "model_type": config["model_type"]}
    key = hashlib.sha256(json.dumps({**origin, "name": name}, sort_keys=True).encode()).hexdigest()[:16]
    target = checkpoint_dir / key
    tokenizer_dir = target / "tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        if (folder / f).is_file():
            shutil.copyfile(folder / f, tokenizer_dir / f)
    try:
        tokenizer = load_tokenizer(str(tokenizer_dir))
    except DataError as exc:
        raise HFError(f"{source}: its tokenizer cannot be used: {exc}") from None
    run_config = {
        "imported": {**origin, "hf_config": config},
        "model": {"arch": spec.arch, "size": name, "mixer_settings": spec.mixer_overrides},
        "data": {"seq_len": context, "tokenizer": str(tokenizer_dir)},  # the context lm-eval uses by default
    }
    save_checkpoint(model, target, str(tokenizer_dir), run_config)
    record = RunRecord(
        run_key=key,
        suite=IMPORTED_SUITE,
        mixer=spec.mixer,
        backbone=spec.backbone,
        size=name,
        seq_len=context,
        dataset=source,
        config=run_config,
    )
    device = torch.device("cpu")
    store.put_finished(
        record,
        RunStatus.IMPORTED,
        n_params=model.num_params(),
        n_params_non_embedding=model.num_params(non_embedding=True),
        backend=backend_label(model, device),
        checkpoint_path=str(target.resolve()),
        environment=environment(device) | {"imported": origin, "tokenizer": tokenizer.name},
    )
    return record


def export_run(store: Store, run_key: str, out: Path) -> str:
    """Write a finished run as a Hugging Face folder; returns how it loads (the class or 'trust_remote_code')."""
    run = store.run(run_key)
    if run.status not in FINISHED or not run.checkpoint_path:
        raise HFError(f"run {run_key} has no final checkpoint (status {run.status})")
    model, meta = load_checkpoint(Path(run.checkpoint_path))
    if out.exists() and any(out.iterdir()):
        raise HFError(f"{out}: exists and is not empty; export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        arch, config = hf_config(model, run.seq_len)
        tensors, how = hf_tensors(model), arch.hf_class
    except FormatError:  # no transformers class: our own weights and modeling file
        config = {
            "architectures": ["MixbenchForCausalLM"],
            "model_type": "mixbench",
            "auto_map": {
                "AutoConfig": "modeling_mixbench.MixbenchConfig",
                "AutoModelForCausalLM": "modeling_mixbench.MixbenchForCausalLM",
            },
            "mixbench_spec": asdict(model.spec),
            "vocab_size": model.spec.vocab_size,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
        }
        tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        shutil.copyfile(REMOTE_CODE, out / "modeling_mixbench.py")
        how = "trust_remote_code"
    config["mixbench"] = {"run_key": run_key, "arch": model.spec.arch, "size": model.spec.size}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    write_tokenizer(meta["tokenizer"], out)
    return how


def write_tokenizer(name: str, out: Path) -> None:
    """The run's tokenizer as ``tokenizer.json`` and a config ``AutoTokenizer`` reads (none for raw bytes)."""
    tokenizer = load_tokenizer(name)
    backend = getattr(tokenizer, "_tok", None)
    backend = getattr(backend, "backend_tokenizer", backend)  # a transformers tokenizer's fast core
    if backend is None or not hasattr(backend, "to_str"):
        return
    (out / "tokenizer.json").write_text(backend.to_str())
    eos = tokenizer.decode([tokenizer.eos_id])
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos}, indent=2)
    )
