"""The data layer: tokenizers, sources, packing, the train/val split, the cache, errors."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import data
from harness.data import (
    BUILTIN_SOURCE,
    BUILTIN_TOKENIZER,
    BYTE_TOKENIZER,
    DataConfig,
    DataError,
    load_packed,
    load_tokenizer,
    val_block_mask,
)

REPO = Path(__file__).resolve().parents[2]


def numbered_lines(n: int) -> list[str]:
    """Random-letter documents (seeded), so that no two packed blocks are equal."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    return [f"doc {i}: " + "".join(rng.choice(letters, 50)).strip() for i in range(n)]


def byte_stream(docs: list[str]) -> np.ndarray:
    """What packing with the byte tokenizer must produce: each document's bytes, then eos."""
    return np.array([t for d in docs for t in [*d.encode("utf-8"), 256]], dtype=np.int64)


def unpack(packed: data.PackedData, val_fraction: float = 0.05) -> np.ndarray:
    """Put train and val blocks back in source order and flatten them into the token stream."""
    n = len(packed.train) + len(packed.val)
    mask = val_block_mask(n, val_fraction)
    assert mask.sum() == len(packed.val)
    blocks = np.empty((n, packed.train.shape[1]), dtype=np.int64)
    blocks[~mask], blocks[mask] = packed.train, packed.val
    return blocks.reshape(-1)


@pytest.fixture
def txt(tmp_path: Path) -> tuple[Path, list[str]]:
    docs = numbered_lines(200)
    path = tmp_path / "src" / "docs.txt"
    path.parent.mkdir()
    # Empty and blank lines are not documents.
    path.write_text("\n".join(docs[:100]) + "\n\n   \n" + "\n".join(docs[100:]) + "\n")
    return path, docs


def cfg_for(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **{"tokenizer": BYTE_TOKENIZER, "seq_len": 31, **kw})


# --------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trip():
    tok = load_tokenizer(BYTE_TOKENIZER)
    assert (tok.vocab_size, tok.eos_id) == (257, 256)
    text = "Grüße, 世界! \n\ttabs"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode([*b"a", 256, *b"b"]) == "a<|endoftext|>b"


def test_builtin_tokenizer_round_trip():
    tok = load_tokenizer(BUILTIN_TOKENIZER)
    assert tok.vocab_size == 4096
    assert tok.eos_id == 0
    text = "And God said, Let there be light: and there was light. Zyzzyva 42!"
    ids = tok.encode(text)
    assert tok.eos_id not in ids  # encode adds no special tokens
    assert len(ids) < len(text) / 2.5  # a trained BPE, not bytes in disguise
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "light"]) == [ids, tok.encode("light")]


def test_tokenizer_from_path_matches_builtin(tmp_path):
    builtin = load_tokenizer(BUILTIN_TOKENIZER)
    path = data.BUILTIN_TOKENIZER_FILES[BUILTIN_TOKENIZER]
    by_file, by_folder = load_tokenizer(str(path)), load_tokenizer(str(path.parent))
    assert by_file.fingerprint() == by_folder.fingerprint() == builtin.fingerprint()
    assert by_file.fingerprint() != load_tokenizer(BYTE_TOKENIZER).fingerprint()


def test_token_dtype():
    assert data.token_dtype(257) == np.uint16
    assert data.token_dtype(65536) == np.uint16
    assert data.token_dtype(65537) == np.uint32


# --------------------------------------------------------------------------- sources and packing


def test_local_txt_packs_documents_with_eos(txt, tmp_path):
    path, docs = txt
    packed = load_packed(cfg_for(path), tmp_path / "cache")
    stream = byte_stream(docs)
    width = 32
    n_blocks = len(stream) // width
    assert packed.train.shape[1] == packed.val.shape[1] == width
    assert len(packed.train) + len(packed.val) == n_blocks
    assert len(packed.val) == val_block_mask(n_blocks, 0.05).sum() > 0
    assert packed.train.dtype == np.uint16 and not packed.train.flags.writeable
    np.testing.assert_array_equal(unpack(packed), stream[: n_blocks * width])
    assert packed.vocab_size == 257 and packed.tokenizer.name == BYTE_TOKENIZER


def test_jsonl_json_and_compressed_sources(tmp_path):
    docs = numbered_lines(120)
    rows = [{"body": d, "n": i} for i, d in enumerate(docs)]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    array = tmp_path / "b.json"
    array.write_text(json.dumps(rows))
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    expected = byte_stream(docs)
    for src in (jsonl, array, gz):
        packed = load_packed(cfg_for(src, text_field="body"), tmp_path / "cache")
        got = unpack(packed)
        np.testing.assert_array_equal(got, expected[: len(got)])


