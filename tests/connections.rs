//! Connection hygiene against the real binary: idle keep-alive, silent and slow-header
//! connections are closed by their timeouts, the connection cap bounds descriptors while a
//! normal request still answers, and SIGTERM closes idle and half-open connections at once
//! (tests/server.rs shows in-flight requests finishing).

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (EOF or reset); panics if it is still open after
/// `guard` (a bound far above the timeout under test, so the test never hangs).
async fn until_closed(stream: &mut TcpStream, guard: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = Instant::now() + guard;
    loop {
        match tokio::time::timeout_at(end.into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after {guard:?}; received {:?}", String::from_utf8_lossy(&got)),
        }
    }
}

#[tokio::test]
async fn idle_silent_and_slow_header_connections_are_closed() {
    let s = Server::ready(&["--header-read-timeout-s", "2", "--keep-alive-timeout-s", "1"]).await;
    let a = addr(&s);
    // A keep-alive connection left idle after one answer.
    let mut idle = TcpStream::connect(&a).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: medprm\r\n\r\n").await.unwrap();
    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(&a).await.unwrap();
    // A slowloris: its head arrives one byte at a time and never ends.
    let slow = TcpStream::connect(&a).await.unwrap();
    let (mut slow_rd, mut slow_wr) = slow.into_split();
    let trickle = tokio::spawn(async move {
        let head = b"POST /v1/score HTTP/1.1\r\nHost: medprm\r\nX-Filler: ";
        let mut sent = 0usize;
        loop {
            let byte = if sent < head.len() { head[sent] } else { b'a' };
            if slow_wr.write_all(&[byte]).await.is_err() {
                return sent;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let guard = Duration::from_secs(60);
    let answered = until_closed(&mut idle, guard).await;
    assert!(String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"), "the idle connection got its answer first");
    let silent_got = until_closed(&mut silent, guard).await;
    assert!(silent_got.is_empty() || String::from_utf8_lossy(&silent_got).starts_with("HTTP/1.1 408"));
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(guard, slow_rd.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the slow-header connection is still open after {guard:?}");
    trickle.abort();
    // The server is fine and answers a normal request.
    let r = reqwest::get(s.url("/health")).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Descriptors the server process holds (Linux).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_connection_cap_bounds_descriptors_and_a_normal_request_still_answers() {
    let cap = 4;
    let s = Server::ready(&["--max-connections", "4", "--header-read-timeout-s", "2", "--keep-alive-timeout-s", "1"]).await;
    let pid = s.child.id();
    // Let the probe's keep-alive connection close, then count.
    let base_deadline = Instant::now() + Duration::from_secs(30);
    let mut base = fds(pid);
    while Instant::now() < base_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = fds(pid);
        if now == base {
            break;
        }
        base = now;
    }
    let a = addr(&s);
    let mut silent = Vec::new();
    for _ in 0..12 {
        silent.push(TcpStream::connect(&a).await.unwrap());
    }
    // The server accepts up to the cap, then no more while those are open.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut peak = 0;
    while Instant::now() < deadline && peak < base + cap {
        peak = peak.max(fds(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peak >= base + cap, "the server accepted {} connections, expected {cap}", peak.saturating_sub(base));
    // While the 12 connections come and go (each closed by the header timeout), descriptors
    // never exceed the cap, and a normal request waiting behind them is answered.
    let c = reqwest::Client::new();
    let req = tokio::spawn({
        let url = s.url("/v1/score");
        async move { c.post(url).json(&json!({"question": "Q", "steps": ["a"]})).send().await.map(|r| r.status().as_u16()) }
    });
    while !req.is_finished() {
        let n = fds(pid);
        assert!(n <= base + cap + 1, "{n} descriptors: base {base} + cap {cap}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(req.await.unwrap().expect("answered"), 200);
    let m = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    let open: f64 = m.lines().find(|l| l.starts_with("medprm_open_connections ")).unwrap().split_whitespace().last().unwrap().parse().unwrap();
    assert!(open >= 1.0 && open <= cap as f64, "medprm_open_connections {open}");
    drop(silent);
}

#[tokio::test]
async fn sigterm_closes_idle_and_half_open_connections_at_once() {
    // Timeouts and deadline far longer than the test: only the shutdown closes these connections.
    let mut s = Server::ready(&["--header-read-timeout-s", "600", "--keep-alive-timeout-s", "600", "--shutdown-timeout-s", "600"]).await;
    let a = addr(&s);
    let mut idle = TcpStream::connect(&a).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: medprm\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut silent = TcpStream::connect(&a).await.unwrap();
    let mut slow = TcpStream::connect(&a).await.unwrap();
    slow.write_all(b"POST /v1/score HTTP/1.1\r\nHost: medprm\r\n").await.unwrap();
    s.terminate();
    let guard = Duration::from_secs(120);
    until_closed(&mut idle, guard).await;
    until_closed(&mut silent, guard).await;
    until_closed(&mut slow, guard).await;
    let code = tokio::task::spawn_blocking(move || s.child.wait().unwrap().code()).await.unwrap();
    assert_eq!(code, Some(0));
}
