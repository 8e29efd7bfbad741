//! The dynamic batcher: a queue thread that assembles batches and a backend thread that owns the
//! model.
//!
//! * A job is one request: all its candidates. Batches take whole jobs in arrival order while the
//!   padded size (longest prompt × sequences) fits `max_batch_tokens` and the sequence count fits
//!   `max_batch_requests`; the first job that does not fit waits for the next batch (FIFO, no
//!   overtaking). A job too large for any batch runs alone, split into budget-sized passes.
//! * With `max_queue_delay` > 0 the queue holds a batch that is not full for at most that long
//!   after its oldest job arrived, so concurrent requests can join it.
//! * Jobs whose client went away (the reply channel is closed) are dropped before they reach the
//!   model.
//! * If a forward pass fails, the jobs of that batch are retried one by one, so one bad request
//!   cannot fail another client's.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Engine, Pass};
use crate::prompt::Prompt;

use crate::metrics::Metrics;

pub struct Job {
    pub prompts: Vec<Prompt>,
    /// Leading tokens all prompts share (0: score them whole). Such a job is one unit: its
    /// prefix runs once and its suffixes reuse the prefix K/V.
    pub shared_prefix: usize,
    pub enqueued: Instant,
    pub reply: tokio::sync::oneshot::Sender<JobResult>,
}

impl Job {
    fn max_len(&self) -> usize {
        self.prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0)
    }
    /// Tokens the forward passes of this job compute (a shared prefix counted once).
    pub fn compute_tokens(&self) -> usize {
        self.tokens() - self.shared_prefix * self.prompts.len().saturating_sub(1)
    }
    fn tokens(&self) -> usize {
        self.prompts.iter().map(|p| p.ids.len()).sum()
    }
    fn cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

#[derive(Debug)]
pub struct JobResult {
    /// The job's prompts, handed back for the response.
    pub prompts: Vec<Prompt>,
    pub scores: Result<Vec<Vec<f32>>, String>,
    pub queue_time: Duration,
    pub inference_time: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch_tokens: usize,
    pub max_batch_requests: usize,
    pub max_queue_delay: Duration,
    /// Tests only (`--fault-injection`): a prompt holding [`FAULT_MARKER`] makes the model panic.
    pub fault_injection: bool,
}

/// The text that, with `--fault-injection`, makes the model panic on the prompt holding it.
pub const FAULT_MARKER: &str = "MEDPRM_FAULT_PANIC";

enum Cmd {
    Append(Job),
    NextBatch(Sender<Vec<Job>>),
}

#[derive(Clone)]
pub struct Queue {
    tx: Sender<Cmd>,
}

impl Queue {
    pub fn spawn(cfg: BatchConfig, metrics: Arc<Metrics>) -> Queue {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("medprm-queue".into())
            .spawn(move || queue_loop(rx, cfg, metrics))
            .expect("spawn queue thread");
        Queue { tx }
    }

    pub fn append(&self, job: Job) {
        // The queue thread lives as long as any Queue handle.
        let _ = self.tx.send(Cmd::Append(job));
    }

    /// Blocks until a batch is ready; `None` when the queue is gone.
    pub fn next_batch(&self) -> Option<Vec<Job>> {
        let (tx, rx) = channel();
        self.tx.send(Cmd::NextBatch(tx)).ok()?;
        rx.recv().ok()
    }
}

/// Takes jobs from the front while they fit; always at least one. A shared-prefix job runs
/// alone (its prefix once, then its suffixes in budget-sized passes).
fn take_batch(queue: &mut VecDeque<Job>, cfg: &BatchConfig) -> Vec<Job> {
    let mut batch: Vec<Job> = Vec::new();
    let (mut longest, mut seqs) = (0usize, 0usize);
    if queue.front().is_some_and(|j| j.shared_prefix > 0) {
        return queue.pop_front().into_iter().collect();
    }
    while let Some(job) = queue.front() {
        if job.shared_prefix > 0 {
            break;
        }
        let l = longest.max(job.max_len());
        let n = seqs + job.prompts.len();
        if !batch.is_empty() && (l * n > cfg.max_batch_tokens || n > cfg.max_batch_requests) {
            break;
        }
        (longest, seqs) = (l, n);
        batch.push(queue.pop_front().expect("front exists"));
    }
    batch
}