def test_folder_source_reads_supported_files_in_order(tmp_path):
    docs = numbered_lines(90)
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    (folder / "a.txt").write_text("\n".join(docs[:30]) + "\n")
    (folder / "sub" / "b.txt").write_text("\n".join(docs[30:60]) + "\n")
    (folder / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[60:]))
    (folder / "notes.md").write_text("not data\n")
    (folder / ".hidden" / "x.txt").write_text("skipped\n")
    packed = load_packed(cfg_for(folder), tmp_path / "cache")
    got = unpack(packed)
    # Files are read sorted by path, one datasets call per file type: the .txt files, then jsonl.
    np.testing.assert_array_equal(got, byte_stream(docs)[: len(got)])


def test_builtin_source_with_token_cap(tmp_path):
    cfg = DataConfig(source=BUILTIN_SOURCE, seq_len=63, max_tokens=20_000)
    packed = load_packed(cfg, tmp_path / "cache")
    state = json.loads((tmp_path / "cache" / packed.cache_key / "state.json").read_text())
    assert state["tokens"] >= 20_000  # prepared to a shard boundary; read up to the cap
    assert len(packed.train) + len(packed.val) == 20_000 // 64
    text = packed.tokenizer.decode(packed.train[0].tolist())
    assert text.startswith("In the beginning God created the heaven and the earth.")


def test_batch_shapes_and_shift(txt, tmp_path):
    packed = load_packed(cfg_for(txt[0]), tmp_path / "cache")
    idx = [3, 0, 3, len(packed.train) - 1]
    x, y = packed.batch("train", idx)
    assert x.shape == y.shape == (4, 31)
    assert x.dtype == y.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
    rows = torch.from_numpy(packed.train[idx].astype(np.int64))
    assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:])
    assert torch.equal(x[:, 1:], y[:, :-1])
    xv, yv = packed.batch("val", torch.tensor([0]))
    assert xv.shape == (1, 31) and torch.equal(yv[0], torch.from_numpy(packed.val[0, 1:].astype(np.int64)))
    with pytest.raises(ValueError):
        packed.batch("test", [0])


# --------------------------------------------------------------------------- split and cache


def test_val_block_mask_is_fixed():
    # Golden values: the split must be the same on every machine and numpy version.
    assert np.flatnonzero(val_block_mask(20, 0.1)).tolist() == [10, 18]
    assert np.flatnonzero(val_block_mask(1000, 0.01)).tolist() == [
        196,
        295,
        472,
        558,
        663,
        689,
        710,
        963,
        975,
        976,
        992,
    ]
    # A block's side depends on its index alone: a longer stream keeps the split of its prefix.
    np.testing.assert_array_equal(val_block_mask(5000, 0.05)[:1234], val_block_mask(1234, 0.05))
    assert val_block_mask(100_000, 0.05).mean() == pytest.approx(0.05, abs=0.003)
    assert not val_block_mask(50, 0.0).any() and val_block_mask(50, 1.0).all()


def test_split_is_deterministic_and_disjoint(txt, tmp_path):
    a = load_packed(cfg_for(txt[0]), tmp_path / "one")
    b = load_packed(cfg_for(txt[0]), tmp_path / "two")
    assert a.cache_key == b.cache_key
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)
    train_rows = {r.tobytes() for r in a.train}
    val_rows = {r.tobytes() for r in a.val}
    assert len(train_rows) == len(a.train) and len(val_rows) == len(a.val)
    assert not train_rows & val_rows


def test_second_load_reads_the_cache_without_tokenizing(txt, tmp_path, monkeypatch):
    cfg = cfg_for(txt[0])
    first = load_packed(cfg, tmp_path / "cache")
    meta = tmp_path / "cache" / first.cache_key / "state.json"
    mtime = meta.stat().st_mtime_ns

    def boom(self, texts):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data.ByteTokenizer, "encode_batch", boom)
    second = load_packed(cfg, tmp_path / "cache")
    assert second.cache_key == first.cache_key and meta.stat().st_mtime_ns == mtime
    assert isinstance(second.train, np.memmap)
    np.testing.assert_array_equal(first.train, second.train)
    np.testing.assert_array_equal(first.val, second.val)


