//! `medprm review` end to end: the real binary on 127.0.0.1 over a label store built with the
//! contract's DDL from tests/data/review/items.jsonl; plain HTTP for the access rules, headless
//! Chromium (Debian's, `make browser`) driven by pinned selenium (`make browser-venv`) for the
//! reviewer's path, the conflict and the XSS checks.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

const ITEM: &str = "review-fixture:0:0";
const XSS_ITEM: &str = "review-fixture:xss:0";
const XSS_Q: &str = "Which drug? <script>window.__xss=1</script><img src=x onerror=\"window.__xss=2;alert(1)\">";
const XSS_STEP: &str = "Step 1: <img src=x onerror=\"window.__xss=3\"> and <script>window.__xss=4</script> ки";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_medprm")
}

/// A label store with the fixture records and an XSS record, as `medprm label` would leave it.
fn label_store(dir: &Path) -> PathBuf {
    let path = dir.join("labels.sqlite");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(medprm::review::store::LABEL_ITEMS_DDL).unwrap();
    let mut recs: Vec<Value> = include_str!("data/review/items.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut x = recs[1].clone();
    x["item_id"] = json!(XSS_ITEM);
    x["question"] = json!(XSS_Q);
    x["steps"][0] = json!(XSS_STEP);
    x["hybrid_label"][0] = Value::Null;
    x["label_source"][0] = json!("uncertain");
    recs.push(x);
    // Images as `medprm label` copies them from the input: a path and inline data.
    let png = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/images/mode_l.png");
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(std::fs::read(png).unwrap());
    // Relative paths resolve against --image-root (the test passes tests/data/images).
    recs[2]["images"] = json!([{"media_type": "image/png", "path": "mode_l.png"}, {"media_type": "image/png", "data": data},
        {"media_type": "text/html", "data": "PHNjcmlwdD4="}, {"media_type": "application/dicom", "path": "ct_small.dcm"}]);
    for r in recs {
        let n_unc = r["hybrid_label"].as_array().unwrap().iter().filter(|v| v.is_null()).count();
        c.execute(
            "INSERT INTO label_items VALUES (?1, ?2, ?3, ?4, ?5, '2026-12-01T00:00:00Z')",
            rusqlite::params![r["item_id"].as_str().unwrap(), r["data_source"].as_str().unwrap(), r["num_steps"].as_i64().unwrap(), n_unc as i64, r.to_string()],
        )
        .unwrap();
    }
    path
}

fn add_user(db: &Path, name: &str, pw: &str) {
    let mut c = Command::new(bin()).args(["review", "add-user", "--db"]).arg(db).args(["--name", name]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    writeln!(c.stdin.take().unwrap(), "{pw}").unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "add-user {name}: {o:?}");
}

struct Review {
    child: Child,
    url: String,
}

impl Review {
    fn start(db: &Path, args: &[&str]) -> Review {
        let mut child = Command::new(bin())
            .arg("review")
            .arg("--db")
            .arg(db)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("medprm review listening on ").unwrap_or_else(|| panic!("unexpected: {line}")).to_string();
        Review { child, url }
    }
}

impl Drop for Review {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The login form's CSRF cookie and field.
async fn login_form(c: &reqwest::Client, url: &str) -> (String, String) {
    let r = c.get(format!("{url}/login")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_string();
    let html = r.text().await.unwrap();
    let tok = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    (cookie, tok)
}

async fn login(c: &reqwest::Client, url: &str, name: &str, pw: &str) -> reqwest::Response {
    let (cookie, tok) = login_form(c, url).await;
    c.post(format!("{url}/login")).header("cookie", cookie).form(&[("name", name), ("password", pw), ("csrf", &tok)]).send().await.unwrap()
}

#[tokio::test]
async fn every_route_needs_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let db = label_store(dir.path());
    add_user(&db, "alice", "alice-password");
    let s = Review::start(&db, &["--login-max-failures", "3", "--image-root", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/images")]);
    let c = client();
    let item = format!("/item?id={}", ITEM.replace(':', "%3A"));
    let pages = ["/", "/queue", "/queue?status=todo", item.as_str(), "/item?id=a&id=b", "/item/image?id=x&k=0", "/item/image?k=zz", "/stats"];
    for p in pages {
        let r = c.get(format!("{}{p}", s.url)).send().await.unwrap();
        let loc = r.headers().get("location").map(|v| v.to_str().unwrap().to_string());
        // "/" goes to /queue first, which then goes to /login.
        let want = if p == "/" { "/queue" } else { "/login" };
        assert!(r.status().is_redirection() && loc.as_deref() == Some(want), "GET {p}: {} {loc:?}", r.status());
        let body = r.text().await.unwrap();
        assert!(!body.contains("CURB-65"), "GET {p} leaked record text");
    }
    for (m, p) in [("GET", "/api/item?id=review-fixture%3A0%3A0"), ("POST", "/api/save")] {
        let r = c.request(m.parse().unwrap(), format!("{}{p}", s.url)).header("x-csrf-token", "x").body("{}").send().await.unwrap();
        assert_eq!(r.status(), 401, "{m} {p}");
    }
    let r = c.post(format!("{}/logout", s.url)).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/login"), "POST /logout");
    let r = c.post(format!("{}/logout", s.url)).body("not a form").send().await.unwrap();
    assert_eq!(r.status(), 303, "POST /logout, no form");
    // The two static files are public and hold no record data.
    for p in ["/static/review.js", "/static/review.css"] {
        let r = c.get(format!("{}{p}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
        assert!(!r.text().await.unwrap().contains("CURB-65"));
    }
    // A forged session cookie is no session.
    let r = c.get(format!("{}/queue", s.url)).header("cookie", "medprm_review=00ff").send().await.unwrap();
    assert_eq!(r.status(), 303);
    // The login form's own CSRF token is required.
    let r = c.post(format!("{}/login", s.url)).form(&[("name", "alice"), ("password", "alice-password"), ("csrf", "x")]).send().await.unwrap();
    assert_eq!(r.status(), 403, "login without the form's CSRF cookie");

    // A good login: cookie flags, then the API needs the session's CSRF token.
    let r = login(&c, &s.url, "alice", "alice-password").await;
    assert_eq!(r.status(), 303);
    let set = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).find(|v| v.starts_with("medprm_review=")).unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"), "{set}");
    let sess = set.split(';').next().unwrap().to_string();
    let html = c.get(format!("{}{item}", s.url)).header("cookie", &sess).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("CURB-65"));
    let csrf = html.split("name=\"csrf-token\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    // Images: the path through the image route, inline PNG data as a data: URL, other types left out.
    let html2 = c.get(format!("{}/item?id=review-fixture%3A2%3A0", s.url)).header("cookie", &sess).send().await.unwrap().text().await.unwrap();
    assert!(html2.contains("src=\"&#x2f;item&#x2f;image?id=review-fixture%3A2%3A0&amp;k=0\"") && html2.contains("src=\"data:image&#x2f;png;base64,"), "{html2}");
    assert!(!html2.contains("text&#x2f;html") && !html2.contains("PHNjcmlwdD4"), "a non-image data URL was rendered");
    let r = c.get(format!("{}/item/image?id=review-fixture%3A2%3A0&k=0", s.url)).header("cookie", &sess).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()), (200, "image/png"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/images/mode_l.png")).unwrap());
    // DICOM is decoded by the core's decoder and sent as PNG.
    let r = c.get(format!("{}/item/image?id=review-fixture%3A2%3A0&k=3", s.url)).header("cookie", &sess).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()), (200, "image/png"));
    assert!(r.bytes().await.unwrap().starts_with(b"\x89PNG"));
    for k in ["1", "2", "9", "x"] {
        let r = c.get(format!("{}/item/image?id=review-fixture%3A2%3A0&k={k}", s.url)).header("cookie", &sess).send().await.unwrap();
        assert!(r.status() == 404 || r.status() == 400, "k={k}: {}", r.status());
    }
    let save = json!({"item_id": ITEM, "slot": "final", "key": "step:1", "value": "1", "version": 0});
    let r = c.post(format!("{}/api/save", s.url)).header("cookie", &sess).json(&save).send().await.unwrap();
    assert_eq!(r.status(), 403, "save without the CSRF header");
    let r = c.post(format!("{}/api/save", s.url)).header("cookie", &sess).header("x-csrf-token", &csrf).json(&save).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(format!("{}/api/save", s.url)).header("cookie", &sess).header("x-csrf-token", &csrf).json(&save).send().await.unwrap();
    assert_eq!(r.status(), 409, "stale version");
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["current"]["value"].as_str(), v["current"]["version"].as_i64(), v["current"]["updated_by"].as_str()), (Some("1"), Some(1), Some("alice")));
    for (body, field) in [
        (json!({"item_id": ITEM, "slot": "final", "key": "step:99", "value": "1", "version": 1}), "key"),
        (json!({"item_id": ITEM, "slot": "final", "key": "step:1", "value": "yes", "version": 1}), "value"),
        (json!({"item_id": "nope", "slot": "final", "key": "step:1", "value": "1", "version": 1}), "item_id"),
        (json!({"item_id": ITEM, "slot": "other", "key": "step:1", "value": "1", "version": 1}), "slot"),
    ] {
        let r = c.post(format!("{}/api/save", s.url)).header("cookie", &sess).header("x-csrf-token", &csrf).json(&body).send().await.unwrap();
        assert!(r.status() == 400 || r.status() == 404, "{body}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().starts_with(field), "{e}");
    }

    // Login rate limit: three failures, then even the right password is refused for a while.
    for _ in 0..3 {
        assert_eq!(login(&c, &s.url, "alice", "wrong-password").await.status(), 401);
    }
    let r = login(&c, &s.url, "alice", "alice-password").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    drop(s);

    // Behind TLS the session cookie is Secure.
    let s = Review::start(&db, &["--secure-cookies"]);
    let r = login(&c, &s.url, "alice", "alice-password").await;
    let set = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).find(|v| v.starts_with("medprm_review=")).unwrap();
    assert!(set.ends_with("; Secure"), "{set}");
}

#[test]
fn add_user_refuses_short_and_argv_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let db = label_store(dir.path());
    let o = Command::new(bin()).args(["review", "add-user", "--db"]).arg(&db).args(["--name", "a", "--password", "x"]).output().unwrap();
    assert!(!o.status.success(), "a --password flag must not exist");
    let pwf = dir.path().join("pw");
    std::fs::write(&pwf, "short\n").unwrap();
    let o = Command::new(bin()).args(["review", "add-user", "--db"]).arg(&db).args(["--name", "a", "--password-file"]).arg(&pwf).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("password: at least 8"), "{o:?}");
    std::fs::write(&pwf, "long-enough-pw\n").unwrap();
    let o = Command::new(bin()).args(["review", "add-user", "--db"]).arg(&db).args(["--name", "a", "--password-file"]).arg(&pwf).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let o = Command::new(bin()).args(["review", "add-user", "--db"]).arg(&db).args(["--name", "a", "--password-file"]).arg(&pwf).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"), "{o:?}");
    let o = Command::new(bin()).args(["review", "--db"]).arg(dir.path().join("missing.sqlite")).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such file"), "{o:?}");
}