/// Would the front of the queue fill a batch (the next job after it would not fit)?
fn batch_full(queue: &VecDeque<Job>, cfg: &BatchConfig) -> bool {
    let (mut longest, mut seqs) = (0usize, 0usize);
    for job in queue {
        if job.shared_prefix > 0 {
            return true;
        }
        let l = longest.max(job.max_len());
        let n = seqs + job.prompts.len();
        if seqs > 0 && (l * n > cfg.max_batch_tokens || n > cfg.max_batch_requests) {
            return true;
        }
        (longest, seqs) = (l, n);
    }
    seqs >= cfg.max_batch_requests || longest * seqs >= cfg.max_batch_tokens
}

fn queue_loop(rx: Receiver<Cmd>, cfg: BatchConfig, metrics: Arc<Metrics>) {
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut waiting: Option<Sender<Vec<Job>>> = None;
    loop {
        let timeout = match (&waiting, queue.front()) {
            (Some(_), Some(oldest)) => (oldest.enqueued + cfg.max_queue_delay).saturating_duration_since(Instant::now()),
            _ => Duration::from_secs(3600),
        };
        match rx.recv_timeout(timeout) {
            Ok(Cmd::Append(job)) => queue.push_back(job),
            Ok(Cmd::NextBatch(reply)) => waiting = Some(reply),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        queue.retain(|j| !j.cancelled());
        if waiting.is_some() && !queue.is_empty() {
            let waited = queue.front().map(|j| j.enqueued.elapsed()).unwrap_or_default();
            if waited >= cfg.max_queue_delay || batch_full(&queue, &cfg) {
                let batch = take_batch(&mut queue, &cfg);
                if let Err(e) = waiting.take().expect("checked").send(batch) {
                    // The backend is gone: put the jobs back so their clients get an error.
                    for j in e.0.into_iter().rev() {
                        queue.push_front(j);
                    }
                }
            }
        }
        metrics.queue_requests.set(queue.len() as i64);
        metrics.queue_tokens.set(queue.iter().map(|j| j.compute_tokens() as i64).sum());
    }
}

/// Runs prompts through the model (their shared prefix, if any, once), recording every forward
/// pass in the metrics; a panic in the model becomes an error for these prompts only.
fn forward(engine: &Engine, prompts: &[&Prompt], prefix: usize, cfg: &BatchConfig, metrics: &Metrics) -> Result<Vec<Vec<f32>>, String> {
    let budget = cfg.max_batch_tokens;
    let mut observe = |p: Pass| {
        metrics.batch_size.observe(p.sequences as f64);
        metrics.batch_tokens.observe((p.prefix_tokens + p.padded_tokens) as f64);
        metrics.padding_ratio.observe(1.0 - p.tokens as f64 / p.padded_tokens.max(1) as f64);
        metrics.inference_duration.observe(p.seconds);
        if p.images_encoded > 0 {
            metrics.vision_duration.observe(p.vision_seconds);
            metrics.vision_images_encoded.inc_by(p.images_encoded as u64);
        }
    };
    let run = || {
        if cfg.fault_injection && prompts.iter().any(|p| p.text.contains(FAULT_MARKER)) {
            panic!("fault injection: {FAULT_MARKER} in a prompt");
        }
        engine.score_passes(prompts, prefix, budget, &mut observe)
    };
    match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the model panicked on this batch".into()),
    }
}

