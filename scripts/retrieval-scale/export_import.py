#!/usr/bin/env python3
"""Writes the PostgreSQL import form of a built embedded index, without embedding again.

Reads `<index>/chunks.jsonl` and `<index>/embeddings.safetensors` (tensor `embeddings`, f32
[chunks, dimension], the layout src/retrieval/index.rs writes) and writes one JSON line per chunk:
{id, title, section, text, vector} plus the chunk's guideline and source, in index order, for
`medprm index --backend postgres --import FILE`. Standard library only.
"""
import argparse
import array
import json
import struct
import sys
from pathlib import Path


def read_embeddings(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        t = header.get("embeddings")
        if t is None or t["dtype"] != "F32" or len(t["shape"]) != 2:
            sys.exit(f"{path}: no f32 [chunks, dimension] tensor `embeddings`")
        begin, end = t["data_offsets"]
        f.seek(8 + n + begin)
        data = array.array("f")
        data.frombytes(f.read(end - begin))
    if sys.byteorder != "little":
        data.byteswap()
    return t["shape"], data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=Path, required=True, help="index directory built by `medprm index`")
    ap.add_argument("--out", type=Path, required=True, help="JSONL to write")
    a = ap.parse_args()
    (rows, dim), data = read_embeddings(a.index / "embeddings.safetensors")
    n = 0
    with open(a.index / "chunks.jsonl") as src, open(a.out, "w") as out:
        for i, line in enumerate(src):
            if i >= rows:
                sys.exit(f"{a.index}: more chunks than the {rows} embedding rows")
            c = json.loads(line)
            vec = [round(x, 7) for x in data[i * dim:(i + 1) * dim]]
            rec = {"id": c["id"], "title": c["title"], "section": c["section"], "text": c["text"],
                   "guideline": c["guideline"], "source": c["source"], "vector": vec}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    if n != rows:
        sys.exit(f"{a.index}: {n} chunks but {rows} embedding rows")
    print(f"wrote {n} chunks of {dim} dimensions to {a.out}")


if __name__ == "__main__":
    main()
