"""Text-encoder extraction: embedlab's ``extract`` against calling sentence-transformers directly, in one run.

    python benchmarks/text_encoding.py --n 2000 --rounds 3 --threads 2 --out docs/results/text-encoding/cost.json

The encoder has MiniLM-L6's shape (BERT, 6 layers, width 384, 12 heads, mean pooling), randomly initialised and
saved with ``SentenceTransformer.save`` (no download; the cost of a forward pass does not depend on the weights'
values). The texts are ``--n`` seeded random sequences of 4 to 120 words of its vocabulary, so lengths vary as in
real data and padding matters. Variants, alternating within each round (medians compared):

- ``st.encode``: ``SentenceTransformer.encode(texts)`` with its defaults (batch 32, sorted by length), the call a
  user would write;
- ``embedlab``: ``embedlab.store.extract`` over the text dataset, as ``embedlab analyze`` runs it (DataLoader
  chunks of 512, the encoder's ``encode`` inside, embeddings streamed to memory-mapped ``.npy`` files).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_encoder(folder: Path, layers: int, width: int, words: list[str]) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=width, num_hidden_layers=layers,
                         num_attention_heads=width // 32, intermediate_size=4 * width,
                         max_position_embeddings=512)).save_pretrained(folder / "bert")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder / "bert")
    SentenceTransformer(modules=[Transformer(str(folder / "bert"), max_seq_length=256),
                                 Pooling(width, "mean")]).save(str(folder / "st"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="texts to encode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--out", help="JSON file for the raw times")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from embedlab.external import load_sentence_encoder
    from embedlab.store import extract
    from embedlab.text import Texts

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(words, int(rng.integers(4, 121)))) for _ in range(a.n)]
    labels = rng.integers(0, 2, a.n)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_encoder(root, a.layers, a.width, words)
        encoder = load_sentence_encoder(root / "st", None)
        st = encoder.st
        data = Texts(texts, labels)

        def direct() -> np.ndarray:
            return st.encode(texts, show_progress_bar=False)

        def embedlab() -> np.ndarray:
            out = root / "cache"
            out.mkdir(exist_ok=True)
            return np.asarray(extract(encoder, data, out).embeddings)

        variants = {"st.encode": direct, "embedlab": embedlab}
        times: dict[str, list[float]] = {k: [] for k in variants}
        results: dict[str, np.ndarray] = {}
        for r in range(a.rounds):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
                  file=sys.stderr, flush=True)
        diff = float(np.abs(results["st.encode"] - results["embedlab"]).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"variant": k, "median_s": med[k], "texts_per_s": a.n / med[k], "times_s": times[k],
             "ratio_to_st_encode": med[k] / med["st.encode"]} for k in variants]
    env = {"n": a.n, "rounds": a.rounds, "threads": a.threads, "layers": a.layers, "width": a.width,
           "torch": torch.__version__, "max_abs_difference": diff}
    print(json.dumps({"env": env, "rows": rows}, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
