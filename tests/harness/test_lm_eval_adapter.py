"""The lm-eval adapter: each request type against the model's own scoring, the shipped tasks
through ``simple_evaluate``, a suite end to end into the store, and the bad inputs. Offline.

The references here are written from the definitions, not from the adapter: a full forward
pass, ``log_softmax``, and the token positions worked out by hand. The model is float64 so
that argmax ties and summation order cannot make the comparisons flaky.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance

from harness.cli import main
from harness.data import ByteTokenizer, load_tokenizer
from harness.evaluate import lm_eval_adapter
from harness.evaluate.lm_eval_adapter import LMEvalError, MixbenchLM
from harness.store.checkpoints import load_checkpoint, save_checkpoint
from harness.store.database import Store
from models import ModelSpec, build

REPO = Path(__file__).resolve().parents[2]
MAX_LEN = 24
KJV_LINE = (REPO / "harness" / "corpus" / "kjv.txt").read_text().splitlines()[0]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: the Hub is off for datasets and huggingface_hub alike."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Micro models: one intra-op thread is fastest, and much faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build(ModelSpec.parse("attention@transformer", "micro", ByteTokenizer().vocab_size)).double().eval()


@pytest.fixture(scope="module")
def lm(model):
    return MixbenchLM.from_model(model, ByteTokenizer(), max_length=MAX_LEN, batch_size=3)


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def log_probs(model, ids: list[int]) -> torch.Tensor:
    """``(len(ids), vocab)`` log-probabilities of the next token after each prefix of ``ids``."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0], dim=-1)


def reference_loglikelihood(model, context: str, continuation: str, max_len: int) -> tuple[float, bool]:
    """Bytes; trailing context whitespace belongs to the continuation; empty context -> EOS; left cut."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    ctx = list(stripped.encode()) or [ByteTokenizer().eos_id]
    cont = list(continuation.encode())
    ids = (ctx + cont)[-(max_len + 1) :]
    logp = log_probs(model, ids[:-1])
    first = len(ids) - 1 - len(cont)  # position whose output predicts cont[0]
    rows = [logp[first + j] for j in range(len(cont))]
    return sum(float(r[t]) for r, t in zip(rows, cont)), all(int(r.argmax()) == t for r, t in zip(rows, cont))


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """``n`` argmax tokens by full forward passes (no prefill, no step)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(log_probs(model, ids)[-1].argmax()))
    return ids[len(prompt) :]


def greedy_continuation(model, n: int = 3) -> tuple[str, str]:
    """A KJV context whose ``n`` greedy next bytes are printable ASCII, and that text."""
    for start in range(0, 600, 7):
        context = KJV_LINE[start : start + 15]
        tokens = greedy_reference(model, list(context.encode()), n)
        if all(33 <= t < 127 for t in tokens):
            return context, bytes(tokens).decode()
    pytest.fail("no context with a printable greedy continuation (change the seed)")


def expected_cloze(lm: MixbenchLM, limit: int | None = None) -> dict[str, float]:
    """kjv_cloze's acc and acc_norm from the adapter's own ``loglikelihood`` (checked above against a
    reference), by the task's definition: context, then " " + each choice; the choice with the
    highest log-likelihood (acc_norm: per character of the choice) must be the answer."""
    import json

    lines = (lm_eval_adapter.TASKS_DIR / "kjv_cloze.jsonl").read_text().splitlines()
    docs = [json.loads(line) for line in lines[:limit]]
    reqs = [request("loglikelihood", d["context"], " " + choice) for d in docs for choice in d["choices"]]
    scores = iter(lp for lp, _ in lm.loglikelihood(reqs))
    acc = acc_norm = 0
    for d in docs:
        lls = [next(scores) for _ in d["choices"]]
        norm = [ll / len(choice) for ll, choice in zip(lls, d["choices"])]
        acc += max(range(len(lls)), key=lls.__getitem__) == d["answer"]
        acc_norm += max(range(len(norm)), key=norm.__getitem__) == d["answer"]
    return {"acc": acc / len(docs), "acc_norm": acc_norm / len(docs), "samples": len(docs)}


# --------------------------------------------------------------------------- loglikelihood


