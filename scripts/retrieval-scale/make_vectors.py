#!/usr/bin/env python3
"""Import form (NPY vectors + JSONL metadata) of a synthetic corpus, without embedding its filler.

`medprm index --import VECTORS.npy --metadata META.jsonl` loads the result into either backend
(`--backend embedded --out DIR` or `--backend postgres --database-url URL`). Rows, in the order of
the corpus written by make_corpus.py:

* a planted record (a section of the bundled guidelines): the chunks of that section as a built
  index holds them (`--planted-index`, an index built by `medprm index` whose corpus contains the
  planted sections, e.g. `medprm index --corpus <guidelines>`), with their real embeddings;
* a synthetic record: one chunk, its synthetic text as it is (so BM25 sees it), and a vector drawn
  from the multivariate Gaussian fitted to the planted chunks' embeddings (their mean and full
  covariance; sampled as mean + U sqrt(max(eigenvalue, 0)) z, z ~ N(0, I), from the eigen-
  decomposition of the covariance), then L2-normalised as the embedder's vectors are. numpy's
  PCG64 generator seeded with --seed; the same inputs and seed give the same file, byte for byte.

Also writes `--queries` (JSONL): query vectors for HNSW recall against exact search, not in the
corpus: --recall-queries fresh draws from the same Gaussian (a later stream of the generator) and
as many real planted-chunk embeddings, each perturbed by Gaussian noise of a quarter of the
embeddings' per-dimension spread and normalised (so a query is near, not on, a real chunk).

Needs numpy (the golden venv has it: `make golden-venv`). Streams: the matrix is written through a
memory map, a block of rows at a time.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

BLOCK = 65536


def read_index(index):
    """(chunks, [n, dim] f32 embeddings) of an index built by `medprm index`."""
    with open(index / "embeddings.safetensors", "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        t = header["embeddings"]
        if t["dtype"] != "F32" or len(t["shape"]) != 2:
            sys.exit(f"{index}: no f32 [chunks, dimension] tensor `embeddings`")
        begin, end = t["data_offsets"]
        f.seek(8 + n + begin)
        m = np.frombuffer(f.read(end - begin), dtype="<f4").reshape(t["shape"])
    chunks = [json.loads(l) for l in (index / "chunks.jsonl").open()]
    if len(chunks) != m.shape[0]:
        sys.exit(f"{index}: {len(chunks)} chunks but {m.shape[0]} embedding rows")
    return chunks, m


def section_of(chunk_id):
    return chunk_id.rsplit("#", 1)[0]


def raw_text(c):
    """The chunk's body: its rendered text without the `<title> -- <section>. ` prefix the
    importer puts back."""
    prefix = f"{c['title']} -- {c['section']}. " if c["section"] else f"{c['title']}. "
    if not c["text"].startswith(prefix):
        sys.exit(f"chunk {c['id']}: text does not start with its title and section")
    return c["text"][len(prefix):]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="JSONL corpus written by make_corpus.py")
    ap.add_argument("--planted-index", type=Path, required=True, help="index holding the planted sections' chunks")
    ap.add_argument("--vectors", type=Path, required=True, help=".npy f32 [rows, dim] to write")
    ap.add_argument("--metadata", type=Path, required=True, help="JSONL metadata to write, line i for row i")
    ap.add_argument("--queries", type=Path, required=True, help="JSONL recall query vectors to write")
    ap.add_argument("--recall-queries", type=int, default=100, help="queries of each kind")
    ap.add_argument("--seed", type=int, default=23)
    a = ap.parse_args()

    chunks, emb = read_index(a.planted_index)
    by_section = {}
    for i, c in enumerate(chunks):
        if not c["id"].startswith("synthetic/"):
            by_section.setdefault(section_of(c["id"]), []).append(i)
    real = np.concatenate([emb[ix] for ix in by_section.values()]).astype(np.float64)
    dim = real.shape[1]
    mean = real.mean(axis=0)
    cov = np.cov(real, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    basis = evecs * np.sqrt(np.clip(evals, 0, None))  # [dim, dim]: x = mean + basis @ z

    # First pass: rows in all, and that every planted record has its chunks.
    rows = 0
    planted_rows = 0
    with open(a.corpus) as f:
        for line in f:
            rid = json.loads(line)["id"]
            if rid.startswith("synthetic/"):
                rows += 1
            else:
                if rid not in by_section:
                    sys.exit(f"{a.planted_index}: no chunks of the planted section {rid}")
                rows += len(by_section[rid])
                planted_rows += len(by_section[rid])

    rng = np.random.default_rng(a.seed)
    a.vectors.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(a.vectors, mode="w+", dtype="<f4", shape=(rows, dim))
    pending = []  # (row, ) synthetic rows waiting for a block of vectors

    def flush():
        z = rng.standard_normal((len(pending), dim))
        x = mean + z @ basis.T
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[pending] = x.astype("<f4")
        pending.clear()

    row = 0
    with open(a.corpus) as f, open(a.metadata, "w") as meta:
        for line in f:
            r = json.loads(line)
            if r["id"].startswith("synthetic/"):
                text = "\n".join(p.strip() for p in r["content"].split("\n\n") if p.strip())
                rec = {"id": r["id"] + "#0", "title": r["title"], "section": r.get("section", ""), "text": text,
                       "guideline": r["id"], "source": r.get("source", r["id"])}
                meta.write(json.dumps(rec, ensure_ascii=False) + "\n")
                pending.append(row)
                row += 1
                if len(pending) == BLOCK:
                    flush()
            else:
                for i in by_section[r["id"]]:
                    c = chunks[i]
                    rec = {k: c[k] for k in ("id", "title", "section", "guideline", "source", "organisation", "year", "doi")}
                    rec["text"] = raw_text(c)
                    meta.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    out[row] = emb[i]
                    row += 1
    if pending:
        flush()
    out.flush()
    del out

    # Recall queries: fresh Gaussian draws, and perturbed real embeddings.
    q = []
    z = rng.standard_normal((a.recall_queries, dim))
    x = mean + z @ basis.T
    q += [("gaussian", v) for v in x]
    pick = rng.choice(real.shape[0], size=min(a.recall_queries, real.shape[0]), replace=False)
    noise = rng.standard_normal((len(pick), dim)) * real.std(axis=0) * 0.25
    q += [("near_planted", v) for v in real[pick] + noise]
    with open(a.queries, "w") as f:
        for kind, v in q:
            v = v / np.linalg.norm(v)
            f.write(json.dumps({"kind": kind, "vector": [round(float(t), 7) for t in v]}) + "\n")

    how = {
        "planted_rows": planted_rows,
        "synthetic_rows": rows - planted_rows,
        "fitted_on": int(real.shape[0]),
        "seed": a.seed,
        "covariance_rank": int((evals > evals.max() * 1e-9).sum()),
        "mean_norm": float(np.linalg.norm(mean)),
    }
    print(json.dumps(how))


if __name__ == "__main__":
    main()
