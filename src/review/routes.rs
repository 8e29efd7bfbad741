//! The review web app's routes. Pages without a session redirect to /login, the API answers 401;
//! every POST carries the session's CSRF token (header `x-csrf-token` or form field `csrf`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use minijinja::Environment;
use serde::Deserialize;
use serde_json::json;

use super::auth::{self, RateLimit};
use super::item::{self, Cells, Status, FINAL};
use super::pages;
use super::stats;
use super::store::{Store, User, MAX_FIELD_CHARS, REVIEW_FIELDS};

pub struct ReviewState {
    pub store: Mutex<Store>,
    pub env: Environment<'static>,
    pub limit: RateLimit,
    pub per_item: usize,
    pub secure_cookies: bool,
    /// What relative image paths of the records are resolved against.
    pub image_root: std::path::PathBuf,
}

type St = State<Arc<ReviewState>>;

pub fn router(state: Arc<ReviewState>) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(|| async { Redirect::to("/queue") }))
        .route("/queue", get(queue))
        .route("/item", get(item_page))
        .route("/item/image", get(item_image))
        .route("/stats", get(stats_page))
        .route("/api/save", post(save))
        .route("/api/item", get(api_item))
        .route("/static/review.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("static/review.js")) }))
        .route("/static/review.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("static/review.css")) }))
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// No framing, no sniffing, no referrer, scripts and styles from this origin only (inline
/// scripts would not run even if escaping failed), no caching of pages with record text.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn api_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("review: {e}");
    api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the server log)")
}

/// A record in label_items that cannot be shown: the message names the item.
fn bad_record(e: String) -> Response {
    tracing::error!("review: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, e).into_response()
}

fn store(s: &ReviewState) -> std::sync::MutexGuard<'_, Store> {
    s.store.lock().unwrap_or_else(|e| e.into_inner())
}

/// The session's user and CSRF token.
fn session(s: &ReviewState, headers: &HeaderMap) -> Option<(User, String)> {
    let tok = auth::cookie(headers, auth::SESSION_COOKIE)?;
    store(s).session(&auth::token_hash(tok)).ok().flatten()
}

/// The signed-in reviewer of a page: without a session the page redirects to /login.
struct Reviewer {
    user: User,
    csrf: String,
}

impl FromRequestParts<Arc<ReviewState>> for Reviewer {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<ReviewState>) -> Result<Self, Self::Rejection> {
        session(s, &parts.headers).map(|(user, csrf)| Reviewer { user, csrf }).ok_or_else(|| Redirect::to("/login"))
    }
}

/// The signed-in reviewer of an API call: without a session, 401 JSON.
struct ApiReviewer(Reviewer);

impl FromRequestParts<Arc<ReviewState>> for ApiReviewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<ReviewState>) -> Result<Self, Self::Rejection> {
        session(s, &parts.headers)
            .map(|(user, csrf)| ApiReviewer(Reviewer { user, csrf }))
            .ok_or_else(|| api_error(StatusCode::UNAUTHORIZED, "log in first"))
    }
}

/// A query string; a malformed one is answered 400 with what is wrong.
struct Q<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, s)
            .await
            .map(|Query(q)| Q(q))
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("query: {e}")).into_response())
    }
}

fn render(s: &ReviewState, name: &str, ctx: serde_json::Value) -> Response {
    match s.env.get_template(name).and_then(|t| t.render(minijinja::value::Serde(&ctx))) {
        Ok(html) => Html(html).into_response(),
        Err(e) => internal(e),
    }
}

// ---- login ----

async fn login_page(State(s): St, headers: HeaderMap) -> Response {
    if session(&s, &headers).is_some() {
        return Redirect::to("/queue").into_response();
    }
    login_form(&s, None, StatusCode::OK)
}

