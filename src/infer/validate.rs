//! The one validation step: a route's request becomes a [`ScoreJob`]. Every rule is written here
//! once and every error names the field it is about.

use serde::Deserialize;
use utoipa::ToSchema;

use crate::aggregate::{Aggregation, Selection};
use crate::error::{Error, Result};
use crate::prompt::Solution;
use crate::retrieval::{self, Mode};

use super::job::{Candidate, Documents, ImageInput, ScoreJob};
use super::Infer;

/// A scoring request as a route received it, before validation.
#[derive(Debug)]
pub struct JobRequest {
    /// How errors name the request's prompt when it has one candidate (`input`, `query[2]`).
    pub name: String,
    pub question: String,
    pub candidates: Candidates,
    pub documents: Option<Vec<String>>,
    pub retrieve: Option<RetrieveOptions>,
    pub aggregation: Option<Aggregation>,
    pub selection: Option<Selection>,
    pub top_n: Option<usize>,
    /// Images of the question (base64 data and media type), in order.
    pub images: Vec<ImageRequest>,
}

/// One solution (errors name it `field`; its steps may join the retrieval query) or N candidates
/// of one question (errors name them `field[i]`: `candidates[2]`, `documents[2]`).
#[derive(Debug)]
pub enum Candidates {
    One { field: String, candidate: CandidateRequest },
    Many { field: String, candidates: Vec<CandidateRequest> },
}

/// A caller's solution: exactly one of `steps` or `solution`, and an optional answer.
#[derive(Debug, Default)]
pub struct CandidateRequest {
    pub steps: Option<Vec<String>>,
    pub solution: Option<String>,
    pub answer: Option<String>,
}

/// Retrieval for a scoring request: one search per request, shared by all its candidates.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrieveOptions {
    /// Documents to retrieve before the budget keeps a prefix of them, 1..=100 (default: the
    /// server's `--retrieve-k`, else 5).
    #[serde(default, deserialize_with = "crate::server::api::count")]
    #[schema(minimum = 1, maximum = 100)]
    pub k: Option<usize>,
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Add the solution's steps to the query (the question alone is Med-PRM's practice);
    /// /v1/score only.
    #[serde(default)]
    pub include_steps: bool,
}

/// Standard-alphabet base64 with or without padding (`images[].data`).
const IMAGE_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// An image as a request carries it.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// Base64 (standard alphabet, padding optional) of the file's bytes.
    pub data: String,
    pub media_type: String,
}

/// Documents a search returns when neither the request nor `--retrieve-k` says how many.
pub const DEFAULT_K: usize = 5;

/// A caller's solution from its `steps` / `solution` fields.
pub fn solution(steps: Option<Vec<String>>, solution: Option<String>, field: &str) -> Result<Solution> {
    match (steps, solution) {
        (Some(_), Some(_)) => Err(Error::input(field, "give either `steps` or `solution`, not both")),
        (None, None) => Err(Error::input(field, "`steps` or `solution` is required")),
        (Some(s), None) if s.is_empty() => Err(Error::input(format!("{field}.steps"), "must not be empty")),
        (Some(s), None) => Ok(Solution::Steps(s)),
        (None, Some(t)) if crate::steps::py_strip(&t).is_empty() => Err(Error::input(format!("{field}.solution"), "must not be empty")),
        (None, Some(t)) => Ok(Solution::Raw(t)),
    }
}

impl Infer {
    /// Checks a scoring request against the server's limits and the loaded profile.
    pub fn validate(&self, req: JobRequest) -> Result<ScoreJob> {
        if !self.is_ready() {
            return Err(Error::NotReady);
        }
        let cfg = self.config();
        // Refused here, before admission and the tokenization workers (the prompt builder
        // checks it again).
        if crate::steps::py_strip(&req.question).is_empty() {
            return Err(Error::input("question", "must not be empty"));
        }
        let (single, field, requests) = match req.candidates {
            Candidates::One { field, candidate } => (true, field, vec![candidate]),
            Candidates::Many { field, candidates } => (false, field, candidates),
        };
        if !single {
            if requests.is_empty() {
                return Err(Error::input(&field, "must not be empty"));
            }
            if requests.len() > cfg.max_candidates {
                return Err(Error::input(
                    &field,
                    format!("{} candidates, more than --max-candidates {}", requests.len(), cfg.max_candidates),
                ));
            }
        }
        if req.top_n == Some(0) {
            return Err(Error::input("top_n", "must be at least 1"));
        }
        let mut candidates = Vec::with_capacity(requests.len());
        for (i, c) in requests.into_iter().enumerate() {
            let field = if single { field.clone() } else { format!("{field}[{i}]") };
            let solution = solution(c.steps, c.solution, &field)?;
            candidates.push(Candidate { field, solution, answer: c.answer });
        }
        // Only a single solution's steps may join the query: rank candidates share one search.
        let steps_query = single.then(|| match &candidates[0].solution {
            Solution::Steps(s) => s.clone(),
            Solution::Raw(t) | Solution::Tagged(t) => crate::steps::split_solution(t).steps,
        });
        let profile = &self.builder()?.profile;
        let documents = if profile.uses_documents {
            self.documents(&req.question, req.documents, req.retrieve, steps_query)?
        } else {
            // The server's default retrieval does not apply to a profile without documents; a
            // request that asks for documents is refused.
            let field = match (&req.documents, &req.retrieve) {
                (Some(d), _) if !d.is_empty() => Some("documents"),
                (_, Some(_)) => Some("retrieve"),
                _ => None,
            };
            if let Some(field) = field {
                return Err(Error::input(
                    field,
                    format!("profile `{}` (format `{}`) has no place for documents", profile.name, profile.format.name()),
                ));
            }
            Documents::Caller(vec![])
        };
        let images = self.images(req.images, &profile.name)?;
        Ok(ScoreJob {
            images,
            name: req.name,
            question: req.question,
            candidates,
            documents,
            aggregation: req.aggregation.unwrap_or(profile.aggregation),
            selection: req.selection.unwrap_or(profile.selection),
            top_n: req.top_n,
        })
    }

