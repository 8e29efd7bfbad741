//! Prometheus metrics, all named `medprm_*`.

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    exponential_buckets, Counter, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// One registered metric family as the README documents it.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyDoc {
    pub name: String,
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

/// How a request ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The request was wrong (4xx other than 401 and 429).
    ClientError,
    /// The client disconnected before the answer.
    Cancelled,
    /// Refused for load or not ready yet: 429 or 503, with Retry-After.
    Overloaded,
    /// Missing or wrong API key.
    Unauthorized,
    /// The server or its model failed (424, 5xx).
    ServerError,
}

impl Outcome {
    pub const ALL: [Outcome; 6] =
        [Outcome::Success, Outcome::ClientError, Outcome::Cancelled, Outcome::Overloaded, Outcome::Unauthorized, Outcome::ServerError];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::Cancelled => "cancelled",
            Outcome::Overloaded => "overloaded",
            Outcome::Unauthorized => "unauthorized",
            Outcome::ServerError => "server_error",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub successes: IntCounterVec,
    pub failures: IntCounterVec,
    pub request_duration: HistogramVec,
    pub tokenization_duration: Histogram,
    pub queue_duration: Histogram,
    pub inference_duration: Histogram,
    pub retrieval_duration: Histogram,
    pub retrieval_cache: IntCounterVec,
    pub retrieval_bm25_rounds: Histogram,
    pub retrieval_bm25_chunks_scored: Histogram,
    pub retrieval_bm25_unproven: IntCounter,
    pub input_tokens: Histogram,
    pub candidates: Histogram,
    pub steps: Histogram,
    pub queue_requests: IntGauge,
    pub queue_tokens: IntGauge,
    pub batch_size: Histogram,
    pub batch_tokens: Histogram,
    pub padding_ratio: Histogram,
    pub backend_up: IntGauge,
    pub ready: IntGauge,
    pub model_info: GaugeVec,
    pub in_flight_candidates: IntGauge,
    pub shared_prefix_tokens: Histogram,
    pub prefix_saved_tokens: Counter,
    pub open_connections: IntGauge,
    pub images: IntCounterVec,
    pub image_preprocess_duration: Histogram,
    pub image_tiles: Histogram,
    pub vision_duration: Histogram,
    pub vision_images_encoded: IntCounter,
}

fn hist(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram")
}

