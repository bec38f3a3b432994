"""Build the offline corpus and tokenizer shipped in ``harness/corpus/``.

Source: the King James Version of the Bible (public domain) from Debian's ``bible-kjv``
package. Install it first (``apt-get install -y bible-kjv``), then run

    python scripts/build_corpus.py

It writes two files:

- ``harness/corpus/kjv.txt``: one chapter per line (1,189 lines), the verses of a chapter
  joined by single spaces, references stripped. Each line is one document.
- ``harness/corpus/tokenizer.json``: a byte-level BPE tokenizer (``tokenizers``) trained on
  that text, vocabulary 4,096 including the special ``<|endoftext|>`` (id 0).

Both outputs are deterministic: running the script again gives identical files.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "harness" / "corpus"

# A verse line from `bible -f`: book abbreviation (may start with a digit, e.g. "1Sa"),
# chapter, colon, verse, one space, text.  Example: "Ge1:1 In the beginning God ..."
VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.+)$")
EXPECTED = {"books": 66, "chapters": 1189, "verses": 31102}


def read_verses() -> list[str]:
    if shutil.which("bible") is None:
        sys.exit("the `bible` program is missing: apt-get install -y bible-kjv")
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def chapters_from_verses(lines: list[str]) -> list[str]:
    """Group verse lines into chapters, in order; each chapter is one line of text."""
    chapters: list[list[str]] = []
    books: list[str] = []
    current = None
    for n, line in enumerate(lines, 1):
        m = VERSE.match(line)
        if m is None:
            raise ValueError(f"line {n} is not a verse: {line!r}")
        book, chapter, _verse, text = m.groups()
        if (book, chapter) != current:
            current = (book, chapter)
            chapters.append([])
            if not books or books[-1] != book:
                books.append(book)
        chapters[-1].append(" ".join(text.split()))
    counts = {"books": len(books), "chapters": len(chapters), "verses": len(lines)}
    if counts != EXPECTED:
        raise ValueError(f"unexpected shape of the text: {counts}, expected {EXPECTED}")
    return [" ".join(verses) for verses in chapters]


def train_tokenizer(docs: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args()

    docs = chapters_from_verses(read_verses())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    corpus = args.out_dir / "kjv.txt"
    corpus.write_text("".join(d + "\n" for d in docs), encoding="utf-8")

    tok = train_tokenizer(docs, args.vocab_size)
    assert tok.token_to_id(EOS_TOKEN) == 0
    tok_path = args.out_dir / "tokenizer.json"
    tok.save(str(tok_path), pretty=True)

    n_tokens = sum(len(e.ids) for e in tok.encode_batch(docs))
    print(f"{corpus}: {len(docs)} lines, {corpus.stat().st_size:,} bytes")
    print(
        f"{tok_path}: vocab {tok.get_vocab_size():,}, {n_tokens:,} tokens in the corpus "
        f"(+{len(docs):,} end-of-text tokens when packed)"
    )


if __name__ == "__main__":
    main()
