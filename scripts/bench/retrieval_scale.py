#!/usr/bin/env python3
"""`make bench-retrieval-scale`: retrieval at scale on a synthetic corpus with the bundled
guidelines planted in it (scripts/retrieval-scale/make_corpus.py).

For the embedded backend, in one run: ingest rate and index build time (`medprm index`: chunking,
BM25, embedding), disk (du of the index directory and its parts), start-up time and peak RAM of a
process that opens the index and answers one query, the serving process's RSS, `/v1/retrieve`
latency p50/p99 at k=10 for bm25/dense/hybrid with 1 and 8 concurrent clients (client round trip
and the server's x-retrieval-time), and the hard retrieval eval (recall@1, MRR) on the planted
corpus. The embedded dense search is exact (brute force over every vector), so its recall@10
against exact search is 1 by construction and is recorded as such, not measured.
Writes a figure file (docs/figures/retrieval-scale.json). Standard library only.
"""
import argparse
import concurrent.futures
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def log(*a):
    print("bench-retrieval-scale:", *a, file=sys.stderr, flush=True)


def du(path):
    total = 0
    for p in Path(path).rglob("*"):
        if p.is_file():
            total += p.stat().st_size
    return total


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
        server_ms = float(r.headers.get("x-retrieval-time", "nan").rstrip("ms") or "nan")
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
    return (time.perf_counter() - t) * 1000, server_ms


def load(url, queries, mode, concurrency, requests):
    """`requests` requests over `concurrency` clients, cycling through the questions; the server
    runs with a one-entry retrieval cache (--retrieve-cache 0) and no query repeats back to back,
    so every request searches."""
    bodies = [{"query": queries[i % len(queries)], "k": 10, "mode": mode} for i in range(requests)]
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        results = list(ex.map(lambda b: post(url, b), bodies))
    wall = time.perf_counter() - t
    client = [r[0] for r in results]
    server = [r[1] for r in results]
    return {
        "mode": mode,
        "concurrency": concurrency,
        "requests": requests,
        "client_p50_ms": percentile(client, 50),
        "client_p99_ms": percentile(client, 99),
        "server_p50_ms": percentile(server, 50),
        "server_p99_ms": percentile(server, 99),
        "qps": requests / wall,
    }


def questions(path):
    return [json.loads(l)["question"] for l in Path(path).read_text().splitlines() if l.strip()]