impl Metrics {
    pub fn new() -> Self {
        let secs = exponential_buckets(0.001, 2.0, 18).expect("buckets"); // 1 ms .. ~131 s
        let counts = exponential_buckets(1.0, 2.0, 12).expect("buckets");
        let tokens = exponential_buckets(16.0, 2.0, 14).expect("buckets");
        let m = Metrics {
            registry: Registry::new(),
            requests: IntCounterVec::new(Opts::new("medprm_request_count", "Requests, each counted once when it ends, by outcome"), &["endpoint", "outcome"]).unwrap(),
            successes: IntCounterVec::new(Opts::new("medprm_request_success", "Requests answered successfully"), &["endpoint"]).unwrap(),
            failures: IntCounterVec::new(Opts::new("medprm_request_failure", "Requests that did not succeed (an error answer, or `cancelled`: the client left first)"), &["endpoint", "error_type"]).unwrap(),
            request_duration: HistogramVec::new(HistogramOpts::new("medprm_request_duration_seconds", "Whole request time, by outcome").buckets(secs.clone()), &["endpoint", "outcome"]).unwrap(),
            tokenization_duration: hist("medprm_tokenization_duration_seconds", "Prompt building and tokenization per request", secs.clone()),
            queue_duration: hist("medprm_queue_duration_seconds", "Time a request waited in the queue", secs.clone()),
            inference_duration: hist("medprm_inference_duration_seconds", "Forward pass time per batch", secs.clone()),
            retrieval_duration: hist("medprm_retrieval_duration_seconds", "Document retrieval time per request", secs.clone()),
            retrieval_cache: IntCounterVec::new(Opts::new("medprm_retrieval_cache", "Retrieval cache lookups by result (hit or miss)"), &["result"]).unwrap(),
            retrieval_bm25_rounds: hist(
                "medprm_retrieval_bm25_rounds",
                "Scoring rounds of one BM25 search on the retrieval database (--retrieval-backend postgres)",
                vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
            ),
            retrieval_bm25_chunks_scored: hist(
                "medprm_retrieval_bm25_chunks_scored",
                "Chunks one BM25 search on the retrieval database scored, all rounds together",
                exponential_buckets(16.0, 4.0, 10).expect("buckets"),
            ),
            retrieval_bm25_unproven: IntCounter::new(
                "medprm_retrieval_bm25_unproven_total",
                "BM25 searches on the retrieval database whose top k is BM25's order over the chunks scored, not proven to be the whole corpus's (--db-bm25-budget)",
            )
            .unwrap(),
            input_tokens: hist("medprm_input_tokens", "Prompt tokens per request (all candidates)", tokens.clone()),
            candidates: hist("medprm_candidates_per_request", "Candidates per request", counts.clone()),
            steps: hist("medprm_steps_per_request", "Scored steps per request", counts.clone()),
            queue_requests: IntGauge::new("medprm_queue_size", "Requests waiting in the queue").unwrap(),
            queue_tokens: IntGauge::new("medprm_queue_tokens", "Prompt tokens waiting in the queue").unwrap(),
            batch_size: hist("medprm_batch_size", "Sequences per forward pass", counts),
            batch_tokens: hist("medprm_batch_tokens", "Padded tokens per forward pass", tokens.clone()),
            padding_ratio: hist("medprm_batch_padding_ratio", "Share of padding in a forward pass", vec![0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]),
            backend_up: IntGauge::new("medprm_backend_up", "1 while the model backend thread runs").unwrap(),
            ready: IntGauge::new("medprm_ready", "1 once the model is loaded and warmed up").unwrap(),
            model_info: GaugeVec::new(Opts::new("medprm_model_info", "Loaded model (value 1)"), &["model", "profile", "format", "dtype", "device"]).unwrap(),
            in_flight_candidates: IntGauge::new("medprm_in_flight_candidates", "Candidates holding a concurrency permit").unwrap(),
            shared_prefix_tokens: hist("medprm_shared_prefix_tokens", "Shared prefix length of rank requests scored with prefix sharing", tokens),
            prefix_saved_tokens: Counter::new("medprm_prefix_saved_tokens_total", "Prompt tokens not recomputed thanks to prefix sharing").unwrap(),
            open_connections: IntGauge::new("medprm_open_connections", "Client connections open (capped by --max-connections)").unwrap(),
            images: IntCounterVec::new(Opts::new("medprm_images_total", "Images of requests decoded and tiled, by media type"), &["media_type"]).unwrap(),
            image_preprocess_duration: hist("medprm_image_preprocess_duration_seconds", "Decoding, tiling and normalising one image", secs.clone()),
            image_tiles: hist("medprm_image_tiles", "Tiles per image (thumbnail included)", vec![1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 9.0, 13.0, 25.0, 41.0]),
            vision_duration: hist("medprm_vision_duration_seconds", "Vision tower time per batch that carries images", secs),
            vision_images_encoded: IntCounter::new("medprm_vision_images_encoded_total", "Images run through the vision tower (an image repeated within a batch runs once)").unwrap(),
        };
        for c in m.collectors() {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Every metric, in registration (and documentation) order.
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.successes.clone()),
            Box::new(self.failures.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.tokenization_duration.clone()),
            Box::new(self.queue_duration.clone()),
            Box::new(self.inference_duration.clone()),
            Box::new(self.retrieval_duration.clone()),
            Box::new(self.retrieval_cache.clone()),
            Box::new(self.retrieval_bm25_rounds.clone()),
            Box::new(self.retrieval_bm25_chunks_scored.clone()),
            Box::new(self.retrieval_bm25_unproven.clone()),
            Box::new(self.input_tokens.clone()),
            Box::new(self.candidates.clone()),
            Box::new(self.steps.clone()),
            Box::new(self.queue_requests.clone()),
            Box::new(self.queue_tokens.clone()),
            Box::new(self.in_flight_candidates.clone()),
            Box::new(self.batch_size.clone()),
            Box::new(self.batch_tokens.clone()),
            Box::new(self.padding_ratio.clone()),
            Box::new(self.shared_prefix_tokens.clone()),
            Box::new(self.prefix_saved_tokens.clone()),
            Box::new(self.backend_up.clone()),
            Box::new(self.ready.clone()),
            Box::new(self.model_info.clone()),
            Box::new(self.open_connections.clone()),
            Box::new(self.images.clone()),
            Box::new(self.image_preprocess_duration.clone()),
            Box::new(self.image_tiles.clone()),
            Box::new(self.vision_duration.clone()),
            Box::new(self.vision_images_encoded.clone()),
        ]
    }

    /// What is registered, for documentation: name, type, label names and help of every family,
    /// labelled ones included before they have a child (which `/metrics` does not list yet).
    pub fn families(&self) -> Vec<FamilyDoc> {
        self.collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned().zip(c.collect()).collect::<Vec<_>>())
            .map(|(d, f)| FamilyDoc {
                name: d.fq_name.clone(),
                kind: match f.get_field_type() {
                    MetricType::COUNTER => "counter",
                    MetricType::GAUGE => "gauge",
                    MetricType::HISTOGRAM => "histogram",
                    MetricType::SUMMARY => "summary",
                    MetricType::UNTYPED => "untyped",
                },
                labels: d.variable_labels.clone(),
                help: d.help.clone(),
            })
            .collect()
    }

    /// Records one finished request: counted once, under its outcome, with its duration; a
    /// request that did not succeed is also counted by its error type.
    pub fn record_request(&self, endpoint: &str, outcome: Outcome, error_type: Option<&str>, seconds: f64) {
        let o = outcome.label();
        self.requests.with_label_values(&[endpoint, o]).inc();
        self.request_duration.with_label_values(&[endpoint, o]).observe(seconds);
        if outcome == Outcome::Success {
            self.successes.with_label_values(&[endpoint]).inc();
        } else {
            self.failures.with_label_values(&[endpoint, error_type.unwrap_or(o)]).inc();
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encode metrics");
        String::from_utf8(buf).expect("utf8 metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_counted_once_under_its_outcome() {
        let m = Metrics::new();
        m.record_request("score", Outcome::Success, None, 0.01);
        m.record_request("score", Outcome::Cancelled, None, 0.02);
        m.record_request("rank", Outcome::ClientError, Some("validation"), 0.03);
        let count = |e: &str, o: Outcome| m.requests.with_label_values(&[e, o.label()]).get();
        assert_eq!(count("score", Outcome::Success), 1);
        assert_eq!(count("score", Outcome::Cancelled), 1);
        assert_eq!(count("rank", Outcome::ClientError), 1);
        assert_eq!(m.successes.with_label_values(&["score"]).get(), 1);
        assert_eq!(m.failures.with_label_values(&["score", "cancelled"]).get(), 1);
        assert_eq!(m.failures.with_label_values(&["rank", "validation"]).get(), 1);
        assert_eq!(m.request_duration.with_label_values(&["score", "cancelled"]).get_sample_count(), 1);
    }
}