/// The venv Python with pinned selenium (`make browser-venv`).
fn browser_python() -> String {
    let p = std::env::var("MEDPRM_BROWSER_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("MEDPRM_HOME").unwrap_or_else(|_| format!("{}/.cache/medprm", std::env::var("HOME").unwrap()));
        format!("{home}/venv-browser/bin/python")
    });
    assert!(Path::new(&p).exists(), "{p} missing: run `make browser-venv` (make test does)");
    p
}

#[test]
fn reviewer_in_a_real_browser() {
    assert!(Path::new("/usr/bin/chromedriver").exists(), "/usr/bin/chromedriver missing: run `make browser` (make test does; needs root and apt)");
    let python = browser_python();
    let dir = tempfile::tempdir().unwrap();
    let db = label_store(dir.path());
    add_user(&db, "alice", "alice-password");
    add_user(&db, "bob", "bob-password-2");
    let s = Review::start(&db, &[]);
    // MEDPRM_REVIEW_SCREENSHOT=docs/review-item.png refreshes the README's screenshot.
    let shot = std::env::var("MEDPRM_REVIEW_SCREENSHOT").map(PathBuf::from).unwrap_or_else(|_| dir.path().join("item.png"));
    let comment = "Step 4 ignores that CURB-65 >= 3 needs hospital care; <b>not</b> bold";
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/review.py"))
        .env("REVIEW_URL", &s.url)
        .env("REVIEW_ITEM", ITEM)
        .env("REVIEW_XSS_ITEM", XSS_ITEM)
        .env("REVIEW_USERS", "alice:alice-password,bob:bob-password-2")
        .env("REVIEW_SCREENSHOT", &shot)
        .env("REVIEW_COMMENT", comment)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "browser script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("browser: all checks passed"));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot");
    drop(s);

    // Export: the keyboard labels (alice's, kept through bob's refused stale save) replace the uncertain ones.
    let train = dir.path().join("train.jsonl");
    let o = Command::new(bin()).args(["review", "export", "--db"]).arg(&db).arg("--out").arg(&train).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("4 items, 15 steps") && summary.contains("label_source: expert 3, hybrid 8, uncertain 4"), "{summary}");
    let recs: Vec<Value> = std::fs::read_to_string(&train).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let r = recs.iter().find(|r| r["item_id"] == ITEM).unwrap();
    assert_eq!(r["hybrid_label"], json!([1, 1, 1, 0, 0]));
    assert_eq!(r["label_source"], json!(["hybrid", "expert", "expert", "expert", "hybrid"]));
    assert_eq!(r["review_comments"], json!(comment));
    assert_eq!(r["review_step_accuracy"], json!(""));
    // Everything else is the record as `medprm label` wrote it.
    let orig: Value = serde_json::from_str(include_str!("data/review/items.jsonl").lines().next().unwrap()).unwrap();
    for k in ["question", "steps", "prm_hard_label", "prm_soft_label", "prm_llama_label", "evidence", "provenance", "hybrid_confidence"] {
        assert_eq!(r[k], orig[k], "{k}");
    }
}