def test_cache_key_follows_config_tokenizer_and_source(txt, tmp_path):
    path, docs = txt
    cache = tmp_path / "cache"
    base = load_packed(cfg_for(path), cache).cache_key
    keys = {
        "seq_len": load_packed(cfg_for(path, seq_len=15), cache).cache_key,
        "val_fraction": load_packed(cfg_for(path, val_fraction=0.1), cache).cache_key,
        "tokenizer": load_packed(cfg_for(path, tokenizer=BUILTIN_TOKENIZER), cache).cache_key,
    }
    copy = tmp_path / "copy.txt"
    copy.write_text(path.read_text())
    keys["other path"] = load_packed(cfg_for(copy), cache).cache_key
    path.write_text(path.read_text() + "one more line\n")
    keys["edited file"] = load_packed(cfg_for(path), cache).cache_key
    assert base not in keys.values() and len(set(keys.values())) == len(keys)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted([base, *keys.values()])
    # A cap on what a run reads, or the worker count, share the one cache of the source.
    capped = load_packed(cfg_for(copy, max_tokens=5000), cache)
    assert capped.cache_key == load_packed(cfg_for(copy, workers=1), cache).cache_key == keys["other path"]
    assert len(capped.train) + len(capped.val) == 5000 // 32


def test_broken_cache_is_rebuilt_and_failed_build_leaves_nothing(txt, tmp_path, monkeypatch):
    cfg, cache = cfg_for(txt[0]), tmp_path / "cache"
    good = load_packed(cfg, cache)
    key, expected_val = good.cache_key, np.array(good.val)
    del good  # drop the memmap before truncating its file
    (cache / key / "val.bin").write_bytes(b"\0" * 10)  # truncated: must not read as valid
    rebuilt = load_packed(cfg, cache)
    np.testing.assert_array_equal(rebuilt.val, expected_val)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.cache.TokenCache, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_packed(cfg_for(txt[0], seq_len=7), cache)
    assert sorted(p.name for p in cache.iterdir() if p.name not in (".hf-datasets", ".locks")) == [key]


# --------------------------------------------------------------------------- errors


def error_of(fn, *args) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_sources(tmp_path):
    missing = tmp_path / "nope.txt"
    assert str(missing) in error_of(load_packed, cfg_for(missing), tmp_path / "c")
    folder = tmp_path / "no_such_folder"
    assert str(folder) in error_of(load_packed, cfg_for(folder), tmp_path / "c")
    assert "builtin:nope" in error_of(load_packed, cfg_for("builtin:nope"), tmp_path / "c")


def test_folder_without_supported_files(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.md").write_text("hi\n")
    message = error_of(load_packed, cfg_for(folder), tmp_path / "c")
    assert str(folder) in message and "no" in message


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    assert str(path) in error_of(load_packed, cfg_for(path), tmp_path / "c")


def test_source_too_small(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("hello\n")  # 5 bytes + eos = 6 tokens
    message = error_of(load_packed, cfg_for(path, seq_len=31), tmp_path / "c")
    assert str(path) in message and "6 tokens" in message and "seq_len 31" in message
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".partial")]


def test_unknown_text_field(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    message = error_of(load_packed, cfg_for(path, text_field="text"), tmp_path / "c")
    assert str(path) in message and "'text'" in message and "body" in message


def test_tokenizer_errors(tmp_path):
    missing = tmp_path / "tok.json"
    assert str(missing) in error_of(load_tokenizer, str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert str(broken) in error_of(load_tokenizer, str(broken))
    assert str(tmp_path) in error_of(load_tokenizer, str(tmp_path))  # a folder without tokenizer.json
    assert "builtin:nope" in error_of(load_tokenizer, "builtin:nope")
    path = tmp_path / "x.txt"
    path.write_text("hello\n")
    assert str(missing) in error_of(load_packed, cfg_for(path, tokenizer=str(missing)), tmp_path / "c")


def test_bad_config():
    for kw in ({"seq_len": 0}, {"val_fraction": 0.0}, {"val_fraction": 1.0}, {"max_tokens": 0}):
        with pytest.raises(DataError):
            DataConfig(**kw)


def test_hub_failures_name_the_id(tmp_path):
    # The Hub cannot be reached here; offline mode makes that fail at once instead of retrying.
    script = (
        "import sys\n"
        "from harness.data import DataConfig, DataError, load_packed, load_tokenizer\n"
        "for call in (lambda: load_tokenizer('nobody/no-such-tokenizer'),\n"
        "             lambda: load_packed(DataConfig(source='nobody/no-such-data', tokenizer='bytes'),\n"
        "                                 sys.argv[1])):\n"
        "    try:\n"
        "        call()\n"
        "    except DataError as e:\n"
        "        print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("cannot load")]
    assert len(lines) == 2, out.stdout + out.stderr
    assert "'nobody/no-such-tokenizer'" in lines[0] and "Hugging Face Hub" in lines[0]
    assert "'nobody/no-such-data'" in lines[1] and "split 'train'" in lines[1]
