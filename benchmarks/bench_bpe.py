"""Byte-level BPE training and encoding speed: course_lib.tokenizers against the Rust
`tokenizers` library, on the whole course corpus (all plays), vocabulary 1000.

Both sides get the same text and the same target vocabulary; `tokenizers` uses its
ByteLevel pre-tokenizer (GPT-2's regular expression) and trainer. Their merges may differ
where counts tie (each library breaks ties its own way); the script prints how many of
the first 100 merges agree. Targets: training within 5x of `tokenizers`, encoding within
2x. Nothing is asserted about speed; the ratios are printed.

    python benchmarks/bench_bpe.py            # all plays, vocab 1000
    python benchmarks/bench_bpe.py --quick    # three plays, vocab 400 (a smoke test)
"""

from __future__ import annotations

import argparse
import os
import time

from course_lib.data import load_plays
from course_lib.tokenizers import BPETokenizer


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=1000, help="target vocabulary size")
    parser.add_argument("--quick", action="store_true", help="three plays, vocab 400")
    args = parser.parse_args()
    plays = load_plays()[:3] if args.quick else load_plays()
    vocab_size = 400 if args.quick else args.vocab_size
    text = "\n".join(p.text for p in plays)
    print(f"machine: {os.cpu_count()} cores; text: {len(plays)} plays, {len(text):,} characters, "
          f"{len(text.encode('utf-8')):,} bytes; vocab {vocab_size}")

    ours, ours_train = timed(lambda: BPETokenizer.train(text, vocab_size))
    ours_ids, ours_encode = timed(lambda: ours.encode(text))
    assert ours.decode(ours_ids) == text, "course_lib round trip failed"

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def rust_train():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([text], trainer=trainer)
        return tok

    rust, rust_train_s = timed(rust_train)
    rust_ids, rust_encode = timed(lambda: rust.encode(text).ids)

    print(f"training   course_lib {ours_train:7.2f} s   tokenizers {rust_train_s:7.2f} s   "
          f"ratio {ours_train / rust_train_s:5.2f}x (target <= 5x)")
    print(f"encoding   course_lib {ours_encode:7.2f} s   tokenizers {rust_encode:7.2f} s   "
          f"ratio {ours_encode / rust_encode:5.2f}x (target <= 2x)")
    print(f"tokens     course_lib {len(ours_ids):,}   tokenizers {len(rust_ids):,}   "
          f"(characters per token: {len(text) / len(ours_ids):.2f} vs {len(text) / len(rust_ids):.2f})")
    # tokenizers writes bytes with GPT-2's printable byte map; map back to compare merges
    byte_of = {c: bytes([b]) for b, c in zip(range(256), _gpt2_bytes_to_unicode())}
    rust_merges = [tuple(b"".join(byte_of[c] for c in part) for part in m.split(" ", 1))
                   if isinstance(m, str) else tuple(b"".join(byte_of[c] for c in part) for part in m)
                   for m in _rust_merges(rust)]
    same = sum(a == b for a, b in zip(ours.merges[:100], rust_merges[:100]))
    print(f"first 100 merges identical: {same}")


def _gpt2_bytes_to_unicode() -> list[str]:
    """GPT-2's map from the 256 byte values to printable characters, by byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _rust_merges(tok) -> list:
    import json

    return json.loads(tok.to_str())["model"]["merges"]


if __name__ == "__main__":
    main()
