//! Gives heap memory the server has freed back to the operating system.
//!
//! glibc's allocator keeps what it frees in its arenas (one per thread that allocated), and only
//! the top of the main heap shrinks by itself: after a flood of 1.4 MB over-limit prompts (8
//! clients, 5 s or 60 s alike) the server's RSS stayed about 40 MB above its baseline for good,
//! although nothing was still allocated. `malloc_trim(0)` returns the free pages of every arena.
//! A thread calls it every [`EVERY`] (4.4 ms measured for a call that returned the flood's
//! pages; `RUST_LOG=medprm::server::trim=debug` logs each call).

use std::time::Duration;

/// How often the free pages are returned.
pub const EVERY: Duration = Duration::from_secs(5);

/// Starts the trimming thread (glibc on Linux; other allocators return memory themselves).
pub fn spawn() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new().name("medprm-trim".into()).spawn(|| loop {
            std::thread::sleep(EVERY);
            let t = std::time::Instant::now();
            // SAFETY: malloc_trim only walks the allocator's own free lists under its locks.
            let released = unsafe { libc::malloc_trim(0) } != 0;
            tracing::debug!(released, ms = t.elapsed().as_secs_f64() * 1e3, "malloc_trim");
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the memory trimming thread; freed memory stays with the allocator");
        }
    }
}
