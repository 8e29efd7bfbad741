//! The scoring core: every route and `medprm score` run one [`ScoreJob`] through [`Infer::score`].
//!
//! permits (429 when full) → documents (caller's, or one cached search) → prompts and tokens on a
//! worker thread → token limit → shared-prefix decision → [`queue`] → backend thread (owns the
//! model) → step scores → answers and [`crate::aggregate::rank`] → [`Scored`].
//!
//! Requests enter through [`validate`] (request → job, errors naming the field); routes only
//! translate their JSON to a [`validate::JobRequest`] and a [`Scored`] back.

pub mod job;
pub mod queue;
mod retrieve;
pub mod validate;
mod workers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::aggregate::{extract_answer, rank};
use crate::engine::{Engine, ModelInfo};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::prompt::{shared_prefix_len, Prompt, PromptBuilder, RawInput};
use crate::retrieval::{Index, Mode, Retriever};

pub use job::{Candidate, Citation, Documents, DocumentsUsed, ImageInput, ScoreJob, Scored, ScoredCandidate, ScoredPrompts, Timings, Usage};
pub use queue::BatchConfig;
pub use validate::{CandidateRequest, Candidates, ImageRequest, RetrieveOptions, JobRequest};
use workers::Workers;

/// Limits and defaults of the scoring core (`medprm serve` flags; `medprm score` lifts the
/// request limits).
#[derive(Debug, Clone)]
pub struct InferConfig {
    pub batch: BatchConfig,
    /// Candidates in flight (queued or running) before a job is refused as overloaded.
    pub max_concurrent_candidates: usize,
    /// Candidates per request.
    pub max_candidates: usize,
    /// Longest prompt accepted, in tokens.
    pub max_input_tokens: usize,
    pub tokenization_workers: usize,
    /// Run the question+documents prefix the candidates share once.
    pub prefix_sharing: bool,
    /// Whether an index is (or will be) open: retrieval requests are refused without one.
    pub retrieval: bool,
    /// Documents retrieved for requests that carry none (0: only when a request asks).
    pub retrieve_k: usize,
    pub retrieve_mode: Mode,
    /// Entries of the retrieval cache.
    pub retrieve_cache: usize,
    /// Images per request (vision models).
    pub max_images: usize,
    /// Pixels (width × height) per image, checked from the file's header before decoding.
    pub max_image_pixels: u64,
}

pub struct Infer {
    cfg: InferConfig,
    builder: OnceLock<Arc<PromptBuilder>>,
    info: OnceLock<ModelInfo>,
    retriever: OnceLock<Retriever>,
    ready: AtomicBool,
    permits: Arc<Semaphore>,
    queue: queue::Queue,
    workers: Workers,
    retrieval_cache: retrieve::RetrievalCache,
    metrics: Arc<Metrics>,
}

impl Infer {
    /// Starts the queue and the worker threads; the model arrives later ([`Infer::set_model`],
    /// [`Infer::start`]) so that a server can answer probes while it loads.
    pub fn new(cfg: InferConfig, metrics: Arc<Metrics>) -> Self {
        Infer {
            permits: Arc::new(Semaphore::new(cfg.max_concurrent_candidates)),
            queue: queue::Queue::spawn(cfg.batch, metrics.clone()),
            workers: Workers::new(cfg.tokenization_workers),
            retrieval_cache: retrieve::cache(cfg.retrieve_cache),
            builder: OnceLock::new(),
            info: OnceLock::new(),
            retriever: OnceLock::new(),
            ready: AtomicBool::new(false),
            metrics,
            cfg,
        }
    }

    pub fn config(&self) -> &InferConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What was loaded (`None` while the model loads).
    pub fn info(&self) -> Option<&ModelInfo> {
        self.info.get()
    }

    /// The guideline index, embedded or on PostgreSQL (`None` without one, or while it opens).
    pub fn retriever(&self) -> Option<&Retriever> {
        self.retriever.get()
    }

    pub fn set_index(&self, index: Index) {
        self.set_retriever(Retriever::Embedded(Arc::new(index)));
    }