fn login_form(s: &ReviewState, error: Option<&str>, status: StatusCode) -> Response {
    let tok = auth::random_token();
    let mut r = render(s, "login.html", json!({"login_csrf": tok, "error": error, "user": null, "csrf": null}));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(auth::LOGIN_COOKIE, &tok, 3600, s.secure_cookies)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn login(State(s): St, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, f: Result<Form<LoginForm>, FormRejection>) -> Response {
    let Ok(Form(f)) = f else { return login_form(&s, Some("The login form was not sent as a form: try again."), StatusCode::BAD_REQUEST) };
    let cookie_tok = auth::cookie(&headers, auth::LOGIN_COOKIE).unwrap_or("");
    if cookie_tok.is_empty() || !auth::same(cookie_tok, &f.csrf) {
        return login_form(&s, Some("The login form expired: try again."), StatusCode::FORBIDDEN);
    }
    let keys = vec![format!("ip:{}", peer.ip()), format!("user:{}", f.name)];
    if let Some(wait) = s.limit.blocked(&keys) {
        let _ = store(&s).audit(None, "login-rate-limited", None, None, None, None, Some(&f.name));
        let mut r = login_form(&s, Some(&format!("Too many failed logins: try again in {wait} s.")), StatusCode::TOO_MANY_REQUESTS);
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return r;
    }
    let found = match store(&s).user_hash(&f.name) {
        Ok(u) => u,
        Err(e) => return internal(e),
    };
    let (id, hash) = found.clone().unwrap_or((-1, auth::dummy_hash().to_string()));
    let pw = f.password.clone();
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&pw, &hash)).await.unwrap_or(false) && found.is_some();
    if !ok {
        s.limit.fail(&keys);
        let _ = store(&s).audit(None, "login-failed", None, None, None, None, Some(&f.name));
        return login_form(&s, Some("Wrong user name or password."), StatusCode::UNAUTHORIZED);
    }
    s.limit.succeed(&keys[1]);
    let tok = auth::random_token();
    if let Err(e) = store(&s).create_session(&auth::token_hash(&tok), id, &auth::random_token(), auth::SESSION_TTL_S) {
        return internal(e);
    }
    let mut r = Redirect::to("/queue").into_response();
    for c in [auth::set_cookie(auth::SESSION_COOKIE, &tok, auth::SESSION_TTL_S, s.secure_cookies), auth::set_cookie(auth::LOGIN_COOKIE, "", 0, s.secure_cookies)] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(s): St, Reviewer { user, csrf }: Reviewer, headers: HeaderMap, f: Result<Form<CsrfForm>, FormRejection>) -> Response {
    let f = f.map(|Form(f)| f).unwrap_or(CsrfForm { csrf: String::new() });
    if !auth::same(&csrf, &f.csrf) {
        return api_error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    if let Some(tok) = auth::cookie(&headers, auth::SESSION_COOKIE) {
        if let Err(e) = store(&s).delete_session(&auth::token_hash(tok), user.id) {
            return internal(e);
        }
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(auth::SESSION_COOKIE, "", 0, s.secure_cookies)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

// ---- queue ----

/// One queue row with what the filters and progress need.
struct Row {
    item: super::store::LabelItem,
    uncertain: Vec<usize>,
    cells: Cells,
    status: Status,
}

fn rows(s: &ReviewState) -> Result<(Vec<Row>, BTreeMap<i64, String>), String> {
    let st = store(s);
    let items = st.queue_items().map_err(|e| e.to_string())?;
    let mut vals: BTreeMap<String, Vec<super::store::Value>> = BTreeMap::new();
    for v in st.all_values().map_err(|e| e.to_string())? {
        vals.entry(v.item_id.clone()).or_default().push(v);
    }
    let users: BTreeMap<i64, String> = st.users().map_err(|e| e.to_string())?.into_iter().map(|u| (u.id, u.name)).collect();
    drop(st);
    let mut out = Vec::new();
    for it in items {
        let rec = item::parse(&it)?;
        let uncertain = item::uncertain(&rec);
        let cells = Cells::from_values(vals.get(&it.item_id).map(|v| v.as_slice()).unwrap_or_default());
        let status = item::status(&uncertain, &cells, s.per_item);
        out.push(Row { item: it, uncertain, cells, status });
    }
    Ok((out, users))
}

#[derive(Deserialize, Default)]
struct QueueQuery {
    #[serde(default)]
    source: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reviewer: String,
}

async fn queue(State(s): St, Reviewer { user, csrf }: Reviewer, Q(q): Q<QueueQuery>) -> Response {
    let (rows, users) = match rows(&s) {
        Ok(r) => r,
        Err(e) => return bad_record(e),
    };
    let total = rows.len();
    let done = rows.iter().filter(|r| r.status == Status::Done).count();
    let adjudicate = rows.iter().filter(|r| r.status == Status::Adjudicate).count();
    let mut sources: Vec<String> = rows.iter().map(|r| r.item.data_source.clone()).collect();
    sources.sort();
    sources.dedup();
    // Per reviewer: items whose uncertain steps they all labelled (own slot, or final values they
    // saved with one reviewer per item), and the step labels they hold.
    let reviewers: Vec<serde_json::Value> = users
        .iter()
        .map(|(id, name)| {
            let mut done_items = 0;
            let mut steps = 0;
            for r in &rows {
                let complete = if s.per_item > 1 {
                    item::slot_complete(&r.uncertain, &r.cells, *id)
                } else {
                    r.status == Status::Done
                        && r.uncertain.iter().all(|i| r.cells.get(FINAL, &item::step_key(*i)).is_some_and(|v| &v.updated_by == name))
                };
                done_items += complete as usize;
                for (slot, m) in &r.cells.0 {
                    steps += m
                        .values()
                        .filter(|v| v.key.starts_with("step:") && !v.value.is_empty() && (*slot == *id || (*slot == FINAL && &v.updated_by == name)))
                        .count();
                }
            }
            let left = if s.per_item > 1 { total - done_items } else { total - done };
            json!({"name": name, "done": done_items, "left": left, "steps": steps})
        })
        .collect();
    let items: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| q.source.is_empty() || r.item.data_source == q.source)
        .filter(|r| q.status.is_empty() || r.status.as_str() == q.status)
        .filter(|r| q.reviewer.is_empty() || r.cells.editors().contains(&q.reviewer))
        .map(|r| {
            json!({"item_id": r.item.item_id, "url": format!("/item?id={}", pages::urlencode(&r.item.item_id)), "data_source": r.item.data_source, "num_steps": r.item.num_steps, "n_uncertain": r.uncertain.len(),
                   "status": r.status.as_str(), "editors": r.cells.editors().into_iter().collect::<Vec<_>>()})
        })
        .collect();
    let statuses = ["todo", "in-progress", "adjudicate", "done"];
    render(
        &s,
        "queue.html",
        json!({"user": user.name, "csrf": csrf, "total": total, "done": done, "adjudicate": adjudicate, "per_item": s.per_item,
               "reviewers": reviewers, "sources": sources, "statuses": statuses, "items": items,
               "f_source": q.source, "f_status": q.status, "f_reviewer": q.reviewer}),
    )
}

// ---- item ----

#[derive(Deserialize)]
struct ItemQuery {
    #[serde(default)]
    id: String,
    #[serde(default)]
    adjudicate: Option<String>,
}

/// The slot a user edits: the final one with one reviewer per item or when adjudicating, else
/// their own.
fn slot_for(s: &ReviewState, user: &User, slot_name: &str) -> i64 {
    if s.per_item <= 1 || slot_name == "final" {
        FINAL
    } else {
        user.id
    }
}

async fn item_page(State(s): St, Reviewer { user, csrf }: Reviewer, Q(q): Q<ItemQuery>) -> Response {
    let (rows, users) = match rows(&s) {
        Ok(r) => r,
        Err(e) => return bad_record(e),
    };
    let it = match store(&s).item(&q.id) {
        Ok(Some(it)) => it,
        Ok(None) => return (StatusCode::NOT_FOUND, format!("no item {:?} in label_items", q.id)).into_response(),
        Err(e) => return internal(e),
    };
    let rec = match item::parse(&it) {
        Ok(r) => r,
        Err(e) => return bad_record(e),
    };
    let history = match store(&s).item_history(&it.item_id, 200) {
        Ok(h) => h,
        Err(e) => return internal(e),
    };
    let cells = Cells::from_values(&store(&s).item_values(&it.item_id).unwrap_or_default());
    let slot_name = if s.per_item <= 1 || q.adjudicate.is_some() { "final" } else { "mine" };
    let slot = slot_for(&s, &user, slot_name);
    let uncertain = item::uncertain(&rec);
    let status = item::status(&uncertain, &cells, s.per_item);
    // Next: the first item after this one (wrapping) that still needs this user.
    let pos = rows.iter().position(|r| r.item.item_id == it.item_id);
    let needs = |r: &Row| {
        if s.per_item > 1 {
            !item::slot_complete(&r.uncertain, &r.cells, user.id) && r.status != Status::Done
        } else {
            r.status != Status::Done
        }
    };
    let start = pos.map_or(0, |p| p + 1);
    let next = (0..rows.len()).map(|k| &rows[(start + k) % rows.len()]).find(|r| r.item.item_id != it.item_id && needs(r));
    let next_url = next.map(|r| format!("/item?id={}", pages::urlencode(&r.item.item_id))).unwrap_or_default();
    let adjudicate_url = if s.per_item > 1 && status == Status::Adjudicate && slot != FINAL {
        format!("/item?id={}&adjudicate=1", pages::urlencode(&it.item_id))
    } else {
        String::new()
    };
    let mut ctx = pages::item_context(&pages::ItemPage {
        item_id: &it.item_id,
        data_source: &it.data_source,
        rec: &rec,
        cells: &cells,
        slot,
        slot_name,
        per_item: s.per_item,
        status: status.as_str(),
        users: &users,
        history: &history,
        next_url,
        adjudicate_url,
    });
    ctx["user"] = json!(user.name);
    ctx["csrf"] = json!(csrf);
    render(&s, "item.html", ctx)
}

#[derive(Deserialize)]
struct ImageQuery {
    #[serde(default)]
    id: String,
    #[serde(default)]
    k: String,
}

/// An image the record names by `path` (the label store is trusted: `medprm label` copied the
/// input's paths; relative ones are resolved against `--image-root`). PNG, JPEG, GIF and WebP are
/// sent as they are (never sniffed); DICOM is decoded by [`crate::image::decode`] (windowed to
/// 8 bit, as the model sees it) and sent as PNG.
async fn item_image(State(s): St, _: Reviewer, Q(q): Q<ImageQuery>) -> Response {
    let it = match store(&s).item(&q.id) {
        Ok(Some(it)) => it,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such item").into_response(),
        Err(e) => return internal(e),
    };
    let Ok(k) = q.k.parse::<usize>() else { return (StatusCode::BAD_REQUEST, "k: an image index").into_response() };
    let Ok(rec) = item::parse(&it) else { return (StatusCode::NOT_FOUND, "no such image").into_response() };
    let im = &rec["images"][k];
    let mt = im["media_type"].as_str().unwrap_or("").to_string();
    let (Some(path), true) = (im["path"].as_str(), pages::IMAGE_PATH_TYPES.contains(&mt.as_str())) else {
        return (StatusCode::NOT_FOUND, "no such image").into_response();
    };
    let path = s.image_root.join(path);
    let res = tokio::task::spawn_blocking(move || -> Result<(String, Vec<u8>), String> {
        let bytes = std::fs::read(&path).map_err(|e| format!("image {}: {e}", path.display()))?;
        if mt != "application/dicom" {
            return Ok((mt, bytes));
        }
        let img = crate::image::decode(&bytes, &mt, 64 << 20).map_err(|e| format!("image {}: {e}", path.display()))?;
        Ok(("image/png".into(), png_bytes(&img).map_err(|e| format!("image {}: {e}", path.display()))?))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match res {
        Ok((mt, b)) => ([(header::CONTENT_TYPE, mt)], b).into_response(),
        Err(e) => (StatusCode::NOT_FOUND, e).into_response(),
    }
}

fn png_bytes(img: &crate::image::Rgb8) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(img.as_raw())?;
    w.finish()?;
    Ok(out)
}

// ---- API ----

#[derive(Deserialize)]
struct SaveBody {
    item_id: String,
    slot: String,
    key: String,
    value: String,
    version: i64,
}

async fn save(State(s): St, ApiReviewer(Reviewer { user, csrf }): ApiReviewer, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !auth::same(&csrf, sent) {
        return api_error(StatusCode::FORBIDDEN, "missing or wrong CSRF token (header x-csrf-token)");
    }
    let b: SaveBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    if !matches!(b.slot.as_str(), "final" | "mine") {
        return api_error(StatusCode::BAD_REQUEST, format!("slot: {:?} is not \"final\" or \"mine\"", b.slot));
    }
    if b.version < 0 {
        return api_error(StatusCode::BAD_REQUEST, "version: must be >= 0");
    }
    let it = match store(&s).item(&b.item_id) {
        Ok(Some(it)) => it,
        Ok(None) => return api_error(StatusCode::NOT_FOUND, format!("item_id: no item {:?}", b.item_id)),
        Err(e) => return internal(e),
    };
    if let Some(i) = b.key.strip_prefix("step:") {
        match i.parse::<i64>() {
            Ok(i) if (0..it.num_steps).contains(&i) && i.to_string() == b.key[5..] => {}
            _ => return api_error(StatusCode::BAD_REQUEST, format!("key: {:?} is not a step of this item (step:0..step:{})", b.key, it.num_steps - 1)),
        }
        if !matches!(b.value.as_str(), "1" | "0" | "") {
            return api_error(StatusCode::BAD_REQUEST, "value: a step label is \"1\", \"0\" or \"\" (cleared)");
        }
    } else if !REVIEW_FIELDS.contains(&b.key.as_str()) {
        return api_error(StatusCode::BAD_REQUEST, format!("key: {:?} is neither step:<i> nor one of {}", b.key, REVIEW_FIELDS.join(", ")));
    } else if b.value.chars().count() > MAX_FIELD_CHARS {
        return api_error(StatusCode::BAD_REQUEST, format!("value: longer than {MAX_FIELD_CHARS} characters"));
    }
    let slot = slot_for(&s, &user, &b.slot);
    let res = store(&s).save(&b.item_id, slot, &b.key, &b.value, b.version, &user);
    match res {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(c)) => (
            StatusCode::CONFLICT,
            Json(json!({"error": format!("{} changed {} since you read it (version {} now, you read {})", c.current.updated_by, c.current.key, c.current.version, b.version), "current": c.current})),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

/// The saved values of an item (every slot) as JSON.
async fn api_item(State(s): St, _: ApiReviewer, Q(q): Q<ItemQuery>) -> Response {
    match store(&s).item(&q.id) {
        Ok(Some(_)) => {}
        Ok(None) => return api_error(StatusCode::NOT_FOUND, format!("id: no item {:?}", q.id)),
        Err(e) => return internal(e),
    }
    match store(&s).item_values(&q.id) {
        Ok(v) => Json(json!({"item_id": q.id, "values": v})).into_response(),
        Err(e) => internal(e),
    }
}

// ---- stats ----

async fn stats_page(State(s): St, Reviewer { user, csrf }: Reviewer) -> Response {
    let (rows, users) = match rows(&s) {
        Ok(r) => r,
        Err(e) => return bad_record(e),
    };
    let mut data = Vec::new();
    for r in rows {
        match item::parse(&r.item) {
            Ok(record) => data.push(stats::ItemData { record, cells: r.cells }),
            Err(e) => return bad_record(e),
        }
    }
    let (pairs, auto) = stats::compute(&data, &users);
    let fmt = |a: &stats::Agreement| {
        let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3}"));
        json!({"a": a.a, "b": a.b, "n": a.n, "observed": f(a.observed), "kappa": f(a.kappa)})
    };
    render(
        &s,
        "stats.html",
        json!({"user": user.name, "csrf": csrf, "pairs": pairs.iter().map(fmt).collect::<Vec<_>>(), "auto": auto.iter().map(fmt).collect::<Vec<_>>()}),
    )
}