def embedded(a, work, corpus, chunks_wanted):
    index = work / "index"
    if index.exists():
        subprocess.run(["rm", "-rf", str(index)], check=True)
    log(f"medprm index of {chunks_wanted} records (embedding dominates)")
    t = time.perf_counter()
    out = subprocess.run([a.medprm, "index", "--corpus", str(corpus), "--out", str(index)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    build_s = time.perf_counter() - t
    manifest = json.loads((index / "manifest.json").read_text())
    n = manifest["chunks"]
    tokens = [json.loads(l)["tokens"] for l in (index / "chunks.jsonl").open()]
    planted = [json.loads(l) for l in (index / "chunks.jsonl").open()]
    planted_tokens = [c["tokens"] for c in planted if not c["id"].startswith("synthetic/")]
    synth_tokens = [c["tokens"] for c in planted if c["id"].startswith("synthetic/")]
    del planted
    disk = {
        "total_bytes": du(index),
        "embeddings_bytes": (index / "embeddings.safetensors").stat().st_size,
        "tantivy_bytes": du(index / "tantivy"),
        "chunks_jsonl_bytes": (index / "chunks.jsonl").stat().st_size,
    }

    # Start-up: a fresh process opens the index (chunks, tantivy, vectors, embedder) and answers
    # one hybrid query; GNU time's peak RSS is the index's resident cost without a model.
    q = questions(a.questions)[0]
    r = subprocess.run(["/usr/bin/time", "-f", "%e %M", a.medprm, "search", "--index", str(index), "--query", q,
                        "--k", "10", "--mode", "hybrid", "--json"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    secs, kb = r.stderr.strip().splitlines()[-1].split()
    startup = {"open_and_one_query_s": float(secs), "peak_rss_bytes": int(kb) * 1024}

    log("hard retrieval eval on the planted corpus")
    ev = json.loads(subprocess.run([a.medprm, "eval-retrieval", "--index", str(index), "--questions", a.questions,
                                    "--repeats", "1", "--json"], check=True, stdout=subprocess.PIPE, text=True).stdout)
    hard = [{k: m[k] for k in ("mode", "recall_at_1", "recall_at_10", "mrr")} for m in ev["modes"]]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [a.medprm, "serve", "--model", a.model, "--index", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--retrieve-cache", "0"]
    log("serving:", " ".join(map(shlex.quote, cmd)))
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"))
    try:
        t = time.perf_counter()
        while True:
            if srv.poll() is not None:
                sys.exit(f"medprm serve exited {srv.returncode}: see {work / 'serve.log'}")
            try:
                with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t > 600:
                sys.exit("medprm serve not ready after 600 s")
            time.sleep(0.5)
        ready_s = time.perf_counter() - t
        qs = questions(a.questions) + questions(a.more_questions)
        runs = []
        for mode in ("bm25", "dense", "hybrid"):
            post(url + "/v1/retrieve", {"query": qs[0], "k": 10, "mode": mode})  # warm
            for c in (1, 8):
                row = load(url + "/v1/retrieve", qs, mode, c, a.requests)
                log(json.dumps(row))
                runs.append(row)
        serve = {"ready_s": ready_s, "rss_bytes": rss_bytes(srv.pid), "model": Path(a.model).name, "latency": runs}
    finally:
        srv.terminate()
        srv.wait(timeout=30)

    return {
        "backend": "embedded",
        "chunks": n,
        "planted_chunks": len(planted_tokens),
        "dimension": manifest["dimension"],
        "tokens_mean_planted": sum(planted_tokens) / max(1, len(planted_tokens)),
        "tokens_mean_synthetic": sum(synth_tokens) / max(1, len(synth_tokens)),
        "index_build_s": build_s,
        "ingest_chunks_per_s": n / build_s,
        "index_stdout": out.strip(),
        "disk": disk,
        "startup": startup,
        "serve": serve,
        "dense_recall_at_10_vs_exact": {"value": 1.0, "how": "exact by construction (brute force over every vector)"},
        "hard_eval": {"questions": ev["questions"], "modes": hard},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--medprm", required=True)
    ap.add_argument("--model", required=True, help="GGUF the server loads (retrieval does not use it)")
    ap.add_argument("--guidelines", required=True)
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (corpus, index)")
    ap.add_argument("--questions", default=str(ROOT / "data/retrieval-eval-hard.jsonl"))
    ap.add_argument("--more-questions", default=str(ROOT / "data/retrieval-eval.jsonl"))
    ap.add_argument("--requests", type=int, default=200, help="requests per (mode, concurrency)")
    ap.add_argument("--figures", type=Path, default=ROOT / "docs/figures/retrieval-scale.json")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    corpus = a.work / f"corpus-{a.chunks}.jsonl"
    subprocess.run([sys.executable, str(ROOT / "scripts/retrieval-scale/make_corpus.py"), "--guidelines", a.guidelines,
                    "--out", str(corpus), "--chunks", str(a.chunks)], check=True)
    t0 = time.time()
    backends = [embedded(a, a.work, corpus, a.chunks)]
    with open("/proc/loadavg") as f:
        load_avg = [float(x) for x in f.read().split()[:3]]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    fig = {
        "command": " ".join(shlex.quote(x) for x in [Path(sys.argv[0]).name, *sys.argv[1:]]).replace(str(Path.home()), "~"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": load_avg,
        "figures": {"records": a.chunks, "wall_s": time.time() - t0, "backends": backends},
    }
    a.figures.parent.mkdir(parents=True, exist_ok=True)
    a.figures.write_text(json.dumps(fig, indent=2) + "\n")
    log("wrote", a.figures)


if __name__ == "__main__":
    main()