def test_loglikelihood_equals_the_models_own_scoring(model, lm):
    greedy_ctx, greedy_cont = greedy_continuation(model)
    pairs = [
        ("In the beginning God", " created"),
        ("", "In the beginning"),  # empty context: conditioned on end-of-text
        ("And God said, Let there be ", "light"),  # the trailing space moves to the continuation
        (KJV_LINE[:200], " and the earth."),  # longer than max_length: cut from the left
        ("x", "y"),
        (greedy_ctx, greedy_cont),  # the greedy continuation: is_greedy must be True
        (greedy_ctx, greedy_cont[:-1] + chr(ord(greedy_cont[-1]) ^ 1)),  # last byte changed: False
    ]
    got = lm.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    for (context, continuation), (logprob, is_greedy) in zip(pairs, got):
        want_logprob, want_greedy = reference_loglikelihood(model, context, continuation, MAX_LEN)
        assert logprob == pytest.approx(want_logprob, rel=1e-9, abs=1e-9), (context, continuation)
        assert is_greedy == want_greedy, (context, continuation)
    assert got[-2][1] is True and got[-1][1] is False
    assert all(lp < 0 for lp, _ in got)


def test_batching_does_not_change_scores(model):
    pairs = [(KJV_LINE[i : i + 5 + 3 * i], KJV_LINE[i + 5 + 3 * i : i + 9 + 3 * i]) for i in range(7)]
    reqs = [request("loglikelihood", c, x) for c, x in pairs]
    one = MixbenchLM.from_model(model, ByteTokenizer(), max_length=MAX_LEN, batch_size=1).loglikelihood(reqs)
    many = MixbenchLM.from_model(model, ByteTokenizer(), max_length=MAX_LEN, batch_size=5).loglikelihood(reqs)
    assert [g for _, g in one] == [g for _, g in many]
    assert [lp for lp, _ in one] == pytest.approx([lp for lp, _ in many], rel=1e-10)


def test_a_bpe_pair_splits_on_the_word_boundary():
    tok = load_tokenizer("builtin:kjv")
    lm = MixbenchLM.from_model(torch.nn.Linear(1, 1), tok, max_length=8)  # only the tokenizer is used
    ctx, cont = lm.encode_pair("And God said, Let there be ", "light")
    assert ctx == tok.encode("And God said, Let there be") and ctx + cont == tok.encode(
        "And God said, Let there be light"
    )
    assert tok.decode(cont) == " light"


def test_a_continuation_longer_than_max_length_is_refused(lm):
    with pytest.raises(LMEvalError, match="does not fit max_length"):
        lm.loglikelihood([request("loglikelihood", "a", "b" * (MAX_LEN + 1))])


# --------------------------------------------------------------------------- rolling