    /// Checks the images against the model and `--max-images`, and decodes their base64 (the
    /// pixels are read later, on a worker).
    fn images(&self, images: Vec<ImageRequest>, profile: &str) -> Result<Vec<ImageInput>> {
        use base64::Engine as _;
        if images.is_empty() {
            return Ok(vec![]);
        }
        let vision = self.info().is_some_and(|i| i.vision.is_some());
        let has_image_prompt = self.builder()?.profile.image.is_some();
        if !vision || !has_image_prompt {
            return Err(Error::input("images", format!("profile `{profile}` scores text only: the loaded model reads no images")));
        }
        let max = self.config().max_images;
        if images.len() > max {
            return Err(Error::input("images", format!("{} images, more than --max-images {max}", images.len())));
        }
        images
            .into_iter()
            .enumerate()
            .map(|(i, im)| {
                let field = format!("images[{i}]");
                if !crate::image::MEDIA_TYPES.contains(&im.media_type.as_str()) {
                    return Err(Error::input(
                        format!("{field}.media_type"),
                        format!("`{}` is not one of {}", im.media_type, crate::image::MEDIA_TYPES.join(", ")),
                    ));
                }
                let bytes = IMAGE_BASE64
                    .decode(im.data.trim())
                    .map_err(|e| Error::input(format!("{field}.data"), format!("not base64: {e}")))?;
                if bytes.is_empty() {
                    return Err(Error::input(format!("{field}.data"), "must not be empty"));
                }
                Ok(ImageInput { field, media_type: im.media_type, bytes: std::sync::Arc::new(bytes) })
            })
            .collect()
    }

    /// `documents`, `retrieve` or the server's default retrieval.
    fn documents(
        &self,
        question: &str,
        documents: Option<Vec<String>>,
        retrieve: Option<RetrieveOptions>,
        steps_query: Option<Vec<String>>,
    ) -> Result<Documents> {
        let cfg = self.config();
        let opts = match (documents, retrieve) {
            (Some(_), Some(_)) => return Err(Error::input("retrieve", "give either `documents` or `retrieve`, not both")),
            (Some(d), None) => return Ok(Documents::Caller(d)),
            (None, Some(o)) => o,
            (None, None) if cfg.retrieve_k > 0 => RetrieveOptions::default(),
            (None, None) => return Ok(Documents::Caller(vec![])),
        };
        self.require_index("retrieve")?;
        let k = opts.k.unwrap_or(if cfg.retrieve_k > 0 { cfg.retrieve_k } else { DEFAULT_K });
        retrieval::check_k(k, "retrieve.k")?;
        let query = match (opts.include_steps, steps_query) {
            (false, _) => retrieval::query_for(question, &[], false),
            (true, Some(steps)) => retrieval::query_for(question, &steps, true),
            (true, None) => {
                return Err(Error::input(
                    "retrieve.include_steps",
                    "only for /v1/score (rank candidates share one search)",
                ))
            }
        };
        Ok(Documents::Retrieve { query, k, mode: opts.mode.unwrap_or(cfg.retrieve_mode) })
    }

    /// Retrieval needs an index (`--index`).
    pub(super) fn require_index(&self, field: &str) -> Result<()> {
        if self.config().retrieval {
            Ok(())
        } else {
            Err(Error::input(field, "this server has no guideline index (start it with --index)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solution_fields() {
        let err = |r: Result<Solution>| r.unwrap_err().to_string();
        assert!(err(solution(Some(vec!["a".into()]), Some("b".into()), "body")).contains("body: give either"));
        assert!(err(solution(None, None, "candidates[2]")).contains("candidates[2]: `steps` or `solution` is required"));
        assert!(err(solution(Some(vec![]), None, "body")).contains("body.steps: must not be empty"));
        assert!(err(solution(None, Some("  ".into()), "body")).contains("body.solution: must not be empty"));
        assert!(matches!(solution(None, Some("Step 1: x".into()), "body"), Ok(Solution::Raw(_))));
        assert!(matches!(solution(Some(vec!["x".into()]), None, "body"), Ok(Solution::Steps(_))));
    }
}
