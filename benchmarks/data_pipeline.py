"""Data preparation throughput: tokens/s for 1 and N tokenizing workers, and the per-core rate.

    python benchmarks/data_pipeline.py                     # >= 50M tokens, workers 1 and 2
    python benchmarks/data_pipeline.py --tokens 5e6        # a quick look
    python benchmarks/data_pipeline.py --workers 1,2,4     # on a larger machine

The text is local and generated: the shipped King James Bible (``builtin:kjv``, 1,189
chapter documents) repeated in a fresh seeded order each pass until it holds ``--tokens``
tokens of the shipped BPE tokenizer, written as several ``.txt`` files in a temporary folder.
Each worker count prepares the whole source through ``load_packed`` (reading with
``datasets``, shards, workers, ordered appends: the real path) into its own fresh cache.

Correctness first: every worker count must write byte-identical ``train.bin``/``val.bin``,
and the first blocks must equal the documents tokenized directly. Then it prints the
command, the machine (with its load average: other work skews every figure), the figures,
the speed-up over one worker, the per-core rate, and the main process's reading rate, which
bounds what any number of workers can reach. It never asserts a time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data import BUILTIN_FILES, DataConfig, load_packed, load_tokenizer, val_block_mask
from harness.data.prepare import encode
from harness.data.source import iter_documents, open_datasets, resolve_source

SEQ_LEN = 2048
FILES = 8


def write_corpus(folder: Path, tokens: int) -> tuple[int, int]:
    """Seeded permutations of the KJV chapters until ``tokens`` tokens; returns (documents, characters)."""
    chapters = [ln for ln in BUILTIN_FILES["builtin:kjv"].read_text().splitlines() if ln.strip()]
    tokenizer = load_tokenizer("builtin:kjv")
    per_pass = sum(len(ids) + 1 for ids in tokenizer.encode_batch(chapters))
    passes = -(-tokens // per_pass)
    rng = np.random.default_rng(0)
    docs = chars = 0
    for f in range(FILES):
        with open(folder / f"part-{f:02d}.txt", "w") as out:
            for _ in range(passes * (f + 1) // FILES - passes * f // FILES):
                lines = [chapters[i] for i in rng.permutation(len(chapters))]
                text = "\n".join(lines) + "\n"
                out.write(text)
                docs, chars = docs + len(lines), chars + len(text)
    return docs, chars


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("train.bin", "val.bin"):
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def reading_rate(source: Path) -> tuple[float, int]:
    """Characters per second the main process reads documents at (no tokenizing)."""
    src = resolve_source(str(source))
    with tempfile.TemporaryDirectory() as hf_cache:
        batches = iter_documents(open_datasets(src, "train", Path(hf_cache)), src, "text")
        next(batches)  # the start-up (finding files, imports) is paid once, not per token
        start, chars = time.perf_counter(), 0
        for texts in batches:
            chars += sum(map(len, texts))
        return chars / (time.perf_counter() - start), chars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=float, default=50e6, help="tokens of generated text (default 50M)")
    ap.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    if 1 not in counts:
        ap.error("--workers must include 1, the baseline")
    # Here, not at the top: the spawned workers import this module and need no torch.
    import torch

    from harness.measure.environment import machine_summary

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("machine:", machine_summary(torch.device("cpu")))

    work = Path(tempfile.mkdtemp(prefix="mixbench-data-bench-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        docs, chars = write_corpus(corpus, int(args.tokens))
        print(f"source: {FILES} .txt files, {docs:,} documents, {chars / 1e6:.0f}M characters (KJV chapters, permuted)")

        rows, digests = [], {}
        for w in counts:
            cfg = DataConfig(source=str(corpus), tokenizer="builtin:kjv", seq_len=SEQ_LEN, workers=w)
            load_before, cpu_before = os.getloadavg()[0], cpu_seconds()
            start = time.perf_counter()
            packed = load_packed(cfg, work / f"cache-{w}")
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_before
            folder = work / f"cache-{w}" / packed.cache_key
            tokens = (len(packed.train) + len(packed.val)) * (SEQ_LEN + 1)
            digests[w] = digest(folder)
            rows.append((w, tokens, seconds, cpu, load_before, os.getloadavg()[0]))
            if w == counts[0]:  # the first block is the first documents' tokens, each followed by eos
                with open(next(p for p in sorted(corpus.glob("*.txt")) if p.stat().st_size)) as f:
                    first = [f.readline().rstrip("\n") for _ in range(50)]
                want = encode(packed.tokenizer, first, np.dtype(np.uint16))[: SEQ_LEN + 1]
                got = packed.val[0] if val_block_mask(1, cfg.val_fraction)[0] else packed.train[0]
                assert np.array_equal(np.asarray(got), want), "first block differs from direct tokenization"
            shutil.rmtree(work / f"cache-{w}")
        assert len(set(digests.values())) == 1, f"caches differ by worker count: {digests}"
        print(
            f"correctness: caches byte-identical for workers {counts} (sha256 {digests[counts[0]]}), "
            "first block equals direct tokenization"
        )

        read_chars_per_s, _ = reading_rate(corpus)
        print()
        print(
            "| workers | tokens | wall s | tokens/s | speed-up | CPU s (all processes) | tokens per CPU-s | load avg before/after |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---|")
        rows.sort()  # timed in the order given (--workers 2,1 shows how the load drifts), shown by workers
        base, base_cpu = rows[0][1] / rows[0][2], rows[0][1] / rows[0][3]
        for w, tokens, seconds, cpu, lb, la in rows:
            rate = tokens / seconds
            print(
                f"| {w} | {tokens / 1e6:.1f}M | {seconds:.1f} | {rate / 1e6:.3f}M | {rate / base:.2f}x "
                f"| {cpu:.1f} | {tokens / cpu / 1e6:.3f}M | {lb:.1f} / {la:.1f} |"
            )
        tokens_per_char = rows[0][1] / chars
        reader = read_chars_per_s * tokens_per_char
        print()
        print("On a loaded machine wall-clock speed-ups mean little; CPU-seconds depend less on the load:")
        for w, tokens, seconds, cpu, _, _ in rows[1:]:
            print(
                f"  {w} workers spend {cpu / rows[0][3]:.2f}x the CPU of 1 worker: on {w} idle cores, "
                f"about {w * rows[0][3] / cpu:.2f}x the speed of 1 worker"
            )
        print(
            f"per-core rate (1 worker, tokens per CPU-second): {base_cpu / 1e6:.3f}M tokens/s "
            f"(wall-clock on this loaded machine: {base / 1e6:.3f}M)"
        )
        base = base_cpu
        print(
            f"main-process reading rate: {read_chars_per_s / 1e6:.1f}M chars/s = about {reader / 1e6:.1f}M tokens/s, "
            "the ceiling for any worker count"
        )
        print(
            f"a 64-core node, predicted: min(64 x {base / 1e6:.3f}M, {reader / 1e6:.1f}M) = "
            f"{min(64 * base, reader) / 1e6:.1f}M tokens/s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
