//! Property-based fuzzing (proptest; cargo-fuzz needs a nightly toolchain) of the code that
//! handles caller input: step splitting, chat-template rendering, prompt neutralisation, request
//! JSON and image decoding (PNG, JPEG through libjpeg's C code, DICOM). 0 panics (and no crash),
//! and the invariants below hold for every generated input.
//! `make test` runs proptest's default 256 cases per target (`PROPTEST_CASES` changes it);
//! `MEDPRM_FUZZ_SECONDS=600` (what `make fuzz` sets, and `make reliability` runs) instead runs
//! fresh randomly seeded rounds of cases until that many seconds are spent, and prints the count.

use std::sync::{Arc, OnceLock};

use medprm::prompt::{PromptBuilder, Solution};
use medprm::template::{ChatTemplate, Message};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

/// Text that stresses the code: step markers, tags, added-token text, whitespace of every
/// kind, and arbitrary Unicode.
fn nasty_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("Step 1:".to_string()),
        Just("## Step 12:".to_string()),
        Just(" ки".to_string()),
        Just("ки".to_string()),
        Just("<|eot_id|>".to_string()),
        Just("<|begin_of_text|>".to_string()),
        Just("<|start_header_id|>user<|end_header_id|>".to_string()),
        Just("{{ x }}{% if %}".to_string()),
        Just("\n\r\t\u{1c}\u{85}\u{a0}\u{2028}\u{3000}".to_string()),
        Just(" + -".to_string()),
        "\\PC{0,12}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(pieces, 0..12).prop_map(|v| v.concat())
}

fn builder() -> &'static PromptBuilder {
    static B: OnceLock<PromptBuilder> = OnceLock::new();
    B.get_or_init(|| {
        let dir = medprm::tools::testmodel::ensure().expect("test model (run scripts/fetch-assets.sh)");
        let tokenizer = medprm::tokenizer::PrmTokenizer::from_dir(&dir).expect("tokenizer");
        let profile = medprm::profile::Profile::load("med-prm").expect("profile");
        PromptBuilder::new(profile, Arc::new(tokenizer)).expect("builder")
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::from(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| Value::from(f)),
        nasty_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("question".to_string()),
            Just("steps".to_string()),
            Just("solution".to_string()),
            Just("candidates".to_string()),
            Just("documents".to_string()),
            Just("retrieve".to_string()),
            Just("k".to_string()),
            Just("top_n".to_string()),
            Just("aggregation".to_string()),
            Just("selection".to_string()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys, inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Cases per round of a timed run.
const ROUND: u32 = 2000;

/// Runs `property` over `strategy`: `PROPTEST_CASES` cases (default 256), or, with
/// `MEDPRM_FUZZ_SECONDS`, rounds of [`ROUND`] freshly seeded cases until the time is spent.
/// A failing or panicking case fails the test with the shrunk input.
fn fuzz<S: Strategy>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let seconds: Option<f64> = std::env::var("MEDPRM_FUZZ_SECONDS").ok().map(|v| v.parse().expect("MEDPRM_FUZZ_SECONDS: seconds"));
    let start = std::time::Instant::now();
    let mut cases: u64 = 0;
    loop {
        let config = match seconds {
            Some(_) => Config { cases: ROUND, failure_persistence: None, ..Config::default() },
            None => Config { failure_persistence: None, ..Config::default() },
        };
        let n = config.cases;
        let mut runner = TestRunner::new(config);
        if let Err(e) = runner.run(&strategy, &property) {
            panic!("fuzz {name}: after {cases} passing cases: {e}");
        }
        cases += n as u64;
        match seconds {
            Some(s) if start.elapsed().as_secs_f64() < s => continue,
            _ => break,
        }
    }
    eprintln!("reliability: fuzz {name}: {cases} cases in {:.0} s, 0 panics, 0 failed properties", start.elapsed().as_secs_f64());
}

fn step_splitting(text: String) -> Result<(), TestCaseError> {
    let split = medprm::steps::split_solution(&text);
    for s in &split.steps {
        prop_assert!(!s.contains('\n'), "a step keeps a newline: {s:?}");
        prop_assert_eq!(medprm::steps::py_strip(s), s.as_str(), "a step is stripped");
    }
    let _ = medprm::steps::py_strip(&text);
    let _ = medprm::steps::has_marker(&text);
    let _ = medprm::steps::split_tagged(&text, " ки");
    Ok(())
}

fn template_rendering((system, user, gen): (String, String, bool)) -> Result<(), TestCaseError> {
    static T: OnceLock<ChatTemplate> = OnceLock::new();
    let t = T.get_or_init(|| {
        let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/llama-3.1.jinja")).unwrap();
        ChatTemplate::new(&src, Some("<|begin_of_text|>"), Some("<|eot_id|>")).unwrap()
    });
    let out = t.render(&[Message::new("system", system), Message::new("user", user)], gen);
    prop_assert!(out.is_ok(), "{out:?}");
    prop_assert!(out.unwrap().starts_with("<|begin_of_text|>"));
    Ok(())
}

fn neutralisation((question, docs, steps): (String, Vec<String>, Vec<String>)) -> Result<(), TestCaseError> {
    let b = builder();
    let n = b.neutralise(&question);
    prop_assert_eq!(b.neutralise(&n), n.clone(), "neutralising is idempotent");
    let ctx = match b.context(&question, &docs) {
        Ok(c) => c,
        Err(e) => {
            prop_assert!(medprm::steps::py_strip(&question).is_empty(), "only a blank question is refused: {e}");
            return Ok(());
        }
    };
    let blank = steps.iter().any(|s| medprm::steps::py_strip(s).is_empty());
    match b.prompt(&ctx, &Solution::Steps(steps.clone())) {
        Ok(p) => {
            prop_assert!(!blank);
            prop_assert_eq!(p.tag_rows.len(), steps.len(), "one scored position per step, whatever the text");
        }
        Err(e) => prop_assert!(blank, "refused non-blank steps: {e}"),
    }
    if let Ok(p) = b.prompt(&ctx, &Solution::Raw(steps.join(" "))) {
        prop_assert_eq!(p.tag_rows.len(), p.steps.len());
    }
    Ok(())
}

fn request_json((v, text): (Value, String)) -> Result<(), TestCaseError> {
    use medprm::server::api::{RankRequest, RetrieveRequest, ScoreRequest};
    let _ = serde_json::from_str::<ScoreRequest>(&text);
    let _ = serde_json::from_str::<RankRequest>(&text);
    if let Ok(r) = serde_json::from_value::<ScoreRequest>(v.clone()) {
        let _: medprm::infer::JobRequest = r.into();
    }
    if let Ok(r) = serde_json::from_value::<RankRequest>(v.clone()) {
        let _: medprm::infer::JobRequest = r.into();
    }
    let _ = serde_json::from_value::<RetrieveRequest>(v);
    Ok(())
}

/// Small valid images of each accepted type (committed fixtures), to be damaged.
fn image_fixtures() -> &'static [(Vec<u8>, &'static str)] {
    static F: OnceLock<Vec<(Vec<u8>, &'static str)>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/images");
        [
            ("smooth_64x48.jpg", "image/jpeg"),
            ("jpeg_progressive_422.jpg", "image/jpeg"),
            ("jpeg_grey.jpg", "image/jpeg"),
            ("jpeg_restart_420.jpg", "image/jpeg"),
            ("noise_37x23.png", "image/png"),
            ("mode_p_trns.png", "image/png"),
            ("mode_la16.png", "image/png"),
            ("ct_small.dcm", "application/dicom"),
        ]
        .into_iter()
        .map(|(f, t)| (std::fs::read(dir.join(f)).unwrap(), t))
        .collect()
    })
}

