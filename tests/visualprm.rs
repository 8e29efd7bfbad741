//! VisualPRM (InternVL2.5) against the reference: the seeded InternVL test model scored by
//! transformers following the authors' recipe (`scripts/golden/make_golden_visualprm.py` →
//! `tests/golden/visualprm.json`). Token ids, pixels and every step score (≤ 1e-4) alone, batched
//! and with the image prefix shared; the other checkpoint layout; and the HTTP routes with images.

mod common;

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use medprm::engine::{Engine, LoadOptions};
use medprm::infer::{prepare_image, ImageInput};
use medprm::prompt::{shared_prefix_len, PreparedImage, Prompt, Solution};
use medprm::tools::visualprm_model::{self, Layout};
use serde_json::{json, Value};

/// Every case, PNG, JPEG and DICOM alike: all three decode to PIL's bytes.
const TOL: f64 = 1e-4;

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let g: Value = serde_json::from_str(include_str!("golden/visualprm.json")).unwrap();
        assert_eq!(g["model"].as_str(), Some(visualprm_model::VERSION), "golden made for another test model");
        g
    })
}

fn cases() -> &'static [Value] {
    golden()["cases"].as_array().unwrap()
}

fn case(id: &str) -> &'static Value {
    cases().iter().find(|c| c["id"] == id).unwrap()
}

/// The VisualPRM profile with another tile limit, as a file.
fn profile_with_max_tiles(max_tiles: u64) -> String {
    if max_tiles == 12 {
        return "visualprm".into();
    }
    let mut p: Value = serde_json::from_str(include_str!("../profiles/visualprm.json")).unwrap();
    p["image"]["max_tiles"] = json!(max_tiles);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("visualprm-max{max_tiles}.json"));
    std::fs::write(&path, p.to_string()).unwrap();
    path.display().to_string()
}

fn engine(max_tiles: u64, layout: Layout) -> &'static Engine {
    static E: OnceLock<std::sync::Mutex<Vec<(u64, Layout, &'static Engine)>>> = OnceLock::new();
    let cell = E.get_or_init(Default::default);
    let mut all = cell.lock().unwrap();
    if let Some((_, _, e)) = all.iter().find(|(m, l, _)| *m == max_tiles && *l == layout) {
        return e;
    }
    let dir = visualprm_model::ensure_visualprm_layout(layout).expect("VisualPRM test model (assets fetched?)");
    let e: &'static Engine = Box::leak(Box::new(Engine::load(&LoadOptions::new(dir, &profile_with_max_tiles(max_tiles))).expect("load")));
    all.push((max_tiles, layout, e));
    e
}

fn file(path: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn images(e: &Engine, c: &Value) -> Vec<Arc<PreparedImage>> {
    let vision = e.info.vision.as_ref().expect("a vision model");
    c["images"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, im)| {
            let input = ImageInput {
                field: format!("images[{i}]"),
                media_type: im["media_type"].as_str().unwrap().into(),
                bytes: Arc::new(file(im["path"].as_str().unwrap())),
            };
            prepare_image(&input, &e.builder, Some(vision), u64::MAX).unwrap()
        })
        .collect()
}