/// A logged-in session: (cookie header, CSRF token).
async fn session(c: &reqwest::Client, url: &str, name: &str, pw: &str) -> (String, String) {
    let r = login(c, url, name, pw).await;
    assert_eq!(r.status(), 303, "login {name}");
    let set = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).find(|v| v.starts_with("medprm_review=")).unwrap();
    let cookie = set.split(';').next().unwrap().to_string();
    let html = c.get(format!("{url}/queue")).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    let csrf = html.split("name=\"csrf-token\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    (cookie, csrf)
}

async fn put(c: &reqwest::Client, url: &str, (cookie, csrf): &(String, String), slot: &str, key: &str, value: &str, version: i64) {
    let r = c
        .post(format!("{url}/api/save"))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .json(&json!({"item_id": ITEM, "slot": slot, "key": key, "value": value, "version": version}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{slot} {key}={value}: {}", r.text().await.unwrap());
}

fn export(db: &Path, out: &Path) -> (String, Value) {
    let o = Command::new(bin()).args(["review", "export", "--db"]).arg(db).arg("--out").arg(out).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let rec = std::fs::read_to_string(out).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|r| r["item_id"] == ITEM).unwrap();
    (String::from_utf8_lossy(&o.stdout).into_owned(), rec)
}

#[tokio::test]
async fn two_reviewers_per_item_disagree_then_adjudicate() {
    let dir = tempfile::tempdir().unwrap();
    let db = label_store(dir.path());
    add_user(&db, "alice", "alice-password");
    add_user(&db, "bob", "bob-password-2");
    let s = Review::start(&db, &["--reviews-per-item", "2"]);
    let c = client();
    let a = session(&c, &s.url, "alice", "alice-password").await;
    let b = session(&c, &s.url, "bob", "bob-password-2").await;
    // Each labels in their own slot (version 0 each: no conflict between them).
    for (who, labels) in [(&a, ["1", "1", "0"]), (&b, ["0", "1", "0"])] {
        for (i, v) in labels.iter().enumerate() {
            put(&c, &s.url, who, "mine", &format!("step:{}", i + 1), v, 0).await;
        }
    }
    let q = c.get(format!("{}/queue?status=adjudicate", s.url)).header("cookie", &a.0).send().await.unwrap().text().await.unwrap();
    assert!(q.contains(">review-fixture:0:0<") && !q.contains(">review-fixture:1:0<"), "{q}");
    assert!(q.contains("1 need adjudication"), "{q}");
    let q = c.get(format!("{}/queue?source=medmcqa", s.url)).header("cookie", &a.0).send().await.unwrap().text().await.unwrap();
    assert!(q.contains(">review-fixture:1:0<") && !q.contains(">review-fixture:0:0<"), "data source filter: {q}");
    let q = c.get(format!("{}/queue?reviewer=bob", s.url)).header("cookie", &a.0).send().await.unwrap().text().await.unwrap();
    assert!(q.contains(">review-fixture:0:0<") && !q.contains(">review-fixture:1:0<"), "reviewer filter: {q}");
    let item = c.get(format!("{}/item?id=review-fixture%3A0%3A0", s.url)).header("cookie", &a.0).send().await.unwrap().text().await.unwrap();
    assert!(item.contains("data-slot=\"mine\"") && item.contains("adjudicate=1"), "own slot, with a link to adjudicate");
    // Agreed steps are expert labels already; the disputed one stays uncertain.
    let (_, rec) = export(&db, &dir.path().join("t1.jsonl"));
    assert_eq!(rec["label_source"], json!(["hybrid", "uncertain", "expert", "expert", "hybrid"]));
    assert_eq!(rec["hybrid_label"], json!([1, null, 1, 0, 0]));
    // Kappa of alice (1,1,0) and bob (0,1,0): po 2/3, pe 2/3·1/3 + 1/3·2/3 = 4/9, kappa 0.4.
    let st = c.get(format!("{}/stats", s.url)).header("cookie", &a.0).send().await.unwrap().text().await.unwrap();
    assert!(st.contains("<tr><td>alice</td><td>bob</td><td>3</td><td>0.667</td><td>0.400</td></tr>"), "{st}");
    // Alice vs MC hard labels (1,1,0 on steps 2-4): all agree → kappa 1.
    assert!(st.contains("<tr><td>alice</td><td>MC (hard)</td><td>3</td><td>1.000</td><td>1.000</td></tr>"), "{st}");
    // Adjudication writes the final slot.
    put(&c, &s.url, &a, "final", "step:1", "1", 0).await;
    let q = c.get(format!("{}/queue?status=done", s.url)).header("cookie", &a.0).send().await.unwrap().text().await.unwrap();
    assert!(q.contains(">review-fixture:0:0<"), "{q}");
    let (line, rec) = export(&db, &dir.path().join("t2.jsonl"));
    assert_eq!(rec["hybrid_label"], json!([1, 1, 1, 0, 0]));
    assert!(line.contains("expert 3"), "{line}");
    // A record the page cannot show is named, not hidden behind a generic error.
    rusqlite::Connection::open(&db).unwrap().execute("INSERT INTO label_items VALUES ('broken:0:0', 'x', 1, 1, '{not json', '2026-12-01T00:00:00Z')", []).unwrap();
    let r = c.get(format!("{}/queue", s.url)).header("cookie", &a.0).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let t = r.text().await.unwrap();
    assert!(t.contains("\"broken:0:0\"") && t.contains("record_json is not JSON"), "{t}");
    let o = Command::new(bin()).args(["review", "export", "--db"]).arg(&db).arg("--out").arg(dir.path().join("t3.jsonl")).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("broken:0:0"), "{o:?}");
    assert!(!dir.path().join("t3.jsonl").exists() && !dir.path().join("t3.jsonl.partial").exists(), "a failed export leaves no file");
}