def test_rolling_equals_token_logprobs_for_a_short_text(model, lm):
    text = KJV_LINE[:20]
    ids = [ByteTokenizer().eos_id] + list(text.encode())
    logp = log_probs(model, ids[:-1])
    want = sum(float(logp[i, t]) for i, t in enumerate(ids[1:]))
    (got,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert got == pytest.approx(want, rel=1e-9)


def test_rolling_over_a_long_text_equals_a_windowed_computation(model, lm):
    """Targets in chunks of L; each chunk scored with the L inputs that end just before its last target."""
    text = KJV_LINE[:87]  # 87 bytes: chunks of 24, 24, 24 and 15 targets
    s = [ByteTokenizer().eos_id] + list(text.encode())  # s[j + 1] is the j-th target
    n, want = len(s) - 1, 0.0
    for start in range(0, n, MAX_LEN):
        end = min(start + MAX_LEN, n)  # targets s[start + 1 : end + 1]
        lo = max(0, end - MAX_LEN)  # inputs s[lo : end]
        logp = log_probs(model, s[lo:end])
        want += sum(float(logp[j - 1 - lo, s[j]]) for j in range(start + 1, end + 1))
    short = [request("loglikelihood_rolling", "")]  # an empty text scores 0
    got = lm.loglikelihood_rolling([request("loglikelihood_rolling", text), *short])
    assert got[0] == pytest.approx(want, rel=1e-9) and got[1] == 0.0
    whole = log_probs(model, s[:-1])  # one pass over all 88 positions differs: windows lose context
    assert got[0] != pytest.approx(sum(float(whole[i, t]) for i, t in enumerate(s[1:])), rel=1e-6)


# --------------------------------------------------------------------------- generation


def test_generate_until_equals_a_full_forward_greedy_loop(model, lm):
    tok = ByteTokenizer()
    prompts = ["In the beginning", KJV_LINE[:100]]  # the second is cut to its last MAX_LEN bytes
    reqs = [request("generate_until", p, {"until": [], "max_gen_toks": 12}) for p in prompts]
    got = lm.generate_until(reqs)
    for prompt, text in zip(prompts, got):
        tokens = greedy_reference(model, list(prompt.encode())[-MAX_LEN:], 12)
        if tok.eos_id in tokens:
            tokens = tokens[: tokens.index(tok.eos_id)]
        assert text == tok.decode(tokens)

    full = got[0]
    stop = next(ch for ch in full[2:] if ch.isascii() and ch.isprintable())  # a stop string it will meet
    (cut,) = lm.generate_until(
        [request("generate_until", prompts[0], {"until": ["\x00never", stop], "max_gen_toks": 12})]
    )
    assert cut == full[: full.index(stop)] and stop not in cut


def test_sampling_is_refused(lm):
    with pytest.raises(LMEvalError, match="greedily"):
        lm.generate_until([request("generate_until", "a", {"do_sample": True, "until": ["\n"]})])


# --------------------------------------------------------------------------- lm-eval itself


def test_simple_evaluate_on_the_shipped_tasks(model, lm):
    results = lm_eval_adapter.evaluate(lm, ["kjv_cloze", "kjv_ppl"])
    metrics = lm_eval_adapter.results_to_metrics(results)
    want = expected_cloze(lm)
    assert want["samples"] == 50
    for name, value in want.items():
        assert metrics[f"lm_eval/kjv_cloze/{name}"] == value, name
    assert "lm_eval/kjv_cloze/acc_stderr" in set(metrics)
    assert not any("sample_len" in name or "alias" in name for name in metrics)
    # bits per byte is -sum(loglikelihood) / (bytes * ln 2): the adapter's rolling sums, seen by lm-eval
    import json

    passages = [json.loads(line)["text"] for line in (lm_eval_adapter.TASKS_DIR / "kjv_passages.jsonl").open()]
    total = sum(lm.loglikelihood_rolling([request("loglikelihood_rolling", p) for p in passages]))
    n_bytes = sum(len(p.encode()) for p in passages)
    assert metrics["lm_eval/kjv_ppl/bits_per_byte"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-9)
    assert metrics["lm_eval/kjv_ppl/samples"] == 10


def test_shipped_tasks_render_with_absolute_paths(tmp_path):
    assert lm_eval_adapter.shipped_tasks() == ["kjv_cloze", "kjv_ppl"]
    folder = lm_eval_adapter.render_tasks(tmp_path / "with space")
    text = (folder / "kjv_cloze.yaml").read_text()
    assert f'"{lm_eval_adapter.TASKS_DIR}/kjv_cloze.jsonl"' in text and "$" not in text


# --------------------------------------------------------------------------- suites and the CLI


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def suite_args(tmp_path, suite: Path) -> list[str]:
    return [
        "run",
        str(suite),
        "--db",
        str(tmp_path / "m.db"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--report-dir",
        str(tmp_path / "dash"),
    ]


def test_a_suite_stores_lm_eval_metrics_and_the_run_key_reloads(write_suite, tmp_path, capsys):
    evals = {"position_buckets": 4, "max_val_sequences": 8, "lm_eval": ["kjv_cloze"], "lm_eval_limit": 12}
    code, out, _ = run_cli(capsys, *suite_args(tmp_path, write_suite(eval=evals)))
    assert code == 0, out
    store = Store(tmp_path / "m.db")
    (run,) = store.runs("unit")
    values = {name: v for _key, _step, name, v in store.metric_values("unit")}
    model, _ = load_checkpoint(run.checkpoint_path)
    want = expected_cloze(MixbenchLM.from_model(model, ByteTokenizer(), max_length=32), limit=12)
    for name, value in want.items():
        assert values[f"lm_eval/kjv_cloze/{name}"] == value, name
    steps = {step for _key, step, name, _v in store.metric_values("unit") if name.startswith("lm_eval/")}
    assert steps == {max(step for _key, step, _n, _v in store.metric_values("unit"))}  # the final step

    # the same run by its key: same checkpoint, tokenizer and max_length (the training seq_len), same score
    code, out, _ = run_cli(
        capsys, "lm-eval", run.run_key, "--tasks", "kjv_cloze", "--db", str(tmp_path / "m.db"), "--limit", "12"
    )
    assert code == 0, out
    assert "max_length 32" in out
    printed = " ".join(out.replace("│", " ").split())
    for name, value in want.items():
        assert f"lm_eval/kjv_cloze/{name} {value:.6g}" in printed, name
    rows = [(step, name) for _key, step, name, _v in store.metric_values("unit") if name.startswith("lm_eval/")]
    assert len(rows) == len(set(rows)), "the command's scores replace the stored ones, never duplicate them"
    assert {name for _, name in rows} == {n for n in values if n.startswith("lm_eval/")}


def test_lm_eval_command_line_with_the_mixbench_model(tmp_path):
    """``python -m harness.evaluate.lm_eval_adapter`` is lm-eval's own CLI with ``mixbench`` registered."""
    torch.manual_seed(0)
    model = build(ModelSpec.parse("attention@transformer", "micro", ByteTokenizer().vocab_size))
    ckpt = save_checkpoint(model, tmp_path / "ckpt", "bytes", {"data": {"seq_len": 32}})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.evaluate.lm_eval_adapter",
            "--model",
            "mixbench",
            "--model_args",
            f"checkpoint={ckpt}",
            "--tasks",
            "kjv_cloze",
            "--limit",
            "4",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": "/usr/bin:/bin",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "HOME": str(tmp_path),
            "OMP_NUM_THREADS": "1",
        },
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # lm-eval's table: |kjv_cloze| 1|none | 0|acc |↑ |0.2500|± |0.2500|
    printed = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"\|(acc(?:_norm)?)\s*\|[^|]*\|\s*([0-9.]+)\s*\|", proc.stdout)
    }
    want = expected_cloze(MixbenchLM.from_model(model, ByteTokenizer(), max_length=32), limit=4)
    assert printed == {"acc": want["acc"], "acc_norm": want["acc_norm"]}, proc.stdout


