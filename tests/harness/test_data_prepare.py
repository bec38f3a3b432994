"""Budget-sized, parallel, resumable preparation of the token cache, and its bad inputs."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from processes import alive, descendants, needs_proc, wait_for

from harness import data
from harness.data import BYTE_TOKENIZER, DataConfig, DataError, DataNeed, load_packed, prepare, val_block_mask
from harness.data import cache as cache_module

REPO = Path(__file__).resolve().parents[2]


def documents(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghij klmnopqrstuvwxyz"))
    return [f"doc {i}: " + "".join(rng.choice(letters, int(rng.integers(20, 120)))).strip() for i in range(n)]


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[str]]:
    """A multi-file local source (two .txt files and a .jsonl), and its documents in reading order."""
    docs = documents(900)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(docs[:300]) + "\n")
    (folder / "b.txt").write_text("\n".join(docs[300:600]) + "\n")
    (folder / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[600:]))
    return folder, docs


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of a few documents and a worker for any work, so that tiny sources take many shards."""
    monkeypatch.setattr(prepare, "SHARD_CHARS", 2000)
    monkeypatch.setattr(prepare, "MIN_SHARD_CHARS", 2000)
    monkeypatch.setattr(prepare, "MIN_TOKENS_PER_WORKER", 1)


def cfg_for(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **{"tokenizer": BYTE_TOKENIZER, "seq_len": 31, **kw})


def files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("train.bin", "val.bin")}


