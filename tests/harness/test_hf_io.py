"""Hugging Face checkpoints in and out: random small ``transformers`` models, offline.

Import: a Llama (grouped-query, untied), a tied Llama, a Mamba and a Mamba-2 (two groups) are
saved by ``transformers`` in its format, imported, and our logits equal its forward in float32
to 1e-4 (the two compute the same function in a different order; the observed gap is ~1e-6);
decode after import equals prefill. Export: our models with perturbed weights (every norm
and bias away from its initial value) reload with ``AutoModelForCausalLM`` and give our logits,
TTT through ``trust_remote_code``. Then the protocol end to end on an imported model, and the
bad inputs, each one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.data.tokenizer import BUILTIN_TOKENIZER_FILES
from harness.interop.hf_io import export_run, import_checkpoint
from harness.store.checkpoints import load_checkpoint, save_checkpoint
from harness.store.database import RunRecord, Store
from models import ModelSpec, build
from models.hf_format import DEFAULTS, import_transformers

pytestmark = pytest.mark.filterwarnings("ignore")
transformers = pytest.importorskip("transformers")
T = import_transformers()
VOCAB = 4096  # the shipped tokenizer's, so the imported models are scored on the shipped corpus
TOL = 1e-4


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def hf_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    llama = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    return {
        "llama-gqa": T.LlamaForCausalLM(
            T.LlamaConfig(**llama, num_key_value_heads=2, rope_theta=5000.0, rms_norm_eps=1e-5)
        ),
        "llama-tied": T.LlamaForCausalLM(T.LlamaConfig(**llama, tie_word_embeddings=True)),
        "mamba": T.MambaForCausalLM(T.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2)),
        "mamba2": T.Mamba2ForCausalLM(
            T.Mamba2Config(
                vocab_size=VOCAB,
                hidden_size=32,
                state_size=8,
                num_hidden_layers=2,
                head_dim=16,
                num_heads=4,
                n_groups=2,
                chunk_size=4,
            )
        ),
    }


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its initial value (norm gains off one, biases off their init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, (name, model) in enumerate(hf_models().items()):
        model = perturb(model, i)
        model.save_pretrained(root / name)
        shutil.copyfile(BUILTIN_TOKENIZER_FILES["builtin:kjv"], root / name / "tokenizer.json")
        out[name] = (root / name, model)
    return out


@pytest.fixture(scope="module")
def imported(folders, tmp_path_factory) -> tuple[Store, dict[str, str]]:
    root = tmp_path_factory.mktemp("store")
    store = Store(root / "db.sqlite")
    keys = {
        name: import_checkpoint(str(folder), name, store, root / "ckpt").run_key
        for name, (folder, _) in folders.items()
    }
    return store, keys


IDS = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["llama-gqa", "llama-tied", "mamba", "mamba2"])
def test_imported_logits_equal_transformers(name, folders, imported):
    store, keys = imported
    run = store.run(keys[name])
    assert run.status == "imported" and run.size == name
    assert run.config["imported"]["revision"].startswith("sha256:") and run.environment["tokenizer"]
    model, _ = load_checkpoint(Path(run.checkpoint_path))
    with torch.no_grad():
        theirs = folders[name][1](IDS).logits
    assert torch.allclose(model(IDS), theirs, atol=TOL, rtol=TOL), (model(IDS) - theirs).abs().max()


def test_imported_options_are_those_of_the_config(imported):
    store, keys = imported
    gqa, _ = load_checkpoint(Path(store.run(keys["llama-gqa"]).checkpoint_path))
    attn = gqa.blocks[0].mixer
    assert (attn.n_kv_heads, attn.rope_base, gqa.spec.norm_eps, gqa.spec.tie_embeddings) == (2, 5000.0, 1e-5, False)
    tied, _ = load_checkpoint(Path(store.run(keys["llama-tied"]).checkpoint_path))
    assert tied.head.weight is tied.embed.weight


@pytest.mark.parametrize("name", ["llama-gqa", "mamba", "mamba2"])
def test_decode_equals_prefill_after_import(name, imported):
    store, keys = imported
    model, _ = load_checkpoint(Path(store.run(keys[name]).checkpoint_path))
    full = model(IDS)
    logits, state = model.prefill(IDS[:, :5])
    steps = [logits[:, -1]]
    for t in range(5, IDS.shape[1]):
        out, state = model.step(IDS[:, t], state)
        steps.append(out)
    assert torch.allclose(torch.stack(steps[:-1], 1), full[:, 4:-1], atol=TOL, rtol=TOL)


def test_defaults_of_missing_config_fields_are_transformers_own():
    classes = {"llama": T.LlamaConfig(), "mamba": T.MambaConfig(), "mamba2": T.Mamba2Config()}
    for kind, defaults in DEFAULTS.items():
        for key, value in defaults.items():
            theirs = getattr(classes[kind], key)
            if key == "time_step_limit":
                theirs = [float(v) for v in theirs]
            if key in ("num_key_value_heads", "head_dim"):  # filled from the head count when absent
                continue
            assert theirs == value, (kind, key)


def stored_run(store: Store, root: Path, arch: str, seed: int) -> str:
    """A done run of ``arch`` at the micro size with perturbed weights, as a trained one is stored."""
    spec = ModelSpec.parse(arch, "micro", VOCAB)
    torch.manual_seed(seed)
    model = perturb(build(spec), seed)
    key = f"run{seed:013d}"
    config = {"model": {"arch": arch}, "data": {"seq_len": 32}}
    record = RunRecord(key, "trained", spec.mixer, spec.backbone, "micro", 32, "builtin:kjv", config)
    assert store.claim(record)
    folder = save_checkpoint(model, root / key, "builtin:kjv", config)
    store.finish(
        key,
        metrics=[],
        position_loss=[],
        n_params=model.num_params(),
        n_params_non_embedding=0,
        backend="torch",
        environment={},
        checkpoint_path=str(folder),
    )
    return key


@pytest.mark.parametrize(
    ("arch", "hf_class"),
    [
        ("attention@transformer", "LlamaForCausalLM"),
        ("mamba@mamba_native", "MambaForCausalLM"),
        ("mamba2@mamba_native", "Mamba2ForCausalLM"),
        ("ttt_linear@transformer", "MixbenchForCausalLM"),
    ],
)
def test_export_reloads_with_auto_model(arch, hf_class, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    key = stored_run(store, tmp_path / "ckpt", arch, seed=len(arch))
    remote = hf_class == "MixbenchForCausalLM"
    how = export_run(store, key, tmp_path / "hf")
    assert how == ("trust_remote_code" if remote else hf_class)
    theirs = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=remote).eval()
    assert type(theirs).__name__ == hf_class
    ours, _ = load_checkpoint(Path(store.run(key).checkpoint_path))
    with torch.no_grad():
        got = theirs(IDS).logits
    assert torch.allclose(got, ours(IDS), atol=TOL, rtol=TOL), (got - ours(IDS)).abs().max()
    tok = T.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("In the beginning")["input_ids"]


SUITE = """
name: hfcheck
data: {source: builtin:kjv, tokenizer: builtin:kjv, seq_len: 32, max_tokens: 20000}
models: [attention@transformer]
sizes: [micro]
train: {tokens: 4096}
eval: {position_buckets: 4, max_val_sequences: 4, batch_size: 4, lm_eval: [kjv_cloze], lm_eval_limit: 4}
latency: {contexts: [8], warmup: 0, repeats: 1, decode_tokens: 2, device: cpu}
"""


def test_protocol_end_to_end_on_an_imported_model(folders, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    db, suite = tmp_path / "db.sqlite", tmp_path / "hfcheck.yaml"
    suite.write_text(SUITE)
    common = ["--db", str(db)]
    assert (
        main(
            [
                "import",
                str(folders["mamba"][0]),
                "--as",
                "mamba-rand",
                *common,
                "--checkpoint-dir",
                str(tmp_path / "ckpt"),
            ]
        )
        == 0
    )
    key = Store(db).runs("imported")[0].run_key
    assert (
        main(
            [
                "eval",
                key,
                str(suite),
                *common,
                "--cache-dir",
                str(tmp_path / "cache"),
                "--report-dir",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    store = Store(db)
    (row,) = store.runs("hfcheck")
    assert (row.status, row.size, row.config["evaluated"]["run_key"]) == ("imported", "mamba-rand", key)
    values = {name: v for k, _s, name, v in store.metric_values("hfcheck") if k == row.run_key}
    assert values["val/ppl"] > 1 and any(n.startswith("lm_eval/kjv_cloze/") for n in values)
    assert len([p for p in store.position_losses("hfcheck") if p[0] == row.run_key]) == 4
    html = (tmp_path / "report" / "hfcheck.html").read_text()
    assert "mamba@mamba_native [imported]" in html and "Perplexity by token index" in html
    assert main(["report", *common, "-o", str(tmp_path / "all")]) == 0  # the imported suite: a table, no empty panel
    assert "Perplexity by token index" not in (tmp_path / "all" / "imported.html").read_text()
    assert main(["lm-eval", key, "--tasks", "kjv_ppl", "--limit", "2", *common]) == 0
    assert any(n.startswith("lm_eval/kjv_ppl/") for k, _s, n, _v in Store(db).metric_values("imported"))
    assert main(["latency", str(suite), "--run", key, *common, "--report-dir", str(tmp_path / "report")]) == 0
    rows = Store(db).query("SELECT size, mode, status FROM latency ORDER BY mode")[1]
    assert rows == [("mamba-rand", "decode", "ok"), ("mamba-rand", "prefill", "ok")]


def edited(folder: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    change(copy)
    return copy


def set_config(**fields):
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | fields))

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (set_config(model_type="gpt2"), "config.json model_type 'gpt2' cannot be imported; known: llama"),
        (set_config(state_size=4), "does not fit: the config implies"),
        (set_config(use_bias=True), "use_bias=True is not supported"),
        (lambda f: (f / "tokenizer.json").unlink(), "no tokenizer.json"),
    ],
)
def test_bad_checkpoints_give_one_line(change, message, folders, tmp_path, capsys):
    source = edited(folders["mamba"][0], tmp_path, change)
    assert (
        main(
            [
                "import",
                str(source),
                "--as",
                "x",
                "--db",
                str(tmp_path / "db.sqlite"),
                "--checkpoint-dir",
                str(tmp_path / "ckpt"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    if "fit" in message:
        assert "tensor backbone.layers.0.mixer.x_proj.weight (18, 64)" in err  # named, with its shape


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope type 'linear' is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported (our MLP is SwiGLU"),
        ({"attention_bias": True}, "attention_bias=True is not supported"),
        ({"mlp_bias": True}, "mlp_bias=True is not supported"),
    ],
)
def test_llama_settings_our_blocks_do_not_compute_are_refused(fields, message, folders, tmp_path, capsys):
    """The README promises these refusals: a Llama checkpoint that scales RoPE, uses another
    activation or has biases is refused in one line, never imported with the setting ignored."""
    source = edited(folders["llama-gqa"][0], tmp_path, set_config(**fields))
    db = tmp_path / "db.sqlite"
    args = ["import", str(source), "--as", "x", "--db", str(db), "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert Store(db).runs() == []


def test_a_hub_id_without_network_gives_one_line(tmp_path, capsys):
    assert main(["import", "state-spaces/no-such-model-hf", "--as", "x", "--db", str(tmp_path / "db.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot fetch 'state-spaces/no-such-model-hf' from the Hugging Face Hub" in err
    assert len(err.splitlines()) == 1, err


def test_parity_script_measures_a_local_folder(folders):
    """scripts/hf_parity.py (the real mamba-130m measurement of the README) on a random Mamba."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "hf_parity.py"
    spec = importlib.util.spec_from_file_location("hf_parity", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    figures = script.measure(str(folders["mamba"][0]), tokens=24)
    assert figures["tokens"] == 24 and figures["max_abs_diff"] < TOL * max(1.0, figures["max_abs_logit"])
    assert figures["argmax_agreement"] == 1.0
    assert figures["ppl_ours"] == pytest.approx(figures["ppl_transformers"], rel=1e-4)


def test_a_trained_run_scored_on_another_suite_is_marked_evaluated(tmp_path):
    from harness.config.suite import load_suite
    from harness.evaluate.stored import evaluate_stored

    store = Store(tmp_path / "db.sqlite")
    key = stored_run(store, tmp_path / "ckpt", "attention@transformer", seed=3)
    suite = tmp_path / "hfcheck.yaml"
    suite.write_text(SUITE.replace("lm_eval: [kjv_cloze], lm_eval_limit: 4", "lm_eval: []"))
    [(record, ppl)] = evaluate_stored(store, key, load_suite(suite), tmp_path / "cache", "cpu")
    row = store.run(record.run_key)
    assert (row.suite, row.status, row.size, row.seq_len) == ("hfcheck", "evaluated", "micro", 32) and ppl > 1
    again = evaluate_stored(store, key, load_suite(suite), tmp_path / "cache", "cpu")
    assert again[0][0].run_key == record.run_key and len(store.runs("hfcheck")) == 1  # replaced, not duplicated


def test_bad_eval_and_export_requests_give_one_line(tmp_path, capsys):
    db = str(tmp_path / "db.sqlite")
    store = Store(db)
    key = stored_run(store, tmp_path / "ckpt", "mamba@mamba_native", seed=4)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    task_suite = tmp_path / "task.yaml"
    task_suite.write_text(
        "name: t\nmodels: [attention@transformer]\nsizes: [micro]\nseq_lens: [64]\n"
        "task: {name: mqar, n_train: 8, n_val: 8}\n"
    )
    cases = [
        (["export", key, str(tmp_path / "full"), "--db", db], "exists and is not empty"),
        (["export", "nosuchkey", str(tmp_path / "out"), "--db", db], "no run with key 'nosuchkey'"),
        (["eval", key, str(task_suite), "--db", db], "is a task suite"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