def test_an_unknown_task_fails_the_cell_before_training(write_suite, tmp_path, capsys):
    evals = {"lm_eval": ["kjv_cloze", "no_such_task"]}
    code, out, _ = run_cli(capsys, *suite_args(tmp_path, write_suite(eval=evals)))
    assert code == 1
    (run,) = Store(tmp_path / "m.db").runs("unit")
    assert run.status == "failed" and "\n" not in run.error
    assert (
        run.error.startswith("LMEvalError: unknown lm-eval task(s) 'no_such_task'")
        and "kjv_cloze, kjv_ppl" in run.error
    )
    assert not (tmp_path / "ckpt").exists()  # nothing was trained


def test_a_missing_lm_eval_fails_the_cell_with_the_install_command(write_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lm_eval_adapter, "_MISSING", "No module named 'lm_eval'")
    code, _, _ = run_cli(capsys, *suite_args(tmp_path, write_suite(eval={"lm_eval": ["kjv_cloze"]})))
    (run,) = Store(tmp_path / "m.db").runs("unit")
    assert code == 1 and run.status == "failed"
    assert "lm-eval is not installed" in run.error and "pip install 'lm-eval>=0.4.13,<0.5'" in run.error


def test_an_unknown_run_key_is_one_clear_line(tmp_path, capsys):
    Store(tmp_path / "m.db")  # an empty store
    with pytest.raises(LMEvalError, match="no run with key 'nope'"):
        MixbenchLM(run_key="nope", db=str(tmp_path / "m.db"))
    code, _, err = run_cli(capsys, "lm-eval", "nope", "--tasks", "kjv_cloze", "--db", str(tmp_path / "m.db"))
    assert code == 2 and "no run with key 'nope'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(LMEvalError, match="database not found"):
        MixbenchLM(run_key="nope", db=str(tmp_path / "missing.db"))
    with pytest.raises(LMEvalError, match="read as a number"):  # --model_args run_key=0123 arrives as 123
        MixbenchLM(run_key=123, db=str(tmp_path / "m.db"))