def state(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


def stream(docs: list[str]) -> np.ndarray:
    return np.array([t for d in docs for t in [*d.encode("utf-8"), 256]], dtype=np.int64)


class CountingBytes(data.ByteTokenizer):
    """Counts the documents it tokenizes (in this process)."""

    seen = 0

    def encode_batch(self, texts):
        CountingBytes.seen += len(texts)
        return super().encode_batch(texts)


@pytest.fixture
def counting(monkeypatch):
    CountingBytes.seen = 0
    monkeypatch.setattr(data.packed, "load_tokenizer", lambda spec: CountingBytes())
    return CountingBytes


# --------------------------------------------------------------------------- parallel and identical


def test_one_and_two_workers_write_byte_identical_caches(corpus, tmp_path, small_shards):
    folder, docs = corpus
    one = load_packed(cfg_for(folder, workers=1), tmp_path / "one")
    two = load_packed(cfg_for(folder, workers=2), tmp_path / "two")
    assert one.cache_key == two.cache_key
    a, b = tmp_path / "one" / one.cache_key, tmp_path / "two" / two.cache_key
    assert files(a) == files(b) and state(a) == state(b)
    assert state(a)["exhausted"] and state(a)["docs"] == len(docs)
    assert not (b / "shards").exists()  # shard files are joined and removed
    # and it is the documents' stream, cut into blocks, on the sides the hash gives
    n = len(one.train) + len(one.val)
    mask = val_block_mask(n, 0.05)
    blocks = stream(docs)[: n * 32].reshape(n, 32)
    np.testing.assert_array_equal(one.train, blocks[~mask])
    np.testing.assert_array_equal(one.val, blocks[mask])


# --------------------------------------------------------------------------- budget, prefix, extension


def test_cells_with_different_budgets_tokenize_once_and_the_smaller_reads_a_prefix(
    corpus, tmp_path, counting, small_shards
):
    folder, docs = corpus
    cfg, cache = cfg_for(folder, workers=1), tmp_path / "cache"
    small, large = DataNeed(train_tokens=31 * 40, val_sequences=3), DataNeed(train_tokens=31 * 200, val_sequences=6)
    suite_need = small.union(large)
    first = load_packed(cfg, cache, need=large, prepare=suite_need)
    tokenized = counting.seen
    assert 0 < tokenized < len(docs)  # budget-sized: not the whole source
    second = load_packed(cfg, cache, need=small, prepare=suite_need)
    assert counting.seen == tokenized  # read from the cache, nothing tokenized again
    assert (len(first.train), len(first.val), len(second.train), len(second.val)) == (200, 6, 40, 3)
    np.testing.assert_array_equal(second.train, first.train[:40])
    np.testing.assert_array_equal(second.val, first.val[:3])


def test_a_larger_need_extends_the_cache_by_appending(corpus, tmp_path, counting, small_shards):
    folder, docs = corpus
    cfg, cache = cfg_for(folder, workers=1), tmp_path / "cache"
    small = load_packed(cfg, cache, need=DataNeed(31 * 30, 2))
    key_folder = cache / small.cache_key
    before, docs_before = files(key_folder), state(key_folder)["docs"]
    counting.seen = 0
    large = load_packed(cfg, cache, need=DataNeed(31 * 400, 12))
    after = files(key_folder)
    assert all(after[name].startswith(before[name]) and len(after[name]) > len(before[name]) for name in after)
    assert counting.seen == state(key_folder)["docs"] - docs_before  # only the new documents
    whole = load_packed(cfg, tmp_path / "fresh", need=DataNeed(31 * 400, 12))  # grown == built in one go
    np.testing.assert_array_equal(large.train, whole.train)
    np.testing.assert_array_equal(large.val, whole.val)


def test_a_need_beyond_the_source_reads_all_of_it(corpus, tmp_path, small_shards):
    folder, docs = corpus
    packed = load_packed(cfg_for(folder, workers=1), tmp_path / "c", need=DataNeed(10**9, 10**6))
    whole = load_packed(cfg_for(folder, workers=1), tmp_path / "c")
    assert len(packed.train) == len(whole.train) and len(packed.val) == len(whole.val)


# --------------------------------------------------------------------------- resumable


def test_sigkill_mid_preparation_then_rerun_gives_the_uninterrupted_cache(corpus, tmp_path, counting):
    folder, docs = corpus
    cache = tmp_path / "killed"
    script = (
        "import sys, time\n"
        "from harness import data\n"
        "from harness.data import prepare\n"
        "prepare.SHARD_CHARS = prepare.MIN_SHARD_CHARS = 2000\n"
        "slow = data.ByteTokenizer.encode_batch\n"
        "data.ByteTokenizer.encode_batch = lambda self, texts: (time.sleep(0.2), slow(self, texts))[1]\n"
        "data.load_packed(data.DataConfig(source=sys.argv[1], tokenizer='bytes', seq_len=31, workers=1), sys.argv[2])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(folder), str(cache)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    states = []
    while time.monotonic() < deadline and proc.poll() is None:
        states = list(cache.glob("*/state.json"))
        if states and json.loads(states[0].read_text())["docs"] >= 60:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = state(states[0].parent)
    assert not killed["exhausted"] and 0 < killed["docs"] < len(docs)

    counting.seen = 0
    resumed = load_packed(cfg_for(folder, workers=1), cache)
    assert counting.seen == len(docs) - killed["docs"]  # went on from the last committed shard
    whole = load_packed(cfg_for(folder, workers=1), tmp_path / "whole")
    assert files(cache / resumed.cache_key) == files(tmp_path / "whole" / whole.cache_key)


def test_an_append_that_did_not_commit_is_never_read_and_is_redone(corpus, tmp_path, monkeypatch, small_shards):
    folder, _ = corpus
    cfg, cache = cfg_for(folder, workers=1), tmp_path / "cache"
    commits = 0
    commit = cache_module.TokenCache._commit

    def dies_on_the_fourth(self):
        nonlocal commits
        commits += 1
        if commits == 4:  # blocks appended to the files, state not yet replaced
            raise KeyboardInterrupt
        commit(self)

    monkeypatch.setattr(cache_module.TokenCache, "_commit", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        load_packed(cfg, cache)
    [folder_] = [p for p in cache.iterdir() if not p.name.startswith(".")]
    half = cache_module.TokenCache.read(folder_, folder_.name)
    assert half is not None and not half.exhausted and half.n_blocks > 0
    assert half.array("train").shape[0] == state(folder_)["train_blocks"]  # only committed blocks are mapped
    monkeypatch.setattr(cache_module.TokenCache, "_commit", commit)
    redone = load_packed(cfg, cache)
    whole = load_packed(cfg, tmp_path / "whole")
    assert files(cache / redone.cache_key) == files(tmp_path / "whole" / whole.cache_key)


# --------------------------------------------------------------------------- bad input


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_disk_full_is_one_line_and_leaves_the_committed_cache(corpus, tmp_path, monkeypatch, small_shards):
    folder, _ = corpus
    cfg, cache = cfg_for(folder, workers=1), tmp_path / "cache"
    appends = 0

    class FullDisk:
        """``open`` in the cache module: the third append writes half its bytes, then ENOSPC."""

        def __init__(self, path, mode="r", *args, **kw):
            nonlocal appends
            self.f = open(path, mode, *args, **kw)
            self.full = mode == "ab" and (appends := appends + 1) == 3

        def write(self, payload):
            if self.full:
                self.f.write(payload[: len(payload) // 2])
                self.f.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(payload)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(cache_module, "open", FullDisk, raising=False)
    message = error_of(load_packed, cfg, cache)
    assert "disk full" in message and str(cache) in message
    [folder_] = [p for p in cache.iterdir() if not p.name.startswith(".")]
    kept = state(folder_)
    assert kept["docs"] > 0 and not kept["exhausted"]
    for side in ("train", "val"):  # the half-written append was cut off
        assert (folder_ / f"{side}.bin").stat().st_size == kept[f"{side}_blocks"] * 32 * 2
    monkeypatch.setattr(cache_module, "open", open)
    resumed = load_packed(cfg, cache)  # space again: goes on
    whole = load_packed(cfg, tmp_path / "whole")
    assert files(cache / resumed.cache_key) == files(tmp_path / "whole" / whole.cache_key)


def test_missing_text_field_in_a_worker_run_leaves_no_cache(tmp_path, small_shards):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in documents(50)))
    message = error_of(load_packed, cfg_for(path, workers=2), tmp_path / "c")
    assert str(path) in message and "'text'" in message
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")] == []


def test_vocab_size_that_differs_from_the_tokenizer_is_refused_before_reading(corpus, tmp_path):
    folder, _ = corpus
    message = error_of(load_packed, cfg_for(folder, vocab_size=32000), tmp_path / "c")
    assert "32000" in message and "257" in message and "'bytes'" in message
    assert not (tmp_path / "c").exists()


def test_missing_source_or_val_source_is_one_line(corpus, tmp_path):
    missing = tmp_path / "nowhere"
    assert str(missing) in error_of(load_packed, cfg_for(missing), tmp_path / "c")
    assert str(missing) in error_of(load_packed, cfg_for(corpus[0], val_source=str(missing)), tmp_path / "c")
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- the source's own validation split


def test_val_source_gives_validation_and_training_keeps_every_block(corpus, tmp_path):
    folder, docs = corpus
    val_docs = documents(120, seed=1)
    val_path = tmp_path / "val.txt"
    val_path.write_text("\n".join(val_docs) + "\n")
    cfg = cfg_for(folder, val_source=str(val_path), workers=1)
    packed = load_packed(cfg, tmp_path / "c", need=DataNeed(31 * 50, 5))
    assert len(packed.train) == 50 and len(packed.val) == 5  # capped by the run's validation sequences
    np.testing.assert_array_equal(packed.train, stream(docs)[: 50 * 32].reshape(50, 32))
    np.testing.assert_array_equal(packed.val, stream(val_docs)[: 5 * 32].reshape(5, 32))
    whole = load_packed(cfg, tmp_path / "c")  # no need: all of both
    assert len(whole.train) == len(stream(docs)) // 32 and len(whole.val) == len(stream(val_docs)) // 32


def test_val_split_the_source_lacks_is_one_line(corpus, tmp_path):
    folder, _ = corpus
    message = error_of(load_packed, cfg_for(folder, val_split="validation"), tmp_path / "c")
    assert "'validation'" in message and str(folder) in message and "val_split" in message
    assert not [p for p in tmp_path.glob("c/*") if not p.name.startswith(".")]


# --------------------------------------------------------------------------- no orphans, one preparer


PREPARE_SCRIPT = (  # a preparation a person started at a terminal, so it takes Ctrl-C (even when
    # pytest itself was started with SIGINT ignored, as a background job of a script is)
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from harness import data\n"
    "from harness.data import prepare\n"
    "from processes import SlowBytes\n"
    "prepare.SHARD_CHARS = prepare.MIN_SHARD_CHARS = 2000\n"
    "prepare.MIN_TOKENS_PER_WORKER = 1\n"
    "data.packed.load_tokenizer = lambda spec: SlowBytes()\n"
    "data.load_packed(data.DataConfig(source=sys.argv[1], tokenizer='bytes', seq_len=31, workers=int(sys.argv[3])),"
    " sys.argv[2])\n"
)


def start_preparing(folder: Path, cache: Path, workers: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{Path(__file__).parent}"}
    return subprocess.Popen(
        [sys.executable, "-c", PREPARE_SCRIPT, str(folder), str(cache), str(workers)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@needs_proc
@pytest.mark.parametrize("stop", ["kill -9", "Ctrl-C"])
def test_stopping_a_preparation_leaves_no_worker_running(corpus, tmp_path, stop):
    """kill -9 of the preparing process, or Ctrl-C (SIGINT to its whole process group, as a terminal sends it)."""
    proc = start_preparing(corpus[0], tmp_path / "cache", workers=2)
    try:
        wait_for(lambda: len(descendants(proc.pid)) >= 2 or proc.poll() is not None, 120, "the pool never started")
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        started = descendants(proc.pid)  # the 2 workers and multiprocessing's resource tracker
        if stop == "kill -9":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        wait_for(lambda: not any(alive(p) for p in started), 30, f"left running: {[p for p in started if alive(p)]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if stop == "Ctrl-C":
        assert "KeyboardInterrupt" in proc.stderr.read()


def waiting_for_a_lock(pid: int) -> bool:
    """``pid`` is blocked on a file lock (a ``->`` line of /proc/locks names the waiters)."""
    return any(" -> " in f" {ln} " and f" {pid} " in ln for ln in Path("/proc/locks").read_text().splitlines())


@needs_proc
def test_two_runners_on_one_cold_cache_prepare_it_once(corpus, tmp_path):
    """Both start while the cache is cold and locked; one prepares, the other waits and reads the same cache."""
    folder, docs = corpus
    whole = load_packed(cfg_for(folder, workers=1), tmp_path / "whole")  # the reference, and the cache's key
    cache = tmp_path / "shared"
    with cache_module.preparing(cache / ".locks", whole.cache_key):  # held: both runners meet a cold, busy cache
        runners = [start_preparing(folder, cache, workers=1) for _ in range(2)]
        wait_for(
            lambda: all(r.poll() is not None or waiting_for_a_lock(r.pid) for r in runners),
            120,
            "the runners never queued on the lock",
        )
    outs = [r.communicate(timeout=240) for r in runners]
    assert [r.returncode for r in runners] == [0, 0], outs
    assert sum("waiting: another process is preparing" in err for _, err in outs) == 2, "both met the held lock"
    assert sum("tokenizing" in out + err for out, err in outs) == 1, "one of them prepared, the other found it ready"
    assert files(cache / whole.cache_key) == files(tmp_path / "whole" / whole.cache_key)
    assert state(cache / whole.cache_key)["docs"] == len(docs)


def test_the_worker_cap_says_why_fewer_workers_run():
    assert prepare.worker_note(2, 1) == "2 workers asked, 1 used: under 1M tokens of work"
    assert prepare.worker_note(8, 3) == "8 workers asked, 3 used: under 3M tokens of work"
    assert prepare.worker_note(4, 4) == "4 workers" and prepare.worker_note(1, 1) == "1 worker"
