//! Passwords (argon2id, PHC strings), session and CSRF tokens, cookies and the login rate limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "medprm_review";
/// Name of the cookie that carries the login form's CSRF token (double submit: no session yet).
pub const LOGIN_COOKIE: &str = "medprm_review_login";
/// How long a session lives.
pub const SESSION_TTL_S: i64 = 12 * 3600;

/// Shortest password `add-user` accepts.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// An argon2id hash (PHC string) of `password` with a fresh salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash of the password "x" for running the KDF when the user does not exist (same time as a
/// wrong password: user names do not leak through timing).
pub fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("medprm-review-dummy").expect("argon2 with default parameters"))
}

/// 256 random bits as hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex(&b)
}

/// What the sessions table keys on: a hash of the cookie's token (a copy of the database does
/// not hold usable session cookies).
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Constant-time string equality (CSRF tokens).
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A Set-Cookie value: HttpOnly, SameSite=Strict, Path=/, Secure when asked; `max_age` 0 deletes.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}", if secure { "; Secure" } else { "" })
}

/// Failed logins per client address and per user name in a sliding window; a key with
/// `max_failures` failures in `window` is refused until the oldest one leaves the window.
pub struct RateLimit {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl RateLimit {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        RateLimit { max_failures, window, failures: Mutex::new(HashMap::new()) }
    }

    /// Seconds until `keys` may try again, None when none is limited.
    pub fn blocked(&self, keys: &[String]) -> Option<u64> {
        let now = Instant::now();
        let mut m = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = None;
        for k in keys {
            if let Some(v) = m.get_mut(k) {
                v.retain(|t| now.duration_since(*t) < self.window);
                if v.len() >= self.max_failures {
                    let w = self.window.saturating_sub(now.duration_since(v[0])).as_secs().max(1);
                    wait = Some(wait.map_or(w, |x: u64| x.max(w)));
                }
            }
        }
        wait
    }

    pub fn fail(&self, keys: &[String]) {
        let now = Instant::now();
        let mut m = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: forget keys whose failures all left the window once the map grows.
        if m.len() > 10_000 {
            m.retain(|_, v| v.iter().any(|t| now.duration_since(*t) < self.window));
        }
        for k in keys {
            m.entry(k.clone()).or_default().push(now);
        }
    }

    pub fn succeed(&self, user_key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(user_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn rate_limit_blocks_after_the_failures() {
        let r = RateLimit::new(3, Duration::from_secs(60));
        let k = vec!["ip:1".to_string(), "user:a".to_string()];
        for _ in 0..2 {
            r.fail(&k);
        }
        assert!(r.blocked(&k).is_none());
        r.fail(&k);
        assert!(r.blocked(&k).unwrap() > 0);
        assert!(r.blocked(&["ip:2".to_string()]).is_none());
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::COOKIE, "a=1; medprm_review=tok; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "c"), None);
        let s = set_cookie(SESSION_COOKIE, "t", 10, true);
        assert!(s.contains("HttpOnly") && s.contains("SameSite=Strict") && s.ends_with("; Secure"), "{s}");
        assert_ne!(token_hash("a"), token_hash("b"));
        assert_eq!(random_token().len(), 64);
    }
}