fn prompts(e: &Engine, c: &Value) -> Vec<Prompt> {
    let ctx = e.builder.context_with_images(c["question"].as_str().unwrap(), &[], images(e, c)).unwrap();
    c["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cand| e.builder.prompt(&ctx, &Solution::Raw(cand["solution"].as_str().unwrap().into())).unwrap())
        .collect()
}

fn assert_scores(what: &str, c: &Value, got: &[Vec<f32>]) {
    let cands = c["candidates"].as_array().unwrap();
    assert_eq!(got.len(), cands.len(), "{what}");
    let mut means = vec![];
    for (g, cand) in got.iter().zip(cands) {
        let want: Vec<f64> = cand["step_scores"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(g.len(), want.len(), "{what}: step count");
        for (k, (a, b)) in g.iter().zip(&want).enumerate() {
            assert!((*a as f64 - b).abs() <= TOL, "{what}: step {k}: {a} vs {b}");
        }
        means.push(g.iter().map(|&x| x as f64).sum::<f64>() / g.len() as f64);
    }
    // The first maximum wins, as the reference's stable sort.
    let best = means.iter().enumerate().fold(0, |b, (i, m)| if *m > means[b] { i } else { b });
    assert_eq!(best as u64, c["best"].as_u64().unwrap(), "{what}: best of {means:?}");
}

#[test]
fn prompts_are_the_references_token_for_token() {
    for c in cases() {
        let e = engine(c["max_tiles"].as_u64().unwrap(), Layout::Hf);
        for (p, cand) in prompts(e, c).iter().zip(c["candidates"].as_array().unwrap()) {
            // Runs of the image token are written as [id, count].
            let want: Vec<u32> = cand["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|x| match x.as_array() {
                    Some(run) => vec![run[0].as_u64().unwrap() as u32; run[1].as_u64().unwrap() as usize],
                    None => vec![x.as_u64().unwrap() as u32],
                })
                .collect();
            assert_eq!(p.ids.len(), want.len(), "{}: prompt length", c["id"]);
            let first_diff = p.ids.iter().zip(&want).position(|(a, b)| a != b);
            assert_eq!(first_diff, None, "{}: first differing token", c["id"]);
            let rows: Vec<usize> = cand["score_positions"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            assert_eq!(p.tag_rows, rows, "{}: scored positions", c["id"]);
            let steps: Vec<&str> = cand["steps"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
            assert_eq!(p.steps, steps, "{}: steps", c["id"]);
        }
    }
}

/// Tiles and normalised pixels as the reference's PIL path makes them: sums over every value
/// (PNG, JPEG and DICOM decode to PIL's bytes, so the sums agree to f32 rounding).
#[test]
fn tiles_and_pixels_match_the_reference() {
    for c in cases() {
        let e = engine(c["max_tiles"].as_u64().unwrap(), Layout::Hf);
        for (img, want) in images(e, c).iter().zip(c["images"].as_array().unwrap()) {
            assert_eq!(img.tiles as u64, want["tiles"].as_u64().unwrap(), "{}: tiles", c["id"]);
            assert_eq!(img.tokens, img.tiles * 256);
            let sum: f64 = img.pixels.iter().map(|&x| x as f64).sum();
            let want_sum = want["pixel_sum"].as_f64().unwrap();
            let abs = want["pixel_abs_sum"].as_f64().unwrap();
            assert!((sum - want_sum).abs() <= 1e-6 * abs, "{} {}: pixel sum {sum} vs {want_sum}", c["id"], want["path"]);
            let first8: Vec<f64> = want["pixel_first8"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            for (a, b) in img.pixels.iter().zip(&first8) {
                assert!((*a as f64 - b).abs() <= 1e-6, "{}: first pixels", c["id"]);
            }
        }
    }
}

#[test]
fn step_scores_match_alone() {
    for c in cases() {
        let e = engine(c["max_tiles"].as_u64().unwrap(), Layout::Hf);
        let ps = prompts(e, c);
        let got: Vec<Vec<f32>> = ps.iter().map(|p| e.score(&[p]).unwrap().remove(0)).collect();
        assert_scores(c["id"].as_str().unwrap(), c, &got);
    }
}

/// Every case with the default tiling in one batch (different images, one vision pass each),
/// and the rank case with its image prefix run once for its four candidates.
#[test]
fn step_scores_match_batched_and_with_the_image_prefix_shared() {
    let e = engine(12, Layout::Hf);
    let chosen: Vec<&Value> = cases().iter().filter(|c| c["max_tiles"] == 12).collect();
    let all: Vec<Vec<Prompt>> = chosen.iter().map(|c| prompts(e, c)).collect();
    let flat: Vec<&Prompt> = all.iter().flatten().collect();
    let scores = e.score_all(&flat, usize::MAX).unwrap();
    let mut it = scores.into_iter();
    for (c, ps) in chosen.iter().zip(&all) {
        let got: Vec<Vec<f32>> = it.by_ref().take(ps.len()).collect();
        assert_scores(&format!("batched {}", c["id"]), c, &got);
    }

    let c = case("rank");
    let ps = prompts(e, c);
    let refs: Vec<&Prompt> = ps.iter().collect();
    let shared = shared_prefix_len(&refs);
    let image_tokens = ps[0].images.iter().map(|i| i.tokens).sum::<usize>();
    assert!(shared > image_tokens, "the shared prefix ({shared}) holds the image tokens ({image_tokens})");
    let got = e.score_shared(&refs, shared, usize::MAX).unwrap();
    assert_scores("rank, prefix shared", c, &got);
    // A prefix ending inside the image's tokens splits its features between prefix and suffix.
    let mid = ps[0].ids.iter().position(|&t| t == e.info.vision.as_ref().unwrap().image_token_id).unwrap() + 300;
    let got = e.score_shared(&refs, mid, 2000).unwrap();
    assert_scores("rank, prefix ending inside the image", c, &got);
}

#[test]
fn the_internvl_chat_layout_scores_the_same() {
    let e = engine(12, Layout::InternVlChat);
    assert_eq!(e.info.architecture, "InternLM2ForCausalLM");
    for id in ["two_tiles", "rank"] {
        let c = case(id);
        let ps = prompts(e, c);
        let got: Vec<Vec<f32>> = ps.iter().map(|p| e.score(&[p]).unwrap().remove(0)).collect();
        assert_scores(&format!("internvl-chat {id}"), c, &got);
    }
}

#[test]
fn a_text_only_profile_or_model_refuses_images() {
    let e = engine(12, Layout::Hf);
    let c = case("one_tile");
    let imgs = images(e, c);
    // The question holds more placeholders than images.
    let err = e.builder.context_with_images("<image> and <image>", &[], imgs.clone()).err().expect("refused").to_string();
    assert!(err.contains("question") && err.contains("2 `<image>` placeholders for 1 images"), "{err}");
    // A text-only PRM (the Med-PRM test model) takes none.
    let dir = medprm::tools::testmodel::ensure().unwrap();
    let text = Engine::load(&LoadOptions::new(dir, "med-prm")).unwrap();
    let err = text.builder.context_with_images("q", &[], imgs).err().expect("refused").to_string();
    assert!(err.contains("images") && err.contains("med-prm"), "{err}");
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.expect("json body"))
}

#[tokio::test]
async fn the_server_ranks_with_an_image_and_names_bad_image_fields() {
    let dir = visualprm_model::ensure_visualprm().unwrap();
    let s = common::Server::start_model(&dir, &["--max-images", "2", "--max-image-pixels", "500000"]);
    s.wait_ready().await;
    let http = reqwest::Client::new();
    let info: Value = http.get(s.url("/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["model"]["profile"], "visualprm", "{info}");
    // A model that reads images gets the larger default body limit.
    assert_eq!(info["limits"]["payload_limit"], 32_000_000, "{info}");
    assert_eq!(info["model"]["vision"]["tokens_per_tile"], 256, "{info}");

    let c = case("rank");
    let im = &c["images"][0];
    let images = json!([{"data": b64(&file(im["path"].as_str().unwrap())), "media_type": im["media_type"]}]);
    let candidates: Vec<Value> = c["candidates"].as_array().unwrap().iter().map(|x| json!({"solution": x["solution"]})).collect();
    let body = json!({"question": c["question"], "images": images, "candidates": candidates});
    let (status, v) = post(&http, s.url("/v1/rank"), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["selected"]["index"], c["best"], "{v}");
    let got: Vec<Vec<f32>> = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["steps"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap() as f32).collect())
        .collect();
    let mut by_index = got.clone();
    for (x, cand) in v["candidates"].as_array().unwrap().iter().zip(got) {
        by_index[x["index"].as_u64().unwrap() as usize] = cand;
    }
    assert_scores("server rank", c, &by_index);

    // /v1/score with a DICOM placed inline.
    let c = case("dicom_inline_image");
    let im = &c["images"][0];
    let body = json!({"question": c["question"], "solution": c["candidates"][0]["solution"],
                      "images": [{"data": b64(&file(im["path"].as_str().unwrap())), "media_type": "application/dicom"}]});
    let (status, v) = post(&http, s.url("/v1/score"), &body).await;
    assert_eq!(status, 200, "{v}");
    let got: Vec<f32> = v["steps"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap() as f32).collect();
    assert_scores("server score dicom", c, &[got]);

    // Vision metrics: two images prepared; the rank's image, shared by its four candidates, went
    // through the vision tower once, so two encodings in all.
    let m = http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    // Every expected value is above 0, which is what a missing series reads as.
    let metric = |name: &str| common::metric(&m, &format!("{name} "));
    assert_eq!(metric(r#"medprm_images_total{media_type="image/png"}"#), 1.0);
    assert_eq!(metric(r#"medprm_images_total{media_type="application/dicom"}"#), 1.0);
    assert_eq!(metric("medprm_image_tiles_count"), 2.0);
    assert_eq!(metric("medprm_image_tiles_sum"), (c["images"][0]["tiles"].as_u64().unwrap() + case("rank")["images"][0]["tiles"].as_u64().unwrap()) as f64);
    assert_eq!(metric("medprm_image_preprocess_duration_seconds_count"), 2.0);
    assert_eq!(metric("medprm_vision_images_encoded_total"), 2.0);
    assert_eq!(metric("medprm_vision_duration_seconds_count"), 2.0);

    // Errors name the field.
    let png = file("tests/data/images/square_300.png");
    let one = |data: String, media: &str| json!({"question": "q?", "solution": "a\n\nb", "images": [{"data": data, "media_type": media}]});
    let cases: Vec<(Value, u16, &str)> = vec![
        (one("not base64!".into(), "image/png"), 422, "images[0].data"),
        (one(b64(&png[..png.len() / 2]), "image/png"), 422, "images[0].data"),
        (one(b64(&png), "image/gif"), 422, "images[0].media_type"),
        (one(b64(&file("tests/data/images/tall_500x1400.png")), "image/png"), 413, "images[0]"),
        (json!({"question": "q?", "solution": "a", "images": [
            {"data": b64(&png), "media_type": "image/png"}, {"data": b64(&png), "media_type": "image/png"},
            {"data": b64(&png), "media_type": "image/png"}]}), 422, "--max-images"),
    ];
    for (body, want, needle) in cases {
        let (status, v) = post(&http, s.url("/v1/score"), &body).await;
        assert_eq!(status, want, "{needle}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{needle}: {v}");
    }
    // The server still answers.
    let (status, _) = post(&http, s.url("/v1/score"), &one(b64(&png), "image/png")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_text_only_server_refuses_images_naming_its_profile() {
    let s = common::Server::ready(&[]).await;
    let http = reqwest::Client::new();
    let png = file("tests/data/images/square_300.png");
    let body = json!({"question": "q?", "steps": ["Step 1: a"], "images": [{"data": b64(&png), "media_type": "image/png"}]});
    let (status, v) = post(&http, s.url("/v1/score"), &body).await;
    assert_eq!(status, 422, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.starts_with("images") && msg.contains("med-prm"), "{v}");
    let info: Value = http.get(s.url("/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["limits"]["payload_limit"], 2_000_000, "a text model keeps the small body limit: {info}");
}

/// InternVL's own checkpoints ship an InternLM2 chat template that writes BOS itself; the profile
/// renders its built-in `internvl2_5` template instead, so the scores do not change.
#[test]
fn the_profiles_template_replaces_the_checkpoints_own() {
    let src = visualprm_model::ensure_visualprm().unwrap();
    let dir = std::env::temp_dir().join(format!("medprm-visualprm-own-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["chat_template"] = json!("{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = Engine::load(&LoadOptions::new(&dir, "visualprm")).unwrap();
    let c = case("one_tile");
    let ps = prompts(&e, c);
    let got: Vec<Vec<f32>> = ps.iter().map(|p| e.score(&[p]).unwrap().remove(0)).collect();
    assert_scores("checkpoint with its own template", c, &got);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `medprm score` takes a record's images by path (relative to the input file) and scores like
/// the reference.
#[test]
fn the_cli_scores_records_with_images() {
    let model = visualprm_model::ensure_visualprm().unwrap();
    let dir = std::env::temp_dir().join(format!("medprm-visualprm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = case("rank");
    let im = c["images"][0]["path"].as_str().unwrap();
    std::fs::write(dir.join("strip.png"), file(im)).unwrap();
    let rec = json!({
        "question": c["question"],
        "images": [{"path": "strip.png"}],
        "solutions": c["candidates"].as_array().unwrap().iter().map(|x| json!({"solution": x["solution"]})).collect::<Vec<_>>(),
    });
    let bad = json!({"question": "q?", "images": [{"path": "missing.png"}], "solutions": [{"solution": "a"}]});
    std::fs::write(dir.join("in.jsonl"), format!("{rec}\n")).unwrap();
    std::fs::write(dir.join("bad.jsonl"), format!("{bad}\n")).unwrap();
    let run = |input: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_medprm"))
            .args(["score", "--quiet", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(dir.join(input))
            .arg("--output")
            .arg(dir.join("out.jsonl"))
            .output()
            .unwrap()
    };
    let out = run("in.jsonl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_str(std::fs::read_to_string(dir.join("out.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    let got: Vec<Vec<f32>> = line["solutions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["PRM_score_list"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    assert_scores("cli", c, &got);
    assert_eq!(line["_best_of_n"], c["best"]);
    let out = run("bad.jsonl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("records[0].images[0].path"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