    pub fn set_retriever(&self, r: Retriever) {
        let _ = self.retriever.set(r);
    }

    /// Model loaded and warmed up: jobs are accepted.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// What `/pooling` accepts under the loaded model (`None` before it is loaded).
    pub fn raw_prompt_rules(&self) -> Option<crate::prompt::RawPromptRules> {
        self.builder.get().map(|b| b.raw_prompt_rules())
    }

    fn builder(&self) -> Result<&Arc<PromptBuilder>> {
        self.builder.get().ok_or(Error::NotReady)
    }

    /// Publishes the loaded model's prompt builder and info (not ready yet: see [`Infer::start`]).
    pub fn set_model(&self, engine: &Engine) {
        let i = &engine.info;
        self.metrics.model_info.with_label_values(&[&i.model, &i.profile, &i.format, &i.dtype, &i.device]).set(1.0);
        let _ = self.info.set(engine.info.clone());
        let _ = self.builder.set(engine.builder.clone());
    }

    /// Hands the (warmed-up) engine to the backend thread that owns it from now on; jobs are
    /// accepted from this call.
    pub fn start(&self, engine: Engine) -> std::thread::JoinHandle<()> {
        self.set_model(&engine);
        let (q, cfg, metrics) = (self.queue.clone(), self.cfg.batch, self.metrics.clone());
        let handle = std::thread::Builder::new()
            .name("medprm-backend".into())
            .spawn(move || {
                queue::backend_loop(engine, q, cfg, metrics.clone());
                metrics.backend_up.set(0);
            })
            .expect("spawn backend thread");
        self.metrics.backend_up.set(1);
        self.metrics.ready.set(1);
        self.ready.store(true, Ordering::Release);
        handle
    }

