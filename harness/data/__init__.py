"""Data: documents -> tokenizer -> packed token blocks in a budget-sized cache, memory-mapped.

- ``source``: where documents come from (shipped corpus, local files, Hub) and ``DataConfig``.
- ``tokenizer``: the tokenizers a suite can name.
- ``split``: which blocks are validation (a hash of the block index alone).
- ``cache``: one cache folder, grown only by appending committed shards.
- ``prepare``: parallel, resumable tokenization into a cache.
- ``packed``: what a run reads (``load_packed``), preparing what it lacks first.

Each document is tokenized without special tokens and followed by end-of-text; documents
are concatenated in source order and cut into non-overlapping blocks of ``seq_len + 1``
tokens (inputs ``block[:-1]``, targets ``block[1:]``).
"""

from harness.data.cache import FORMAT_VERSION, token_dtype
from harness.data.common import DataError
from harness.data.packed import DataNeed, PackedData, disk_bytes, load_packed
from harness.data.source import BUILTIN_FILES, BUILTIN_SOURCE, DataConfig
from harness.data.split import blocks_needed, count_val, val_block_mask
from harness.data.tokenizer import (
    BUILTIN_TOKENIZER,
    BUILTIN_TOKENIZER_FILES,
    BYTE_TOKENIZER,
    ByteTokenizer,
    HFTokenizer,
    TextTokenizer,
    TransformersTokenizer,
    load_tokenizer,
)

__all__ = [
    "BUILTIN_FILES",
    "BUILTIN_SOURCE",
    "BUILTIN_TOKENIZER",
    "BUILTIN_TOKENIZER_FILES",
    "BYTE_TOKENIZER",
    "FORMAT_VERSION",
    "ByteTokenizer",
    "DataConfig",
    "DataError",
    "DataNeed",
    "HFTokenizer",
    "PackedData",
    "TextTokenizer",
    "TransformersTokenizer",
    "blocks_needed",
    "count_val",
    "disk_bytes",
    "load_packed",
    "load_tokenizer",
    "token_dtype",
    "val_block_mask",
]
