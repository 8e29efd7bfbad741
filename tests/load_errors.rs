//! Loading: clear errors for broken inputs, and the f16/bf16 paths.

use std::path::Path;

use medprm::args::ModelArgs;
use medprm::engine::{Engine, LoadOptions};
use medprm::prompt::Solution;

/// An empty directory, removed when the returned guard drops (pass or fail).
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("medprm-load-{name}-")).tempdir().unwrap()
}

/// A copy of the test model directory (weights linked, not copied) to break one file of.
fn model_copy(name: &str) -> tempfile::TempDir {
    let src = medprm::tools::testmodel::ensure().unwrap();
    let dst = scratch(name);
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.path().join(f)).unwrap();
    }
    dst
}

fn load_err(dir: &Path, profile: &str) -> String {
    match Engine::load(&LoadOptions::new(dir, profile)) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn missing_and_corrupt_files_name_the_file() {
    let e = load_err(Path::new("/nonexistent/medprm-model"), "med-prm");
    assert!(e.contains("not found") && e.contains("/nonexistent/medprm-model"), "{e}");

    let d = model_copy("truncated");
    let d = d.path();
    let f = std::fs::OpenOptions::new().write(true).open(d.join("model.safetensors")).unwrap();
    f.set_len(4096).unwrap();
    let e = load_err(d, "med-prm");
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");

    let d = model_copy("garbage");
    let d = d.path();
    std::fs::write(d.join("model.safetensors"), b"definitely not safetensors").unwrap();
    let e = load_err(d, "med-prm");
    assert!(e.contains("model.safetensors") && e.contains("not a safetensors file"), "{e}");

    let d = model_copy("no-weights");
    let d = d.path();
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = load_err(d, "med-prm");
    assert!(e.contains("model.safetensors"), "{e}");

    let d = scratch("not-gguf");
    let d = d.path();
    std::fs::write(d.join("m.gguf"), b"GGUX nonsense").unwrap();
    let e = load_err(&d.join("m.gguf"), "med-prm");
    assert!(e.contains("m.gguf") && e.contains("GGUF"), "{e}");
}

#[test]
fn unsupported_architecture_and_vocab_mismatch() {
    let d = model_copy("arch");
    let d = d.path();
    edit_json(&d.join("config.json"), |c| {
        c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
        c["model_type"] = "gpt_neox".into();
    });
    let e = load_err(d, "med-prm");
    assert!(e.contains("unsupported") && e.contains("GPTNeoXForCausalLM"), "{e}");

    let d = model_copy("vocab");
    let d = d.path();
    edit_json(&d.join("config.json"), |c| c["vocab_size"] = 128_000.into());
    let e = load_err(d, "med-prm");
    assert!(e.contains("tokenizer") && e.contains("128257") && e.contains("128000"), "{e}");
}

#[test]
fn profile_labels_missing_from_the_tokenizer() {
    let d = model_copy("profile");
    let d = d.path();
    let profile = d.join("odd-profile.json");
    let mut p: serde_json::Value = serde_json::from_str(include_str!("../profiles/med-prm.json")).unwrap();
    p["name"] = "odd".into();
    p["positive_label"] = " definitely-not-one-token".into();
    std::fs::write(&profile, p.to_string()).unwrap();
    let e = load_err(d, profile.to_str().unwrap());
    assert!(e.contains("odd") && e.contains("definitely-not-one-token") && e.contains("single token"), "{e}");
    let e = load_err(d, "no-such-profile");
    assert!(e.contains("med-prm") && e.contains("math-shepherd"), "{e}");
}

#[test]
fn half_precision_scores_stay_close_to_f32() {
    let dir = medprm::tools::testmodel::ensure().unwrap();
    let score = |dtype: &str| {
        let args = ModelArgs { model: dir.clone(), profile: Some("med-prm".into()), adapter: None, dtype: dtype.into(), device: "cpu".into(), gguf_matmul: "auto".into(), mkl_vml: None };
        let e = Engine::load(&args.options().unwrap()).unwrap();
        assert_eq!(e.info.dtype, dtype);
        let ctx = e.builder.context("Which MAP target in septic shock?\n\n(A) 65 mm Hg\n(B) 85 mm Hg", &["Target a MAP of 65 mm Hg.".into()]).unwrap();
        let p = e.builder.prompt(&ctx, &Solution::Steps(vec!["Vasopressors are needed.".into(), "The answer is (A).".into()])).unwrap();
        e.score(&[&p]).unwrap().remove(0)
    };
    let f32s = score("f32");
    for dtype in ["bf16", "f16"] {
        let h = score(dtype);
        for (a, b) in h.iter().zip(&f32s) {
            assert!((a - b).abs() < 0.05, "{dtype}: {a} vs f32 {b}");
        }
    }
}
