//! `medprm review`: expert review in the browser of the uncertain steps `medprm label` left in
//! its SQLite store (`label_items`), with accounts, versioned saves, an audit log, agreement
//! statistics and the export of the final training JSONL.

pub mod auth;
pub mod export;
pub mod item;
pub mod pages;
pub mod routes;
pub mod stats;
pub mod store;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReviewArgs {
    #[command(subcommand)]
    pub command: Option<ReviewCommand>,
    /// The SQLite store `medprm label --db` wrote (its review_* tables are added here).
    #[arg(long, global = true)]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; put a TLS front end before anything else).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: a free one; the listening line says which).
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// Reviewers per item; with more than one, each labels on their own and disagreements are
    /// flagged for adjudication.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub reviews_per_item: u64,
    /// Mark cookies Secure (set this when a TLS front end serves the app).
    #[arg(long, alias = "behind-tls")]
    pub secure_cookies: bool,
    /// Failed logins per client address or user name within --login-window-s before logins are refused.
    #[arg(long, default_value_t = 10)]
    pub login_max_failures: usize,
    /// The window (seconds) failed logins are counted over.
    #[arg(long, default_value_t = 600)]
    pub login_window_s: u64,
    /// Directory the records' relative image paths are resolved against (the directory of the
    /// input file `medprm label` read); default: the current directory.
    #[arg(long, default_value = ".")]
    pub image_root: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ReviewCommand {
    /// Create a reviewer account; the password is read from stdin (first line) or --password-file.
    AddUser {
        #[arg(long)]
        name: String,
        /// A file whose first line is the password (else stdin).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Set a new password for an existing user.
        #[arg(long)]
        replace: bool,
    },
    /// Write the training JSONL: expert labels replace uncertain ones, review_* columns filled.
    Export {
        #[arg(long)]
        out: PathBuf,
    },
}

fn db(a: &ReviewArgs) -> anyhow::Result<&PathBuf> {
    a.db.as_ref().ok_or_else(|| anyhow::anyhow!("--db: the label store to review is required (the file `medprm label --db` wrote)"))
}

pub fn run(a: ReviewArgs) -> anyhow::Result<()> {
    let path = db(&a)?.clone();
    match a.command {
        Some(ReviewCommand::AddUser { name, password_file, replace }) => add_user(&path, &name, password_file, replace),
        Some(ReviewCommand::Export { out }) => {
            let st = store::Store::open(&path)?;
            let per_item = st.setting("reviews_per_item")?.and_then(|v| v.parse().ok()).unwrap_or(1);
            let s = export::export(&st, &out, per_item)?;
            println!("{}", s.line(&out));
            Ok(())
        }
        None => serve(&path, a.serve),
    }
}

fn add_user(path: &std::path::Path, name: &str, password_file: Option<PathBuf>, replace: bool) -> anyhow::Result<()> {
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 64 && !name.chars().any(char::is_control),
        "--name: 1 to 64 characters, no control characters"
    );
    let line = match password_file {
        Some(f) => std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("--password-file {}: {e}", f.display()))?.lines().next().unwrap_or("").to_string(),
        None => {
            let mut l = String::new();
            std::io::stdin().lock().read_line(&mut l)?;
            l
        }
    };
    let pw = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(
        pw.chars().count() >= auth::MIN_PASSWORD_CHARS,
        "password: at least {} characters (read from {})",
        auth::MIN_PASSWORD_CHARS,
        "stdin or --password-file"
    );
    let st = store::Store::open(path)?;
    st.put_user(name, &auth::hash_password(pw)?, replace)?;
    println!("review: user {name:?} {} in {}", if replace { "updated" } else { "created" }, path.display());
    Ok(())
}

fn serve(path: &std::path::Path, a: ServeArgs) -> anyhow::Result<()> {
    let st = store::Store::open(path)?;
    st.set_setting("reviews_per_item", &a.reviews_per_item.to_string())?;
    let n_users = st.users()?.len();
    let n_items = st.queue_items()?.len();
    if n_users == 0 {
        tracing::warn!("no reviewer accounts yet: create one with `medprm review add-user --db {} --name NAME`", path.display());
    }
    let state = Arc::new(routes::ReviewState {
        store: Mutex::new(st),
        env: pages::env(),
        limit: auth::RateLimit::new(a.login_max_failures.max(1), Duration::from_secs(a.login_window_s.max(1))),
        per_item: a.reviews_per_item as usize,
        secure_cookies: a.secure_cookies,
        image_root: a.image_root.clone(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", a.host, a.port).parse().map_err(|e| anyhow::anyhow!("--host/--port: {e}"))?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?;
        let local = listener.local_addr()?;
        // Parsed by tests: keep the format.
        println!("medprm review listening on http://{local}");
        tracing::info!(%local, items = n_items, users = n_users, "review app listening");
        let app = routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(crate::server::shutdown_signal())
            .await?;
        anyhow::Ok(())
    })?;
    // The store closes here: SQLite checkpoints the WAL into the main file.
    tracing::info!("stopped");
    Ok(())
}
