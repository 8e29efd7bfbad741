#!/usr/bin/env python3
"""`make bench-retrieval-scale`: retrieval at scale on a synthetic corpus with the bundled
guidelines planted in it, on both backends in one run.

The corpus (scripts/retrieval-scale/make_corpus.py) is given vectors without embedding its filler
(scripts/retrieval-scale/make_vectors.py: the planted chunks keep their real embeddings from
--planted-index, the synthetic ones get seeded draws from a Gaussian fitted to those), and both
backends load the same NPY + metadata with `medprm index --import`.

Embedded: import rate (chunks, BM25 and the vector file, one pass), disk (du of the index and its
parts), start-up time and peak RAM of a process that opens the index and answers one query, the
serving process's RSS. Its dense search is exact (brute force), so its recall@10 against exact
search is 1 by construction (recorded as such, not measured).

PostgreSQL + pgvector (tests/pg/pgctl.py, the pgserver wheel's binaries, in a scratch data
directory): COPY ingest rate, HNSW build time, table and index sizes, the server processes' RSS
and PSS, and HNSW recall@10 against exact search (the same ORDER BY with index scans disabled),
via psql on the query vectors make_vectors.py writes.

Both: `/v1/retrieve` latency p50/p99 at k=10 for bm25/dense/hybrid with 1 and 8 concurrent clients
(client round trip and the server's x-retrieval-time), and the hard retrieval eval (recall@1/@10,
MRR) through `/v1/retrieve` on the planted corpus. Writes a figure file
(docs/figures/retrieval-scale.json). Standard library only (the vectors script runs in a Python
with numpy, --vectors-python).
"""
import argparse
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def log(*a):
    print("bench-retrieval-scale:", *a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


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


def proc_kb(pid, field, name="status"):
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid):
    return proc_kb(pid, "VmRSS")


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def post(url, body, want_body=False):
    """(client ms, server ms) of one request, or its parsed body; an HTTP error raises
    urllib.error.HTTPError."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=180) as r:
        data = r.read()
        server_ms = float(r.headers.get("x-retrieval-time", "nan").rstrip("ms") or "nan")
    if want_body:
        return json.loads(data)
    return (time.perf_counter() - t) * 1000, server_ms


def load(url, queries, mode, concurrency, requests, budget_s):
    """Up to `requests` requests over `concurrency` clients, cycling through the questions, no
    new request started after `budget_s` seconds; the server runs with a one-entry retrieval
    cache (--retrieve-cache 0) and no query repeats back to back, so every request searches.
    Failed requests (HTTP errors, e.g. 503 when a statement times out) are counted, not timed."""
    lock = threading.Lock()
    state = {"next": 0, "errors": {}}
    ok = []
    t = time.perf_counter()

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= requests or time.perf_counter() - t > budget_s:
                    return
                state["next"] += 1
            try:
                r = post(url, {"query": queries[i % len(queries)], "k": 10, "mode": mode})
                with lock:
                    ok.append(r)
            except urllib.error.HTTPError as e:
                with lock:
                    state["errors"][str(e.code)] = state["errors"].get(str(e.code), 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    client = [r[0] for r in ok]
    server = [r[1] for r in ok]
    pct = lambda xs, q: percentile(xs, q) if xs else None
    return {
        "mode": mode,
        "concurrency": concurrency,
        "requests": state["next"],
        "errors": state["errors"],
        "client_p50_ms": pct(client, 50),
        "client_p99_ms": pct(client, 99),
        "server_p50_ms": pct(server, 50),
        "server_p99_ms": pct(server, 99),
        "qps": len(ok) / wall,
    }


def labelled(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def hard_eval(url, questions, budget_s):
    """recall@1/@10 and MRR@10 of each mode over `/v1/retrieve` (k=10): the rank of the first
    document whose section (its id without `#n`) is labelled relevant, as `medprm eval-retrieval`
    counts it. No question of a mode is started after `budget_s` seconds; the figures are over
    the questions run (`questions_run`), an HTTP error counting as a miss."""
    out = []
    for mode in ("bm25", "dense", "hybrid"):
        at1 = at10 = 0
        rr = 0.0
        errors = {}
        run = 0
        t = time.perf_counter()
        for q in questions:
            if time.perf_counter() - t > budget_s:
                break
            run += 1
            try:
                docs = post(url, {"query": q["question"], "k": 10, "mode": mode}, want_body=True)["documents"]
            except urllib.error.HTTPError as e:  # counted as a miss
                errors[str(e.code)] = errors.get(str(e.code), 0) + 1
                continue
            rank = next((i + 1 for i, d in enumerate(docs) if d["id"].rsplit("#", 1)[0] in q["relevant"]), None)
            if rank:
                rr += 1 / rank
                at1 += rank == 1
                at10 += 1
        n = max(1, run)
        out.append({"mode": mode, "questions_run": run, "recall_at_1": at1 / n, "recall_at_10": at10 / n, "mrr": rr / n,
                    "errors": errors, "seconds": time.perf_counter() - t})
    return {"questions": len(questions), "modes": out}


def serve_and_measure(a, work, name, args):
    """Starts `medprm serve` with `args`, waits for /ready, runs the hard eval and the latency
    levels; returns (serve figures, hard eval)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [a.medprm, "serve", "--model", a.model, "--host", "127.0.0.1", "--port", str(port), "--retrieve-cache", "0", *args]
    log("serving:", " ".join(map(shlex.quote, cmd)))
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / f"serve-{name}.log", "w"))
    try:
        t = time.perf_counter()
        while True:
            if srv.poll() is not None:
                sys.exit(f"medprm serve exited {srv.returncode}: see {work / f'serve-{name}.log'}")
            try:
                with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t > 900:
                sys.exit("medprm serve not ready after 900 s")
            time.sleep(0.5)
        ready_s = time.perf_counter() - t
        log(f"{name}: ready in {ready_s:.1f} s; hard retrieval eval")
        hard = hard_eval(url + "/v1/retrieve", labelled(a.questions), a.eval_seconds)
        log(json.dumps(hard))
        qs = [q["question"] for q in labelled(a.questions) + labelled(a.more_questions)]
        runs = []
        for mode in ("bm25", "dense", "hybrid"):
            try:
                post(url + "/v1/retrieve", {"query": qs[0], "k": 10, "mode": mode})  # warm
            except urllib.error.HTTPError:
                pass
            for c in (1, 8):
                row = load(url + "/v1/retrieve", qs, mode, c, a.requests, a.level_seconds)
                log(name, json.dumps(row))
                runs.append(row)
        serve = {"ready_s": ready_s, "rss_bytes": rss_bytes(srv.pid), "model": Path(a.model).name, "latency": runs,
                 "load_average_after": loadavg()}
        # The database backend's BM25 work over the whole run (eval and latency levels).
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            lines = r.read().decode().splitlines()
        bm25 = {l.split()[0]: float(l.split()[1]) for l in lines
                if l.startswith("medprm_retrieval_bm25_") and (l.split()[0].endswith(("_sum", "_count", "_total")))}
        if bm25:
            serve["bm25_work"] = bm25
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    return serve, hard