    /// Permits for `n` candidates (a full core refuses at once), held until the guard drops.
    fn admit(&self, n: usize) -> Result<Admission<'_>> {
        let permit = self.permits.clone().try_acquire_many_owned(n as u32).map_err(|_| Error::Overloaded)?;
        self.metrics.in_flight_candidates.add(n as i64);
        Ok(Admission { _permit: permit, metrics: &self.metrics, n })
    }

    /// Builds prompts on a worker thread.
    async fn on_worker<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        self.workers.run(f).await.ok_or_else(|| Error::Backend("tokenization worker stopped".into()))?
    }

    /// Token limit → shared-prefix decision → queue → backend: the prompts back with p(+) of
    /// every step. `fields[i]` names prompt i in the token-limit error.
    async fn run(&self, prompts: Vec<Prompt>, fields: &[String], timings: &mut Timings) -> Result<(Vec<Prompt>, Vec<Vec<f32>>)> {
        let n = prompts.len();
        for (p, field) in prompts.iter().zip(fields) {
            if p.ids.len() > self.cfg.max_input_tokens {
                return Err(over_limit(field, &p.ids.len().to_string(), self.cfg.max_input_tokens));
            }
        }
        let shared_prefix = if self.cfg.prefix_sharing { shared_prefix_len(&prompts.iter().collect::<Vec<_>>()) } else { 0 };
        self.metrics.candidates.observe(n as f64);
        self.metrics.steps.observe(prompts.iter().map(|p| p.tag_rows.len()).sum::<usize>() as f64);

        let (tx, rx) = tokio::sync::oneshot::channel();
        let entry = queue::Job { prompts, shared_prefix, enqueued: Instant::now(), reply: tx };
        timings.compute_tokens = entry.compute_tokens();
        timings.candidates = n;
        self.metrics.input_tokens.observe(timings.compute_tokens as f64);
        self.queue.append(entry);
        // If this future is dropped (client gone), `rx` closes and the queue skips the job.
        let result = rx.await.map_err(|_| Error::Backend("the model backend stopped".into()))?;
        timings.queue = result.queue_time;
        timings.inference = result.inference_time;
        let scores = result.scores.map_err(Error::Backend)?;
        Ok((result.prompts, scores))
    }

    /// Scores, ranks and selects the candidates of one job.
    pub async fn score(&self, job: ScoreJob) -> Result<Scored> {
        let builder = self.builder()?.clone();
        let n = job.candidates.len();
        let _admission = self.admit(n)?;
        let mut timings = Timings::default();

        let t = Instant::now();
        let (documents, hits) = match job.documents {
            Documents::Caller(d) => (d, None),
            Documents::Retrieve { query, k, mode } => {
                let hits = self.search(query, k, mode).await?;
                timings.retrieval = t.elapsed();
                (hits.iter().map(|h| h.text.clone()).collect(), Some(hits))
            }
        };
        let supplied = documents.len();

        let t = Instant::now();
        // A lone prompt goes by the job's name in the token-limit error.
        let fields: Vec<String> =
            if n == 1 { vec![job.name.clone()] } else { job.candidates.iter().map(|c| c.field.clone()).collect() };
        let (solutions, answers): (Vec<_>, Vec<_>) =
            job.candidates.into_iter().map(|c| ((c.field, c.solution), c.answer)).unzip();
        let (b, question, limit) = (builder.clone(), job.question, self.cfg.max_input_tokens);
        let (images, max_pixels) = (job.images, self.cfg.max_image_pixels);
        let vision = self.info().and_then(|i| i.vision.clone());
        let metrics = self.metrics.clone();
        let (kept, doc_tokens, prompts) = self
            .on_worker(move || {
                let images = images
                    .iter()
                    .map(|im| {
                        let t = Instant::now();
                        let prepared = prepare_image(im, &b, vision.as_ref(), max_pixels)?;
                        metrics.image_preprocess_duration.observe(t.elapsed().as_secs_f64());
                        metrics.image_tiles.observe(prepared.tiles as f64);
                        // The media type was checked against the three accepted ones.
                        metrics.images.with_label_values(&[im.media_type.as_str()]).inc();
                        Ok(prepared)
                    })
                    .collect::<Result<Vec<_>>>()?;
                // Refuse far-over-limit text before tokenizing all of it.
                let parts = std::iter::once(("question", std::borrow::Cow::from(question.as_str())))
                    .chain(solutions.iter().map(|(field, s)| (field.as_str(), s.text())));
                for (field, text) in parts {
                    if let Some(n) = b.tokens_over(&text, limit)? {
                        return Err(over_limit(field, &format!("more than {n}"), limit));
                    }
                }
                let ctx = b.context_with_images(&question, &documents, images)?;
                let prompts = solutions
                    .iter()
                    .map(|(field, s)| {
                        b.prompt(&ctx, s).map_err(|e| match e {
                            Error::Input { field: f, reason } => Error::input(format!("{field}.{f}"), reason),
                            other => other,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((ctx.n_docs_kept, ctx.document_tokens, prompts))
            })
            .await?;
        timings.tokenization = t.elapsed();
        self.metrics.tokenization_duration.observe(timings.tokenization.as_secs_f64());
        let (prompts, scores) = self.run(prompts, &fields, &mut timings).await?;

        let candidates: Vec<ScoredCandidate> = prompts
            .into_iter()
            .zip(scores)
            .zip(answers)
            .map(|((p, scores), answer)| ScoredCandidate {
                answer: answer.map(|a| a.trim().to_string()).or_else(|| extract_answer(&p.steps.join(" "))),
                prompt_tokens: p.ids.len(),
                steps: p.steps,
                scores,
            })
            .collect();
        // The profile's leading steps (MedS³'s root) are reported but never aggregated.
        let drop = builder.profile.drop_steps;
        let step_scores: Vec<&[f32]> = candidates.iter().map(|c| &c.scores[drop.min(c.scores.len())..]).collect();
        let answers: Vec<Option<String>> = candidates.iter().map(|c| c.answer.clone()).collect();
        let ranking = rank(&step_scores, &answers, job.aggregation, job.selection, job.top_n);
        let usage = Usage {
            prompt_tokens: candidates.iter().map(|c| c.prompt_tokens).sum(),
            candidates: n,
            steps: candidates.iter().map(|c| c.scores.len()).sum(),
        };
        let documents = DocumentsUsed {
            source: match (&hits, supplied) {
                (Some(_), _) => "retrieval",
                (None, 0) => "none",
                (None, _) => "caller",
            }
            .into(),
            citations: hits.iter().flat_map(|h| h.iter().take(kept)).map(Citation::from).collect(),
            supplied,
            kept,
            tokens: doc_tokens,
            budget: builder.profile.document_budget(),
        };
        Ok(Scored {
            profile: builder.profile.name.clone(),
            drop_steps: drop,
            candidates,
            aggregation: job.aggregation, selection: job.selection, ranking, documents, usage, timings })
    }

    /// Scores prompts their caller built (vLLM `/pooling`): no template, no documents; every
    /// position holding the step-tag token is scored. Returns p(+) per tag and the prompt
    /// lengths, in input order.
    pub async fn score_prompts(&self, inputs: Vec<RawInput>) -> Result<ScoredPrompts> {
        if !self.is_ready() {
            return Err(Error::NotReady);
        }
        let builder = self.builder()?.clone();
        let _admission = self.admit(inputs.len())?;
        let mut timings = Timings::default();
        let t = Instant::now();
        let fields: Vec<String> =
            if inputs.len() == 1 { vec!["input".into()] } else { (0..inputs.len()).map(|i| format!("input[{i}]")).collect() };
        let prompts = self
            .on_worker(move || {
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, input)| {
                        builder.raw_prompt(input).map_err(|e| match e {
                            Error::Input { field, reason } => Error::input(format!("{field}[{i}]"), reason),
                            other => other,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        timings.tokenization = t.elapsed();
        self.metrics.tokenization_duration.observe(timings.tokenization.as_secs_f64());
        let (prompts, scores) = self.run(prompts, &fields, &mut timings).await?;
        Ok(ScoredPrompts { prompt_tokens: prompts.iter().map(|p| p.ids.len()).collect(), scores, timings })
    }
}

/// Reads, tiles and normalises one image of a job (on a worker thread): the tiles the vision
/// tower takes and the number of image tokens it becomes.
pub fn prepare_image(
    im: &ImageInput,
    b: &PromptBuilder,
    vision: Option<&crate::engine::VisionInfo>,
    max_pixels: u64,
) -> Result<Arc<crate::prompt::PreparedImage>> {
    use std::hash::{Hash, Hasher};
    let (Some(layout), Some(vision)) = (&b.profile.image, vision) else {
        return Err(Error::input("images", format!("profile `{}`: the loaded model reads no images", b.profile.name)));
    };
    let rgb = crate::image::decode(&im.bytes, &im.media_type, max_pixels).map_err(|e| {
        if e.is_too_large() {
            Error::TooLarge { field: im.field.clone(), reason: format!("{e} (--max-image-pixels)") }
        } else {
            Error::input(format!("{}.data", im.field), e.to_string())
        }
    })?;
    let tiling = crate::image::TileConfig {
        image_size: vision.image_size as u32,
        min_tiles: layout.min_tiles as u32,
        max_tiles: layout.max_tiles as u32,
        use_thumbnail: layout.use_thumbnail,
    };
    let tiles = crate::image::tiles(&rgb, &tiling);
    let pixels = crate::image::to_tensor(&tiles, crate::image::IMAGENET_MEAN, crate::image::IMAGENET_STD);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    im.bytes.hash(&mut h);
    im.media_type.hash(&mut h);
    Ok(Arc::new(crate::prompt::PreparedImage { hash: h.finish(), tiles: tiles.len(), tokens: tiles.len() * vision.tokens_per_tile, pixels }))
}

/// The token-limit error.
fn over_limit(field: &str, tokens: &str, limit: usize) -> Error {
    Error::input(field, format!("the prompt has {tokens} tokens, more than --max-input-tokens {limit}"))
}

/// What [`Infer::admit`] holds: the permits and the in-flight gauge, released however the job
/// ends.
struct Admission<'a> {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: &'a Metrics,
    n: usize,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight_candidates.sub(self.n as i64);
    }
}