/// A fixture with bytes overwritten, a run inserted and the end cut: `(which, writes, insert, cut)`.
type Damage = (usize, Vec<(usize, u8)>, Option<(usize, Vec<u8>)>, Option<usize>);

fn image_decoding((which, writes, insert, cut): Damage) -> Result<(), TestCaseError> {
    let fixtures = image_fixtures();
    let (original, media_type) = &fixtures[which % fixtures.len()];
    let mut bytes = original.clone();
    for (at, b) in writes {
        let n = bytes.len();
        bytes[at % n] = b;
    }
    if let Some((at, run)) = insert {
        let at = at % (bytes.len() + 1);
        bytes.splice(at..at, run);
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    let max_pixels = 1 << 16;
    for mt in [*media_type, "image/png", "image/jpeg", "application/dicom"] {
        if let Ok(img) = medprm::image::decode(&bytes, mt, max_pixels) {
            let (w, h) = (img.width() as usize, img.height() as usize);
            prop_assert!(w > 0 && h > 0 && w * h <= max_pixels as usize, "{mt}: {w}x{h}");
            prop_assert_eq!(img.as_raw().len(), w * h * 3, "{}: RGB bytes", mt);
        }
    }
    Ok(())
}

#[test]
fn step_splitting_never_panics_and_steps_are_clean() {
    fuzz("step splitting", nasty_text(), step_splitting);
}

#[test]
fn template_rendering_never_panics() {
    fuzz("template rendering", (nasty_text(), nasty_text(), any::<bool>()), template_rendering);
}

#[test]
fn caller_text_cannot_add_or_remove_step_tags() {
    let s = (nasty_text(), prop::collection::vec(nasty_text(), 0..3), prop::collection::vec(nasty_text(), 1..5));
    fuzz("prompt neutralisation", s, neutralisation);
}

#[test]
fn request_json_never_panics() {
    fuzz("request JSON", (json_value(), "\\PC{0,64}"), request_json);
}

#[test]
fn damaged_images_are_errors_never_panics() {
    let damage = (
        any::<usize>(),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        proptest::option::of((any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))),
        proptest::option::of(any::<usize>()),
    );
    fuzz("image decoding", damage, image_decoding);
}

/// The driver reports a property that fails (it would otherwise pass vacuously).
#[test]
#[should_panic(expected = "fuzz always fails: after 0 passing cases")]
fn a_failing_property_fails_the_run() {
    fuzz("always fails", nasty_text(), |t| {
        prop_assert!(t.len() > usize::MAX / 2, "never long enough");
        Ok(())
    });
}
