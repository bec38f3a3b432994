"""Our blocks against ``transformers`` on a published checkpoint: the same logits on a fixed text?

    python scripts/hf_parity.py state-spaces/mamba-130m-hf            # needs the Hub (or its cache)
    python scripts/hf_parity.py path/to/hf-folder --tokens 256

The checkpoint is mapped onto our model exactly as ``mixbench import`` maps it
(``models.hf_format``) and loaded by ``transformers``' ``AutoModelForCausalLM``; both run in
float32 on the CPU over the first ``--tokens`` tokens of the shipped King James text, tokenized
with the checkpoint's own tokenizer. Printed: the command, the machine, the largest logit
difference against the largest logit, how often the two agree on the next token, and each
model's perplexity on the text. Nothing is asserted: this is a measurement.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.data import load_tokenizer
from harness.data.common import CORPUS_DIR
from harness.interop.hf_io import read_folder, resolve_source
from models import build
from models.hf_format import import_transformers, load_into, spec_from_config


def measure(source: str, tokens: int, revision: str | None = None) -> dict[str, float]:
    """The figures for ``source`` over ``tokens`` tokens of the shipped text."""
    folder, resolved = resolve_source(source, revision)
    config, tensors = read_folder(folder)
    ours = build(spec_from_config(config, "parity"))
    load_into(ours, tensors)
    transformers = import_transformers()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = load_tokenizer(str(folder))
    text = (CORPUS_DIR / "kjv.txt").read_text()[: 20 * tokens]
    ids = torch.tensor([tokenizer.encode(text)[:tokens]])
    with torch.no_grad():
        a, b = ours.eval()(ids), theirs.eval()(ids).logits
    diff = (a - b).abs()

    def ppl(logits: torch.Tensor) -> float:
        return math.exp(F.cross_entropy(logits[0, :-1], ids[0, 1:]).item())

    return {
        "revision": resolved,
        "tokens": ids.shape[1],
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "max_abs_logit": b.abs().max().item(),
        "argmax_agreement": (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
        "ppl_ours": ppl(a),
        "ppl_transformers": ppl(b),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a Hub id or a local Hugging Face folder (Llama, Mamba, Mamba-2)")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--revision")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    figures = measure(args.source, args.tokens, args.revision)
    print("command:", "python scripts/hf_parity.py", *(argv if argv is not None else sys.argv[1:]))
    print(
        f"machine: {platform.platform()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; float32 on CPU"
    )
    print(f"source: {args.source} @ {figures['revision']}, {figures['tokens']} tokens of the shipped KJV text")
    print(
        f"max |ours - transformers| = {figures['max_abs_diff']:.3g} (max |logit| {figures['max_abs_logit']:.3g}, "
        f"ratio {figures['max_abs_diff'] / figures['max_abs_logit']:.3g}); mean {figures['mean_abs_diff']:.3g}"
    )
    print(f"next-token argmax agreement: {100 * figures['argmax_agreement']:.2f}%")
    print(f"perplexity on the text: ours {figures['ppl_ours']:.4f}, transformers {figures['ppl_transformers']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
