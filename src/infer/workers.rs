//! Threads for prompt building, tokenization and retrieval: CPU work kept off the async runtime.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

type Task = Box<dyn FnOnce() + Send>;

pub struct Workers {
    tx: Mutex<Sender<Task>>,
}

impl Workers {
    pub fn new(n: usize) -> Self {
        let (tx, rx) = channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("medprm-tokenize-{i}"))
                .spawn(move || loop {
                    let task = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match task {
                        Ok(t) => t(),
                        Err(_) => return,
                    }
                })
                .expect("spawn tokenization worker");
        }
        Workers { tx: Mutex::new(tx) }
    }

    /// Runs `f` on a worker; `None` if the worker panicked.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move || {
            if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let _ = tx.send(v);
            }
        });
        self.tx.lock().ok()?.send(task).ok()?;
        rx.await.ok()
    }
}