def text_words(meta):
    planted, synth = [], []
    with open(meta) as f:
        for line in f:
            r = json.loads(line)
            (synth if r["id"].startswith("synthetic/") else planted).append(len(r["text"].split()))
    return {"planted": sum(planted) / max(1, len(planted)), "synthetic": sum(synth) / max(1, len(synth))}


def embedded(a, work, imp):
    index = work / "index"
    if index.exists():
        subprocess.run(["rm", "-rf", str(index)], check=True)
    log("embedded: medprm index --import (chunks, BM25, vectors)")
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%e %M", a.medprm, "index", "--import", str(imp["vectors"]), "--metadata",
                        str(imp["metadata"]), "--out", str(index)], check=True, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    build_s = time.perf_counter() - t
    import_peak = int(r.stderr.strip().splitlines()[-1].split()[1]) * 1024
    import_out = r.stdout.strip()
    log("embedded:", import_out)
    manifest = json.loads((index / "manifest.json").read_text())
    n = manifest["chunks"]
    disk = {
        "total_bytes": du(index),
        "embeddings_bytes": (index / "embeddings.safetensors").stat().st_size,
        "tantivy_bytes": du(index / "tantivy"),
        "chunks_jsonl_bytes": (index / "chunks.jsonl").stat().st_size,
    }

    # Start-up: a fresh process opens the index (chunks, tantivy, vectors, embedder) and answers
    # one hybrid query; GNU time's peak RSS is the index's resident cost without a model.
    q = labelled(a.questions)[0]["question"]
    r = subprocess.run(["/usr/bin/time", "-f", "%e %M", a.medprm, "search", "--index", str(index), "--query", q,
                        "--k", "10", "--mode", "hybrid", "--json"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    secs, kb = r.stderr.strip().splitlines()[-1].split()
    startup = {"open_and_one_query_s": float(secs), "peak_rss_bytes": int(kb) * 1024}
    log("embedded:", json.dumps(startup))

    serve, hard = serve_and_measure(a, work, "embedded", ["--index", str(index)])
    return {
        "backend": "embedded",
        "chunks": n,
        "dimension": manifest["dimension"],
        "index_build_s": build_s,
        "ingest_chunks_per_s": n / build_s,
        "import_peak_rss_bytes": import_peak,
        "index_stdout": import_out,
        "disk": disk,
        "startup": startup,
        "serve": serve,
        "dense_recall_at_10_vs_exact": {"value": 1.0, "how": "exact by construction (brute force over every vector)"},
        "hard_eval": hard,
    }


class Psql:
    def __init__(self, bindir, port):
        self.cmd = [str(Path(bindir) / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
                    "-U", "postgres", "-d", "postgres"]

    def __call__(self, sql):
        return subprocess.run(self.cmd, input=sql, check=True, stdout=subprocess.PIPE, text=True).stdout


def pg_processes(data):
    """(pids) of the postmaster in `data` and its children."""
    master = int((data / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                st = (d / "stat").read_text()
            except OSError:
                continue
            if int(st.rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(d.name))
    return pids


def recall(psql, queries, ef_search):
    """HNSW recall@10 against exact search for each query vector, and the seconds per query of each."""
    def run(setting):
        sql = [setting]
        for q in queries:
            v = "[" + ",".join(map(str, q["vector"])) + "]"
            sql.append(f"SELECT array_to_string(ARRAY(SELECT id FROM medprm_chunks ORDER BY embedding <=> '{v}'::vector LIMIT 10), ' ');")
        t = time.perf_counter()
        out = psql("\n".join(sql)).splitlines()
        return [set(l.split()) for l in out], (time.perf_counter() - t) / len(queries)

    exact, exact_s = run("SET enable_indexscan = off;")
    results = {"exact_s_per_query": exact_s, "ef_search": {}}
    for ef in ef_search:
        approx, s = run(f"SET hnsw.ef_search = {ef};")
        by_kind = {}
        for q, e, h in zip(queries, exact, approx):
            by_kind.setdefault(q["kind"], []).append(len(e & h) / len(e))
        results["ef_search"][str(ef)] = {
            "s_per_query": s,
            "recall_at_10": {k: sum(v) / len(v) for k, v in by_kind.items()},
            "recall_at_10_all": sum(sum(v) for v in by_kind.values()) / len(queries),
        }
    v = "[" + ",".join(map(str, queries[0]["vector"])) + "]"
    plan = lambda s: psql(f"{s}\nEXPLAIN SELECT id FROM medprm_chunks ORDER BY embedding <=> '{v}'::vector LIMIT 10;")
    results["plans"] = {"exact": plan("SET enable_indexscan = off;").splitlines(), "hnsw": plan("").splitlines()}
    results["queries"] = {k: sum(q["kind"] == k for q in queries) for k in sorted({q["kind"] for q in queries})}
    return results


def postgres(a, work, imp):
    data = work / "pg"
    if data.exists():
        subprocess.run(["rm", "-rf", str(data)], check=True)
    port = free_port()
    ctl = [a.pg_python, str(ROOT / "tests/pg/pgctl.py")]
    bindir = subprocess.run([*ctl, "bin"], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    settings = [f"shared_buffers={a.pg_shared_buffers}", f"max_parallel_maintenance_workers={a.pg_parallel_workers}",
                f"max_parallel_workers_per_gather={a.pg_parallel_workers}"]
    log("postgres: starting", " ".join(settings))
    subprocess.run([*ctl, "start", str(data), str(port), *settings], check=True)
    url = f"postgres://postgres@127.0.0.1:{port}/postgres"
    psql = Psql(bindir, port)
    try:
        version = psql("SELECT version(); SELECT default_version FROM pg_available_extensions WHERE name = 'vector';").split("\n")
        log("postgres: medprm index --backend postgres --import (COPY, then HNSW)")
        t = time.perf_counter()
        out = subprocess.run([a.medprm, "index", "--backend", "postgres", "--database-url", url, "--import", str(imp["vectors"]),
                              "--metadata", str(imp["metadata"]), "--batch", str(a.pg_batch), "--hnsw-build-memory",
                              a.hnsw_build_memory], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
        total_s = time.perf_counter() - t
        log("postgres:", out)
        m = re.search(r"loaded (\d+) of (\d+) chunks .* in ([\d.]+) s \(([\d.]+) chunks/s\); HNSW index and ANALYZE in ([\d.]+) s; "
                      r"BM25 statistics in ([\d.]+) s", out)
        if not m:
            sys.exit(f"unexpected `medprm index` output: {out}")
        loaded, rows, load_s, rate, hnsw_s, stats_s = int(m[1]), int(m[2]), float(m[3]), float(m[4]), float(m[5]), float(m[6])
        sizes = dict(zip(
            ["table_total_bytes", "table_heap_bytes", "toast_bytes", "hnsw_index_bytes", "gin_index_bytes", "pkey_index_bytes", "bm25_terms_bytes",
             "database_bytes"],
            map(int, psql("""SELECT pg_total_relation_size('medprm_chunks'), pg_relation_size('medprm_chunks'),
                   COALESCE(pg_total_relation_size(NULLIF(reltoastrelid, 0)), 0), pg_relation_size('medprm_chunks_embedding_hnsw'),
                   pg_relation_size('medprm_chunks_tsv_gin'), pg_relation_size('medprm_chunks_pkey'), pg_total_relation_size('medprm_terms'),
                   pg_database_size(current_database()) FROM pg_class WHERE relname = 'medprm_chunks';""").strip().split("|"))))
        log("postgres:", json.dumps(sizes))
        log("postgres: HNSW recall@10 against exact search")
        queries = labelled(imp["queries"])
        rec = recall(psql, queries, [40, 200])
        log("postgres:", json.dumps({k: v for k, v in rec.items() if k != "plans"}))

        serve, hard = serve_and_measure(a, work, "postgres", ["--retrieval-backend", "postgres", "--database-url", url,
                                                              "--db-pool-size", "8", "--db-statement-timeout-ms",
                                                              str(a.pg_statement_timeout_ms)])
        pids = pg_processes(data)
        ram = {"processes": len(pids), "rss_sum_bytes": sum(rss_bytes(p) for p in pids),
               "pss_sum_bytes": sum(proc_kb(p, "Pss", "smaps_rollup") for p in pids),
               "shared_buffers": a.pg_shared_buffers,
               "how": "after the latency runs (medprm's pool of 8 connections open): RSS and PSS (shared pages split) summed over the postmaster and its children"}
    finally:
        subprocess.run([*ctl, "stop", str(data)], check=False)
    return {
        "backend": "postgres",
        "chunks": rows,
        "server": version[0].strip(),
        "pgvector": version[1].strip() if len(version) > 1 else None,
        "settings": settings + [f"maintenance_work_mem={a.hnsw_build_memory} (HNSW build)", "fsync=off"],
        "ingest_chunks_per_s": rate,
        "load_s": load_s,
        "hnsw_build_s": hnsw_s,
        "bm25_statistics_s": stats_s,
        "index_build_s": total_s,
        "index_stdout": out,
        "disk": sizes,
        "server_ram": ram,
        "serve": serve,
        "dense_recall_at_10_vs_exact": rec,
        "hard_eval": hard,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--medprm", required=True)
    ap.add_argument("--model", required=True, help="GGUF the server loads (retrieval does not use it)")
    ap.add_argument("--guidelines", required=True)
    ap.add_argument("--chunks", type=int, default=1_000_000, help="corpus records (planted sections included)")
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (corpus, vectors, index, database)")
    ap.add_argument("--planted-index", type=Path,
                    help="index holding the planted sections' real embeddings [default: built here with "
                         "`medprm index --corpus GUIDELINES` into WORK/planted-index]")
    ap.add_argument("--vectors-python", default=str(Path.home() / ".cache/medprm/venv-golden/bin/python"),
                    help="a Python with numpy for make_vectors.py")
    ap.add_argument("--pg-python", default=str(Path.home() / ".cache/medprm/venv-pg/bin/python"),
                    help="the pgserver venv's Python (make pg-venv)")
    ap.add_argument("--backends", default="embedded,postgres")
    ap.add_argument("--hnsw-build-memory", default="4GB")
    ap.add_argument("--recall-queries", type=int, default=50, help="HNSW recall query vectors of each kind (two kinds)")
    ap.add_argument("--pg-shared-buffers", default="1GB")
    ap.add_argument("--pg-parallel-workers", type=int, default=1, help="besides the leader: 1 on a 2-core machine")
    ap.add_argument("--pg-batch", type=int, default=5000)
    ap.add_argument("--questions", default=str(ROOT / "data/retrieval-eval-hard.jsonl"))
    ap.add_argument("--more-questions", default=str(ROOT / "data/retrieval-eval.jsonl"))
    ap.add_argument("--requests", type=int, default=200, help="requests per (mode, concurrency)")
    ap.add_argument("--level-seconds", type=float, default=120, help="no new request of a (mode, concurrency) level after this")
    ap.add_argument("--eval-seconds", type=float, default=600, help="no new hard-eval question of a mode after this")
    ap.add_argument("--pg-statement-timeout-ms", type=int, default=60000, help="medprm serve's --db-statement-timeout-ms")
    ap.add_argument("--figures", type=Path, default=ROOT / "docs/figures/retrieval-scale.json")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    load_before = loadavg()

    corpus = a.work / f"corpus-{a.chunks}.jsonl"
    subprocess.run([sys.executable, str(ROOT / "scripts/retrieval-scale/make_corpus.py"), "--guidelines", a.guidelines,
                    "--out", str(corpus), "--chunks", str(a.chunks)], check=True)
    planted = a.planted_index
    if planted is None:
        planted = a.work / "planted-index"
        if not (planted / "manifest.json").exists():
            log("embedding the planted guidelines (the only chunks embedded)")
            subprocess.run([a.medprm, "index", "--corpus", a.guidelines, "--out", str(planted)], check=True)
    imp = {"vectors": a.work / f"vectors-{a.chunks}.npy", "metadata": a.work / f"metadata-{a.chunks}.jsonl",
           "queries": a.work / f"recall-queries-{a.chunks}.jsonl"}
    log("vectors for the synthetic chunks (make_vectors.py)")
    t = time.perf_counter()
    how = json.loads(subprocess.run([a.vectors_python, str(ROOT / "scripts/retrieval-scale/make_vectors.py"), "--corpus", str(corpus),
                                     "--planted-index", str(planted), "--vectors", str(imp["vectors"]), "--metadata",
                                     str(imp["metadata"]), "--queries", str(imp["queries"]),
                                     "--recall-queries", str(a.recall_queries)],
                                    check=True, stdout=subprocess.PIPE, text=True).stdout)
    how["seconds"] = time.perf_counter() - t
    how["method"] = ("planted chunks: their real embeddings (the embedder's, from the planted index); synthetic chunks: "
                     "draws from the Gaussian fitted to the planted embeddings' mean and full covariance, L2-normalised "
                     "(scripts/retrieval-scale/make_vectors.py, numpy PCG64, seed 23); the synthetic texts are indexed as they are")
    words = text_words(imp["metadata"])

    backends = []
    for b in a.backends.split(","):
        backends.append({"embedded": embedded, "postgres": postgres}[b](a, a.work, imp))
        backends[-1]["load_average_after"] = loadavg()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    fig = {
        "command": " ".join(shlex.quote(x) for x in [Path(sys.argv[0]).name, *sys.argv[1:]]).replace(str(Path.home()), "~"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": loadavg(),
        "figures": {"memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "load_average_before": load_before,
                    "records": a.chunks, "rows": how["planted_rows"] + how["synthetic_rows"], "vectors": how,
                    "text_words_mean": words, "wall_s": time.time() - t0, "backends": backends},
    }
    a.figures.parent.mkdir(parents=True, exist_ok=True)
    a.figures.write_text(json.dumps(fig, indent=2) + "\n")
    log("wrote", a.figures)


if __name__ == "__main__":
    main()
