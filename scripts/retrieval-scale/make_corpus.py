#!/usr/bin/env python3
"""Synthetic retrieval corpus of N chunks with the bundled open-medicine guidelines planted in it.

Writes a JSONL corpus ({id, title, section, source, content}, the form `medprm index --corpus`
reads) in which

* every section of the bundled guidelines (registry.json + content/<id>/<section>.md) is one
  record whose id is the section id the retrieval eval labels name (`<guideline>/<stem>`), whose
  title, section heading and body are what the markdown reader would produce, so `medprm index`
  chunks it into the same chunk texts and the hard retrieval eval still measures relevance;
* the other records are synthetic: words drawn from the guidelines' own vocabulary at their
  corpus frequencies, in sentences and paragraphs, one record per chunk, with word counts drawn
  from the guidelines' chunk-length distribution (their sections packed greedily into chunks of
  at most --chunk-words words, the word budget of the indexer's 256-token cap).

Deterministic for a given --seed and guidelines directory. Standard library only.
The import form for PostgreSQL (id, title, section, text, vector) is written from a built index
by export_import.py, so the vectors are the ones the embedded index holds.
"""
import argparse
import bisect
import collections
import json
import random
import re
import sys
from pathlib import Path


def clean_inline(s):
    return s.replace("**", "").replace("__", "")


def humanise(stem):
    s = stem.replace("_", " ").replace("-", " ")
    return s[:1].upper() + s[1:]


def is_rule(t):
    return t != "" and all(c in "-|: *_" for c in t) and any(c in t for c in "-*_")


def parse_markdown(text):
    """The section heading and body, as src/retrieval/corpus.rs parse_markdown reads them."""
    heading = None
    body = []
    after_heading = False
    for line in text.splitlines():
        t = line.lstrip()
        if heading is None and "".join(body).strip() == "" and t.startswith("# "):
            heading = clean_inline(t[2:].strip())
            continue
        if after_heading and t == "":
            continue
        if is_rule(t):
            continue
        hashes = len(t) - len(t.lstrip("#"))
        after_heading = 1 <= hashes <= 6 and t[hashes:].startswith(" ")
        body.append(t[hashes:].strip() if after_heading else line)
    return heading or None, "\n".join(body) + "\n"


def paragraphs(body):
    out, cur = [], []
    for line in body.splitlines():
        if line.strip() == "":
            if cur:
                out.append(" ".join(cur))
                cur = []
        else:
            cur.append(line.strip())
    if cur:
        out.append(" ".join(cur))
    return out


def planted_sections(root):
    registry = json.loads((root / "registry.json").read_text())
    content = root / "content" if (root / "content").is_dir() else root
    out = []
    for entry in sorted(registry, key=lambda e: e["id"]):
        gid = entry["id"]
        for f in sorted((content / gid).glob("*.md")):
            heading, body = parse_markdown(f.read_text())
            out.append({
                "id": f"{gid}/{f.stem}",
                "title": clean_inline(entry["title"].strip()),
                "section": heading or humanise(f.stem),
                "source": f"{gid}/{f.stem}.md",
                "content": body,
            })
    return out


def chunk_word_counts(sections, budget):
    """Words per chunk when each section's paragraphs are packed greedily under `budget` words."""
    counts = []
    for s in sections:
        cur = 0
        for p in paragraphs(s["content"]):
            n = len(p.split())
            while n > budget:  # a long paragraph is split
                if cur:
                    counts.append(cur)
                    cur = 0
                counts.append(budget)
                n -= budget
            if cur and cur + n > budget:
                counts.append(cur)
                cur = 0
            cur += n
        if cur:
            counts.append(cur)
    return counts


WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-]*[A-Za-z0-9]|[A-Za-z]")


class Sampler:
    def __init__(self, freq):
        self.words = list(freq)
        self.cum = []
        total = 0
        for w in self.words:
            total += freq[w]
            self.cum.append(total)
        self.total = total

    def __call__(self, rng):
        return self.words[bisect.bisect_right(self.cum, rng.random() * self.total)]


def synthetic_text(rng, words, n):
    out, left = [], n
    while left > 0:
        para = []
        for _ in range(rng.randint(1, 4)):
            if left <= 0:
                break
            k = min(left, rng.randint(6, 28))
            left -= k
            s = [words(rng) for _ in range(k)]
            s[0] = s[0][:1].upper() + s[0][1:]
            para.append(" ".join(s) + ".")
        out.append(" ".join(para))
    return "\n\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guidelines", type=Path, required=True, help="open-medicine directory (registry.json, content/)")
    ap.add_argument("--out", type=Path, required=True, help="JSONL corpus to write")
    ap.add_argument("--chunks", type=int, default=1_000_000, help="records in all, planted sections included")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--chunk-words", type=int, default=150, help="word budget of one chunk (256 tokens less the title)")
    a = ap.parse_args()

    planted = planted_sections(a.guidelines)
    if a.chunks < len(planted):
        sys.exit(f"--chunks {a.chunks}: at least the {len(planted)} planted sections")
    lengths = chunk_word_counts(planted, a.chunk_words)
    freq = collections.Counter(w.lower() for s in planted for w in WORD.findall(s["content"]))
    words = Sampler(freq)
    title_words = Sampler(collections.Counter(w.lower() for s in planted for w in WORD.findall(s["title"] + " " + s["section"]) if len(w) > 3))

    rng = random.Random(a.seed)
    n_synth = a.chunks - len(planted)
    # Planted records at seeded positions among the synthetic ones.
    slots = sorted(rng.sample(range(a.chunks), len(planted)))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.name + ".tmp")
    synth_i = plant_i = 0
    with open(tmp, "w") as f:
        for pos in range(a.chunks):
            if plant_i < len(planted) and slots[plant_i] == pos:
                rec = planted[plant_i]
                plant_i += 1
            else:
                doc = synth_i // 8  # eight sections per synthetic document
                drng = random.Random(f"{a.seed}/{doc}")
                title = " ".join(title_words(drng) for _ in range(drng.randint(3, 7))).capitalize()
                section = " ".join(title_words(rng) for _ in range(rng.randint(1, 3))).capitalize()
                rec = {
                    "id": f"synthetic/{doc:08d}/{synth_i % 8}",
                    "title": f"Synthetic guideline {doc}: {title}",
                    "section": section,
                    "source": f"synthetic/{doc:08d}",
                    "content": synthetic_text(rng, words, rng.choice(lengths)),
                }
                synth_i += 1
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(a.out)
    print(f"wrote {a.chunks} records ({len(planted)} planted sections, {n_synth} synthetic; "
          f"chunk words p50 {sorted(lengths)[len(lengths) // 2]} of {len(lengths)} guideline chunks) to {a.out}")


if __name__ == "__main__":
    main()
