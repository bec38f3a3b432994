"""lm-eval adapter: any mixbench model as an lm-evaluation-harness model named ``mixbench``.

``MixbenchLM`` implements lm-eval's three requests on top of ``CausalLM``:

- ``loglikelihood((context, continuation))`` -> ``(sum log p(continuation | context), is_greedy)``.
- ``loglikelihood_rolling((text,))`` -> the total log-likelihood of ``text``, conditioned on the
  end-of-text token, over rolling windows of ``max_length`` tokens.
- ``generate_until((context, gen_kwargs))`` -> greedy text from ``prefill`` + ``step``.

Conventions (the numbers depend on them, so they are fixed here and tested):

- **Tokenization.** The tokenizer is the run's own (``encode`` adds no special tokens).
  Whitespace at the end of a context moves to the front of its continuation. The pair is
  encoded whole and split after ``len(encode(context))`` tokens; if that split is not clean
  (the whole encoding does not start with the context's tokens, or leaves no continuation
  token) the continuation is encoded on its own instead. An empty context becomes the
  end-of-text token, which is also the documents' separator in training.
- **Truncation.** The model sees at most ``max_length`` tokens: a context is cut from the left
  so that context + continuation fit (a continuation longer than ``max_length`` is an error).
  ``max_length`` defaults to the run's training ``seq_len``: attention at positions it never
  trained on is out of distribution. Recurrent mixers (TTT, Mamba) have no such limit; pass
  a larger ``max_length`` to measure them on longer contexts.
- **Rolling windows.** lm-eval's ``get_rolling_token_windows`` with ``context_len=1`` and
  ``make_disjoint_window``: the first window predicts the first ``max_length`` tokens after
  end-of-text; each later window predicts the next ``max_length`` tokens, or what remains,
  with the full ``max_length`` tokens before its last target as input. Every token is
  predicted exactly once.
- **Generation.** One request at a time (no padding ever reaches a recurrent state): the
  prompt, cut from the left to ``max_length`` tokens, is prefilled, then ``step`` decodes the
  argmax token until end-of-text, ``max_gen_toks`` tokens (default 256), or the first ``until``
  string, which is cut off with everything after it. Generated tokens may run past
  ``max_length``. Sampling (``do_sample: true``) is refused rather than silently made greedy.
- **Batching.** Scoring requests are sorted by length and run ``batch_size`` at a time, padded
  on the right; a causal model's logits before the padding do not depend on it.

Entry points: the runner calls ``lm_eval_metrics`` when a suite lists ``eval.lm_eval`` tasks
(``check_tasks`` first, before training, so a typo fails fast); ``mixbench lm-eval RUN_KEY``
evaluates a stored run; ``python -m harness.evaluate.lm_eval_adapter ARGS`` is lm-eval's own command
line with ``mixbench`` registered and the shipped tasks (``harness/lm_eval_tasks/``) included.
lm-eval is optional (the ``[eval]`` extra): this module imports without it, and everything
that needs it raises ``LMEvalError`` with the install command.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import string
import sys
import tempfile
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

import harness
from harness.common.names import FINISHED
from harness.common.progress import progress_bar
from harness.data import TextTokenizer, load_tokenizer
from harness.engine.parallel import autocast
from harness.measure.environment import pick_device
from harness.store.checkpoints import load_checkpoint
from harness.store.database import Store, StoreError
from models.errors import MixbenchError

try:
    from lm_eval.api.model import LM as _LMBase
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    _MISSING: str | None = None
except ImportError as _exc:  # the [eval] extra is not installed
    _LMBase = object  # type: ignore[assignment,misc]
    _MISSING = str(_exc)

MODEL_NAME = "mixbench"
TASKS_DIR = Path(harness.__file__).resolve().parent / "lm_eval_tasks"
TEMPLATE_SUFFIX = ".yaml.template"
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256
BOOTSTRAP_ITERS = 1000  # stderr of bootstrapped metrics; means have a closed form


class LMEvalError(MixbenchError):
    """lm-eval cannot run as asked; one line saying what to change."""


def require_lm_eval() -> None:
    if _MISSING is not None:
        raise LMEvalError(
            f"lm-eval is not installed ({_MISSING}); install it: pip install 'lm-eval>=0.4.13,<0.5' "
            "(mixbench's eval extra)"
        )


def _register(cls: type) -> type:
    """``@register_model("mixbench")``, once: not for the copy of this module run as ``__main__``."""
    if _MISSING is None and __name__ != "__main__":
        register_model(MODEL_NAME)(cls)
    return cls


# --------------------------------------------------------------------------- the model


def checkpoint_of(run_key: str, db: str | None) -> Path:
    """The checkpoint folder of a done run, looked up in the store."""
    if db is not None and "://" not in str(db) and not Path(db).expanduser().is_file():
        raise LMEvalError(f"database not found: {Path(db).expanduser().resolve()}")
    try:
        run = Store(db).run(run_key)
    except StoreError as exc:
        raise LMEvalError(str(exc)) from None
    if run.status not in FINISHED or not run.checkpoint_path:
        raise LMEvalError(
            f"run {run_key} has no checkpoint (status {run.status}); only a finished run can be evaluated"
        )
    return Path(run.checkpoint_path)


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise LMEvalError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise LMEvalError(f"{name} must be a positive integer, got {value!r}")
    return number


@_register
class MixbenchLM(_LMBase):
    """A mixbench ``CausalLM`` behind lm-eval's ``LM`` interface.

    From a store (``run_key`` and ``db``, as ``--model_args run_key=...,db=...``), from a
    checkpoint folder (``checkpoint``), or from a model in memory (``MixbenchLM.from_model``).
    ``batch_size`` may be ``auto`` (taken as 8); ``max_batch_size`` is accepted and ignored.
    """

    def __init__(
        self,
        run_key: str | None = None,
        db: str | None = None,
        checkpoint: str | Path | None = None,
        device: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_length: int | str | None = None,
        max_batch_size: int | str | None = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: TextTokenizer | None = None,
    ) -> None:
        require_lm_eval()
        super().__init__()
        if sum(x is not None for x in (run_key, checkpoint, model)) != 1:
            raise LMEvalError("give exactly one of run_key (with db), checkpoint (a folder), or a model in memory")
        requested = str(device) if device else "auto"
        if requested.startswith("cuda") and not torch.cuda.is_available():  # lm-eval's CLI defaults to cuda:0
            warnings.warn(f"device {requested!r} asked for but CUDA is not available: using the CPU", stacklevel=2)
            requested = "cpu"
        self._device = pick_device(requested)
        if isinstance(run_key, (int, float)):  # lm-eval's --model_args turns "0123" into 123
            raise LMEvalError(
                f"run key {run_key!r} was read as a number; use `mixbench lm-eval RUN_KEY` or checkpoint=PATH"
            )
        if model is None:
            folder = Path(checkpoint) if checkpoint is not None else checkpoint_of(str(run_key), db)
            model, meta = load_checkpoint(folder, self._device)
            tokenizer = load_tokenizer(meta["tokenizer"])
            max_length = max_length or meta["config"]["data"]["seq_len"]
        elif tokenizer is None or max_length is None:
            raise LMEvalError("a model in memory needs its tokenizer and a max_length")
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.max_length = _positive_int("max_length", max_length)
        size = DEFAULT_BATCH_SIZE if batch_size in (None, "auto") or str(batch_size).startswith("auto") else batch_size
        self.batch_size = _positive_int("batch_size", size)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: TextTokenizer,
        max_length: int,
        device: str | torch.device | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> "MixbenchLM":
        """Wrap a model in memory (the runner's just-trained model, a test's model)."""
        if device is None:
            device = next(model.parameters()).device
        return cls(model=model, tokenizer=tokenizer, max_length=max_length, device=str(device), batch_size=batch_size)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name

    def get_model_info(self) -> dict[str, Any]:
        """Added to lm-eval's results ``config``."""
        spec = getattr(self.model, "spec", None)
        return {
            "mixbench_model": getattr(spec, "arch", type(self.model).__name__),
            "mixbench_size": getattr(spec, "size", None),
            "tokenizer": self.tokenizer.name,
            "max_length": self.max_length,
        }

    # --- tokenization ------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens, by the convention in the module docstring."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        if not context:
            return [self.eos_id], self.tokenizer.encode(continuation)
        ctx = self.tokenizer.encode(context)
        whole = self.tokenizer.encode(context + continuation)
        if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx) :]
        return ctx, self.tokenizer.encode(continuation)

    # --- scoring -----------------------------------------------------------------------
    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[list[int], list[int]]], label: str = "lm-eval") -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` per (context tokens, continuation tokens)."""
        inputs: list[list[int]] = []
        for ctx, cont in pairs:
            if len(cont) > self.max_length:
                raise LMEvalError(f"a continuation of {len(cont)} tokens does not fit max_length {self.max_length}")
            inputs.append((ctx + cont)[-(self.max_length + 1) : -1])
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        order = sorted((i for i, (_, cont) in enumerate(pairs) if cont), key=lambda i: -len(inputs[i]))
        batches = [order[lo : lo + self.batch_size] for lo in range(0, len(order), self.batch_size)]
        with progress_bar(label, total=len(order), unit="requests") as bar:
            for batch in batches:
                width = len(inputs[batch[0]])
                ids = torch.full((len(batch), width), self.eos_id, dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(inputs[i])] = torch.tensor(inputs[i])
                with autocast(self._device):  # bf16 on CUDA, as in training; log-probs in float32 below
                    logits = self.model(ids.to(self._device))
                for row, i in enumerate(batch):
                    cont = pairs[i][1]
                    end = len(inputs[i])
                    picked = logits[row, end - len(cont) : end]
                    logprobs = torch.log_softmax(picked.to(torch.promote_types(picked.dtype, torch.float32)), dim=-1)
                    target = torch.tensor(cont, device=logprobs.device)
                    total = logprobs.gather(-1, target[:, None]).sum().item()
                    results[i] = (total, bool((logprobs.argmax(-1) == target).all()))
                bar.update(len(batch))
        return results

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = self.score([self.encode_pair(*req.args) for req in requests], "lm-eval loglikelihood")
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """The (context, continuation) token windows that cover ``text`` once, conditioned on end-of-text."""
        tokens = self.tokenizer.encode(text)
        return [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(
                tokens, prefix_token=self.eos_id, max_seq_len=self.max_length, context_len=1
            )
        ]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        pairs: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for i, req in enumerate(requests):
            windows = self.rolling_windows(req.args[0])
            pairs += windows
            owner += [i] * len(windows)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self.score(pairs, "lm-eval rolling loglikelihood")):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # --- generation --------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out: list[str] = []
        with progress_bar("lm-eval generate", total=len(requests), unit="requests") as bar:
            for req in requests:
                context, gen_kwargs = req.args
                kwargs = dict(gen_kwargs or {})
                if kwargs.get("do_sample"):
                    raise LMEvalError("the mixbench adapter decodes greedily only; the task asks for do_sample: true")
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else [u for u in until if u]
                max_new = _positive_int("max_gen_toks", kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
                prompt = self.tokenizer.encode(context)[-self.max_length :] or [self.eos_id]
                text = self.greedy(prompt, until, max_new)
                self.cache_hook.add_partial("generate_until", req.args, text)
                out.append(text)
                bar.update()
        return out

    @torch.no_grad()
    def greedy(self, prompt: list[int], until: Sequence[str], max_new_tokens: int) -> str:
        """Argmax decoding with ``prefill`` then ``step``; stops at end-of-text, the budget or an ``until`` string."""
        with autocast(self._device):
            logits, state = self.model.prefill(torch.tensor([prompt], device=self._device))
        next_logits = logits[0, -1]
        generated: list[int] = []
        while len(generated) < max_new_tokens:
            token = int(next_logits.argmax())
            if token == self.eos_id:
                break
            generated.append(token)
            text = self.tokenizer.decode(generated)
            stops = [text.find(u) for u in until if u in text]
            if stops:
                return text[: min(stops)]
            if len(generated) < max_new_tokens:
                with autocast(self._device):
                    step_logits, state = self.model.step(torch.tensor([token], device=self._device), state)
                next_logits = step_logits[0]
        return self.tokenizer.decode(generated)


# --------------------------------------------------------------------------- tasks


def shipped_tasks() -> list[str]:
    """Names of the tasks in ``harness/lm_eval_tasks/`` (one ``NAME.yaml.template`` each)."""
    return sorted(p.name.removesuffix(TEMPLATE_SUFFIX) for p in TASKS_DIR.glob(f"*{TEMPLATE_SUFFIX}"))


def render_tasks(folder: Path) -> Path:
    """Write the shipped task YAMLs into ``folder`` with absolute data paths; returns ``folder``.

    lm-eval resolves a YAML's ``data_files`` against the current directory, so the templates
    carry ``$data_dir`` and ``$cache_dir`` (the datasets cache, kept beside the YAMLs).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    quoted = {  # inside a double-quoted YAML string: a JSON string's escapes are YAML's
        "data_dir": json.dumps(str(TASKS_DIR))[1:-1],
        "cache_dir": json.dumps(str((folder / "hf-datasets").resolve()))[1:-1],
    }
    for template in TASKS_DIR.glob(f"*{TEMPLATE_SUFFIX}"):
        text = string.Template(template.read_text()).substitute(quoted)
        (folder / template.name.removesuffix(".template")).write_text(text)
    return folder


@lru_cache(maxsize=1)
def rendered_tasks_dir() -> Path:
    """The shipped tasks rendered once per process into a temporary folder, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="mixbench-lm-eval-"))
    atexit.register(shutil.rmtree, folder, True)
    return render_tasks(folder)


@lru_cache(maxsize=2)
def _task_manager(include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(rendered_tasks_dir()), include_defaults=include_defaults)


def task_manager(tasks: Sequence[str]) -> Any:
    """An lm-eval ``TaskManager`` that knows the shipped tasks (and lm-eval's own only if asked).

    Raises ``LMEvalError`` naming every unknown task. Indexing lm-eval's ~15k built-in tasks
    takes seconds, so it happens only when a task is not one of ours, and once per process.
    """
    require_lm_eval()
    if not tasks:
        raise LMEvalError("no lm-eval tasks given")
    ours = shipped_tasks()
    manager = _task_manager(include_defaults=any(t not in ours for t in tasks))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LMEvalError(
            f"unknown lm-eval task(s) {', '.join(map(repr, unknown))}: neither shipped with mixbench "
            f"({', '.join(ours)}) nor one of lm-eval's own (see `lm-eval ls tasks`)"
        )
    return manager


def check_tasks(tasks: Sequence[str]) -> None:
    """Fail now, not after training, if lm-eval is missing or a task name is unknown."""
    task_manager(tasks)


def results_to_metrics(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's results as ``lm_eval/<task>/<metric>`` -> value.

    ``acc,none`` becomes ``acc`` (a metric under another filter: ``acc[filter]``); the number
    of documents scored is ``samples``; text values (aliases, ``N/A``) and non-finite
    values (a stderr of one sample) are left out.
    """
    out: dict[str, float] = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, comma, filt = key.partition(",")  # a metric is "name,filter"; "sample_len" is not
            if not comma or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            name = metric if filt == "none" else f"{metric}[{filt}]"
            out[f"lm_eval/{task}/{name}"] = float(value)
        samples = results.get("n-samples", {}).get(task, {}).get("effective")
        if samples is not None:
            out[f"lm_eval/{task}/samples"] = float(samples)
    return out


def evaluate(lm: "MixbenchLM", tasks: Sequence[str], limit: int | None = None) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on ``tasks``; returns its results dictionary."""
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=task_manager(tasks),
        limit=limit,
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples=False,
    )
    if results is None:
        raise LMEvalError("lm-eval returned no results")
    return results


def lm_eval_metrics(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    tasks: Sequence[str],
    *,
    max_length: int,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
    """The runner's hook: the tasks' scores for a model in memory, as store metric names."""
    lm = MixbenchLM.from_model(model, tokenizer, max_length=max_length, batch_size=batch_size)
    return results_to_metrics(evaluate(lm, tasks, limit=limit))


# --------------------------------------------------------------------------- command lines


def lm_eval_command(args: Any, console: Any) -> int:
    """``mixbench lm-eval RUN_KEY --tasks a,b``: score a done run's checkpoint, store and print the scores."""
    from rich.table import Table

    from harness.store.database import Store

    lm = MixbenchLM(
        run_key=args.run_key, db=args.db, device=args.device, batch_size=args.batch_size, max_length=args.max_length
    )
    metrics = results_to_metrics(evaluate(lm, [t for t in args.tasks.split(",") if t], limit=args.limit))
    step = Store(args.db).add_metrics(args.run_key, metrics.items())
    table = Table(title=f"lm-eval on run {args.run_key} (max_length {lm.max_length}; stored at step {step})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.6g}")
    console.print(table)
    return 0


def lm_eval_cli(argv: Sequence[str]) -> None:
    """lm-eval's own command line with ``mixbench`` registered and the shipped tasks included.

    ``--include_path`` is added for the shipped tasks unless given (lm-eval takes only one).
    """
    require_lm_eval()
    from lm_eval.__main__ import cli_evaluate

    args = list(argv)
    if "--include_path" not in args and not any(a.startswith("--include_path=") for a in args):
        args += ["--include_path", str(rendered_tasks_dir())]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    # Run as a script this file is ``__main__``; the model lm-eval finds is the importable module's.
    from harness.evaluate import lm_eval_adapter

    try:
        lm_eval_adapter.lm_eval_cli(sys.argv[1:])
    except lm_eval_adapter.LMEvalError as exc:
        sys.exit(f"error: {exc}")