/// The backend thread body: owns the engine, runs batches until the queue closes.
pub fn backend_loop(engine: Engine, queue: Queue, cfg: BatchConfig, metrics: Arc<Metrics>) {
    while let Some(batch) = queue.next_batch() {
        let batch: Vec<Job> = batch.into_iter().filter(|j| !j.cancelled()).collect();
        if batch.is_empty() {
            continue;
        }
        let start = Instant::now();
        let prompts: Vec<&Prompt> = batch.iter().flat_map(|j| j.prompts.iter()).collect();
        let n_seqs = prompts.len();
        let shared = batch[0].shared_prefix;
        let results: Vec<Result<Vec<Vec<f32>>, String>> = if shared > 0 {
            metrics.shared_prefix_tokens.observe(shared as f64);
            metrics.prefix_saved_tokens.inc_by((shared * (n_seqs - 1)) as f64);
            vec![forward(&engine, &prompts, shared, &cfg, &metrics)]
        } else {
            match forward(&engine, &prompts, 0, &cfg, &metrics) {
            Ok(all) => {
                let mut it = all.into_iter();
                batch.iter().map(|j| Ok(it.by_ref().take(j.prompts.len()).collect())).collect()
            }
            Err(e) if batch.len() == 1 => vec![Err(e)],
            Err(_) => batch
                .iter()
                .map(|j| forward(&engine, &j.prompts.iter().collect::<Vec<_>>(), 0, &cfg, &metrics))
                .collect(),
            }
        };
        let inference_time = start.elapsed();
        for (job, scores) in batch.into_iter().zip(results) {
            let queue_time = start.saturating_duration_since(job.enqueued);
            metrics.queue_duration.observe(queue_time.as_secs_f64());
            let _ = job.reply.send(JobResult { prompts: job.prompts, scores, queue_time, inference_time });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(lens: &[usize]) -> Job {
        let prompts = lens
            .iter()
            .map(|&n| Prompt { text: String::new(), ids: vec![0; n], tag_rows: vec![], steps: vec![], shared_text_end: None, shared_tokens: 0, images: vec![] })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::mem::forget(rx); // keep the job "connected"
        Job { prompts, shared_prefix: 0, enqueued: Instant::now(), reply: tx }
    }

    fn cfg() -> BatchConfig {
        BatchConfig { max_batch_tokens: 1000, max_batch_requests: 8, max_queue_delay: Duration::ZERO, fault_injection: false }
    }

    #[test]
    fn takes_whole_jobs_fifo_within_padded_budget() {
        let mut q: VecDeque<Job> = [job(&[100, 100]), job(&[300]), job(&[10]), job(&[10])].into_iter().collect();
        // 300 × 3 = 900 fits; adding [10] gives 300 × 4 = 1200 > 1000.
        let b = take_batch(&mut q, &cfg());
        assert_eq!(b.iter().map(|j| j.prompts.len()).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn oversized_job_runs_alone_and_request_cap_holds() {
        let mut q: VecDeque<Job> = [job(&[2000]), job(&[10])].into_iter().collect();
        assert_eq!(take_batch(&mut q, &cfg()).len(), 1);
        let mut q: VecDeque<Job> = [job(&[1; 5]), job(&[1; 5])].into_iter().collect();
        assert_eq!(take_batch(&mut q, &cfg()).len(), 1, "10 sequences exceed the cap of 8");
        assert!(batch_full(&q, &BatchConfig { max_batch_requests: 5, ..cfg() }));
    }

    #[test]
    fn shared_prefix_jobs_run_alone() {
        let mut shared = job(&[500, 500]);
        shared.shared_prefix = 400;
        let mut q: VecDeque<Job> = [job(&[10]), shared, job(&[10])].into_iter().collect();
        assert_eq!(take_batch(&mut q, &cfg()).len(), 1, "stops before the shared job");
        let b = take_batch(&mut q, &cfg());
        assert_eq!((b.len(), b[0].shared_prefix), (1, 400));
        assert_eq!(b[0].compute_tokens(), 600);
    }

    #[test]
    fn cancelled_jobs_are_detected() {
        let (tx, rx) = tokio::sync::oneshot::channel::<JobResult>();
        drop(rx);
        let j = Job { prompts: vec![], shared_prefix: 0, enqueued: Instant::now(), reply: tx };
        assert!(j.cancelled());
    }
}
