"""Build the tiny lm-eval tasks shipped in ``harness/lm_eval_tasks/`` from the shipped KJV corpus.

    python scripts/build_lm_eval_task.py

It writes two jsonl files, both deterministic (a rerun gives identical files):

- ``kjv_cloze.jsonl`` (task ``kjv_cloze``, multiple choice): 50 items, each the start of a
  sentence from a chapter of the King James Bible and four candidate next words: the word the
  text really continues with and three distractors. A distractor is a lowercase word of the
  corpus (four letters or more) whose corpus frequency is within a factor of two of the
  answer's, so word frequency alone does not give the answer away. The 50 chapters are spread
  evenly over the whole book. Fields: ``context``, ``choices`` (4 words), ``answer`` (index).
- ``kjv_passages.jsonl`` (task ``kjv_ppl``, rolling log-likelihood): 10 passages of 300 to 600
  characters (whole sentences) from chapters spread over the book. Field: ``text``.

The corpus is public domain (see ``harness/corpus/README.md``), and so are these files. The
items come from the same text the smoke suite trains on: they check that the lm-eval path
works end to end and that training helps, not how well a model knows English in general.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "harness" / "corpus" / "kjv.txt"
DEFAULT_OUT = ROOT / "harness" / "lm_eval_tasks"

N_CLOZE, N_PASSAGES, N_CHOICES = 50, 10, 4
MIN_WORD_LEN = 4  # answers and distractors: no "the", "and", "of"
FREQ_RANGE = (20, 3000)  # answers: neither one-off names nor the commonest words
CONTEXT_WORDS = (8, 24)  # the answer is the k-th word of its sentence, k in this range
PASSAGE_CHARS = (300, 600)
SEED = 0

WORD = re.compile(r"[A-Za-z]+")
# A sentence starts at the beginning of a chapter or after ". ", "? " or "! ".
SENTENCE = re.compile(r"[^.?!]+[.?!]")


def sentences(chapter: str) -> list[str]:
    return [s.strip() for s in SENTENCE.findall(chapter) if s.strip()]


def spread(n_items: int, n_lines: int, rng: random.Random) -> list[int]:
    """``n_items`` chapter indices, one from each of ``n_items`` equal slices of the book."""
    edges = [round(i * n_lines / n_items) for i in range(n_items + 1)]
    return [rng.randrange(lo, hi) for lo, hi in zip(edges, edges[1:])]


def cloze_items(chapters: list[str], rng: random.Random) -> list[dict]:
    freq = Counter(w for line in chapters for w in WORD.findall(line))
    pool = sorted(w for w, c in freq.items() if w.islower() and len(w) >= MIN_WORD_LEN)
    items, tried = [], set()
    starts = spread(N_CLOZE, len(chapters), rng)
    for start in starts:
        # the first chapter from ``start`` on that yields an item (every chapter does in practice)
        for idx in range(start, len(chapters)):
            if idx in tried:
                continue
            tried.add(idx)
            item = _cloze_from_chapter(chapters[idx], freq, pool, rng)
            if item is not None:
                items.append(item)
                break
    if len(items) != N_CLOZE:
        raise SystemExit(f"only {len(items)} cloze items could be built (wanted {N_CLOZE})")
    return items


def _cloze_from_chapter(chapter: str, freq: Counter, pool: list[str], rng: random.Random) -> dict | None:
    candidates = []  # (sentence, word match) pairs that make a fair item
    for sent in sentences(chapter):
        words = list(WORD.finditer(sent))
        for k in range(CONTEXT_WORDS[0], min(CONTEXT_WORDS[1], len(words))):
            w = words[k].group()
            if not (w.islower() and len(w) >= MIN_WORD_LEN and FREQ_RANGE[0] <= freq[w] <= FREQ_RANGE[1]):
                continue
            if sent[words[k].start() - 1] != " ":  # the word must follow a plain space
                continue
            candidates.append((sent, words[k]))
    if not candidates:
        return None
    sent, match = rng.choice(candidates)
    answer = match.group()
    similar = [w for w in pool if w != answer and freq[answer] / 2 <= freq[w] <= freq[answer] * 2]
    if len(similar) < N_CHOICES - 1:
        return None
    choices = rng.sample(similar, N_CHOICES - 1) + [answer]
    rng.shuffle(choices)
    return {"context": sent[: match.start()].rstrip(), "choices": choices, "answer": choices.index(answer)}


def passages(chapters: list[str], rng: random.Random) -> list[dict]:
    out = []
    for idx in spread(N_PASSAGES, len(chapters), rng):
        sents = sentences(chapters[idx])
        first = rng.randrange(max(1, len(sents) - 8))
        text = ""
        for s in sents[first:]:
            if len(text) + len(s) + 1 > PASSAGE_CHARS[1]:
                break
            text = f"{text} {s}" if text else s
            if len(text) >= PASSAGE_CHARS[0]:
                break
        if not PASSAGE_CHARS[0] <= len(text) <= PASSAGE_CHARS[1]:
            text = chapters[idx][: PASSAGE_CHARS[1]].rsplit(" ", 1)[0]  # a run-on chapter: cut at a space
        out.append({"text": text})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows))
    print(f"wrote {path} ({len(rows)} rows)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    chapters = [line for line in CORPUS.read_text().splitlines() if line.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "kjv_cloze.jsonl", cloze_items(chapters, random.Random(SEED)))
    write_jsonl(args.out / "kjv_passages.jsonl", passages(chapters, random.Random(SEED + 1)))


if __name__ == "__main__":
    main()
