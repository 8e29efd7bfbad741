//! The on-disk index. A directory holding
//!
//! * `manifest.json`: format version, corpus path and format, chunk count, embedder, dimension,
//!   chunk token cap;
//! * `chunks.jsonl`: one [`Chunk`] per line, in index order (the order every tie is broken by);
//! * `tantivy/`: the BM25 index of the rendered chunk texts, built by one thread into ONE segment
//!   so that document i is chunk i and scores never depend on segment layout;
//! * `embeddings.safetensors`: tensor `embeddings`, f32 `[chunks, dimension]`, L2-normalised rows.
//!
//! An index is built into a temporary sibling directory and renamed into place when complete.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tantivy::schema::{IndexRecordOption, Schema, TextFieldIndexing, TextOptions};

use super::corpus::{self, Chunk, CorpusFormat};
use super::embed::Embedder;
use super::{IndexInfo, MAX_CHUNK_TOKENS};
use crate::error::{Error, Result};

pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const CHUNKS: &str = "chunks.jsonl";
const TANTIVY: &str = "tantivy";
const EMBEDDINGS: &str = "embeddings.safetensors";
const EMBEDDINGS_TENSOR: &str = "embeddings";
/// The tantivy analyzer: simple word split, lower case, English (Porter) stemming.
pub(crate) const ANALYZER: &str = "en_stem";
pub(crate) const TEXT_FIELD: &str = "text";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub corpus: String,
    pub corpus_format: CorpusFormat,
    pub chunks: usize,
    pub embedder: String,
    pub embedder_dir: String,
    pub dimension: usize,
    pub max_chunk_tokens: usize,
    pub analyzer: String,
}

/// A loaded index. Searching takes `&self`; share it across threads behind an `Arc`.
pub struct Index {
    pub(crate) dir: PathBuf,
    pub(crate) manifest: Manifest,
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) reader: tantivy::IndexReader,
    pub(crate) tantivy: tantivy::Index,
    pub(crate) text_field: tantivy::schema::Field,
    /// `[chunks, dimension]` f32, unit rows.
    pub(crate) embeddings: Tensor,
    pub(crate) embedder: Embedder,
}

fn schema() -> (Schema, tantivy::schema::Field) {
    let mut b = Schema::builder();
    let opts = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqs),
    );
    let text = b.add_text_field(TEXT_FIELD, opts);
    (b.build(), text)
}

fn tantivy_err(path: &Path, e: tantivy::TantivyError) -> Error {
    Error::bad_file(path, format!("tantivy: {e}"))
}

/// The BM25 half of an index being written: one thread, one commit, merged to one segment if the
/// memory budget ever split it.
struct Bm25Writer {
    dir: PathBuf,
    index: tantivy::Index,
    writer: tantivy::IndexWriter,
    text: tantivy::schema::Field,
}

impl Bm25Writer {
    fn create(index_dir: &Path) -> Result<Bm25Writer> {
        let dir = index_dir.join(TANTIVY);
        std::fs::create_dir_all(&dir).map_err(|e| Error::bad_file(&dir, e))?;
        let (schema, text) = schema();
        let index = tantivy::Index::create_in_dir(&dir, schema).map_err(|e| tantivy_err(&dir, e))?;
        let writer = index.writer_with_num_threads(1, 200_000_000).map_err(|e| tantivy_err(&dir, e))?;
        Ok(Bm25Writer { dir, index, writer, text })
    }

    fn add(&mut self, chunk_text: &str) -> Result<()> {
        let mut doc = tantivy::TantivyDocument::default();
        doc.add_text(self.text, chunk_text);
        self.writer.add_document(doc).map_err(|e| tantivy_err(&self.dir, e))?;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        let dir = &self.dir;
        self.writer.commit().map_err(|e| tantivy_err(dir, e))?;
        let segments = self.index.searchable_segment_ids().map_err(|e| tantivy_err(dir, e))?;
        if segments.len() > 1 {
            self.writer.merge(&segments).wait().map_err(|e| tantivy_err(dir, e))?;
        }
        self.writer.wait_merging_threads().map_err(|e| tantivy_err(dir, e))?;
        Ok(())
    }
}

/// Reads and chunks `corpus`, embeds every chunk with the embedder in `embedder_dir` and writes
/// the index into `out`, which must not exist yet or be an empty directory.
pub fn build_index(corpus: &Path, out: &Path, embedder_dir: &Path) -> Result<IndexInfo> {
    corpus::detect_format(corpus)?;
    check_out(out)?;
    let embedder = Embedder::load(embedder_dir)?;
    let t = Instant::now();
    let (format, chunks) =
        crate::progress::activity("reading and chunking the corpus", true, || corpus::load(corpus, embedder.tokenizer(), MAX_CHUNK_TOKENS))?;
    tracing::info!(chunks = chunks.len(), secs = t.elapsed().as_secs_f32(), "corpus chunked");

    write_atomically(out, |tmp| write_index(tmp, corpus, format, &chunks, &embedder))
}

/// Checks that `out` is absent or an empty directory.
fn check_out(out: &Path) -> Result<()> {
    if out.exists() {
        let empty = out.is_dir() && std::fs::read_dir(out).map_err(|e| Error::bad_file(out, e))?.next().is_none();
        if !empty {
            return Err(Error::input("out", format!("{} already exists and is not an empty directory", out.display())));
        }
    }
    Ok(())
}

/// Runs `write` on a temporary sibling of `out` and renames it into place when it succeeds.
fn write_atomically(out: &Path, write: impl FnOnce(&Path) -> Result<IndexInfo>) -> Result<IndexInfo> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::bad_file(&parent, e))?;
    let name = out.file_name().ok_or_else(|| Error::input("out", format!("{}: not a directory name", out.display())))?;
    let tmp = parent.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::bad_file(&tmp, e))?;
    let info = match write(&tmp) {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir(out).map_err(|e| Error::bad_file(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::bad_file(out, e))?;
    Ok(info)
}

fn write_index(dir: &Path, corpus: &Path, format: CorpusFormat, chunks: &[Chunk], embedder: &Embedder) -> Result<IndexInfo> {
    // Chunks.
    let path = dir.join(CHUNKS);
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| Error::bad_file(&path, e))?);
    for c in chunks {
        serde_json::to_writer(&mut w, c).map_err(|e| Error::bad_file(&path, e))?;
        w.write_all(b"\n").map_err(|e| Error::bad_file(&path, e))?;
    }
    w.flush().map_err(|e| Error::bad_file(&path, e))?;

    let mut bm25 = Bm25Writer::create(dir)?;
    for c in chunks {
        bm25.add(&c.text)?;
    }
    bm25.finish()?;

    // Dense.
    let t = Instant::now();
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    // The long step (minutes on a CPU): a bar with rate and ETA on a terminal, a log line per
    // tenth elsewhere.
    let mut bar = crate::progress::Bar::new("embedding chunks", chunks.len() as u64, "chunks");
    let vectors = embedder.embed_all_with(&texts, |n| bar.inc(n as u64))?;
    bar.finish();
    tracing::info!(chunks = chunks.len(), secs = t.elapsed().as_secs_f32(), "chunks embedded");
    let flat: Vec<f32> = vectors.into_iter().flatten().collect();
    let tensor = Tensor::from_vec(flat, (chunks.len(), embedder.dimension()), &Device::Cpu)?;
    let path = dir.join(EMBEDDINGS);
    tensor.save_safetensors(EMBEDDINGS_TENSOR, &path)?;

    let manifest = Manifest {
        version: FORMAT_VERSION,
        corpus: corpus.canonicalize().unwrap_or_else(|_| corpus.to_path_buf()).display().to_string(),
        corpus_format: format,
        chunks: chunks.len(),
        embedder: embedder.name().to_string(),
        embedder_dir: embedder.dir().canonicalize().unwrap_or_else(|_| embedder.dir().to_path_buf()).display().to_string(),
        dimension: embedder.dimension(),
        max_chunk_tokens: MAX_CHUNK_TOKENS,
        analyzer: ANALYZER.to_string(),
    };
    write_manifest(dir, &manifest)
}

/// Writes an index from precomputed chunks and vectors (`medprm index --import`, see
/// [`super::import`]) into `out`, which must not exist yet or be an empty directory. One pass
/// over the import: each row goes to `chunks.jsonl`, the tantivy writer and the embedding file
/// as it is read, so the vectors are never held in memory (the embedding file is written row by
/// row: the safetensors layout is an 8-byte header length, a JSON header, then the raw
/// little-endian matrix). Rows are L2-normalised, as the embedder's own vectors are; a zero
/// vector is refused. The embedder is only checked (name and dimension), not run.
pub fn import_index(file: &Path, metadata: Option<&Path>, out: &Path, embedder_dir: &Path) -> Result<IndexInfo> {
    check_out(out)?;
    let embedder = Embedder::load(embedder_dir)?;
    let reader = super::import::ImportReader::open(file, metadata, &embedder)?;
    if reader.rows() == 0 {
        return Err(Error::input("import", format!("{}: no rows", file.display())));
    }
    write_atomically(out, |tmp| write_import(tmp, file, reader, &embedder))
}

fn write_import(dir: &Path, file: &Path, mut reader: super::import::ImportReader, embedder: &Embedder) -> Result<IndexInfo> {
    let rows = reader.rows();
    let dim = reader.dimension();
    let cpath = dir.join(CHUNKS);
    let mut chunks_out = std::io::BufWriter::new(std::fs::File::create(&cpath).map_err(|e| Error::bad_file(&cpath, e))?);
    let epath = dir.join(EMBEDDINGS);
    let mut emb = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&epath).map_err(|e| Error::bad_file(&epath, e))?);
    let header = serde_json::json!({
        EMBEDDINGS_TENSOR: {"dtype": "F32", "shape": [rows, dim], "data_offsets": [0, rows * dim * 4]}
    })
    .to_string();
    // The data starts 8-byte aligned (the header is padded with spaces, as the format allows).
    let header = format!("{header:<width$}", width = header.len().div_ceil(8) * 8);
    emb.write_all(&(header.len() as u64).to_le_bytes()).map_err(|e| Error::bad_file(&epath, e))?;
    emb.write_all(header.as_bytes()).map_err(|e| Error::bad_file(&epath, e))?;

    let mut bm25 = Bm25Writer::create(dir)?;

    let mut bar = crate::progress::Bar::new("importing chunks", rows as u64, "chunks");
    let mut n = 0usize;
    let mut ids = std::collections::HashSet::new();
    for row in reader.by_ref() {
        let (c, mut v) = row?;
        if !ids.insert(c.id.clone()) {
            return Err(Error::input("import", format!("row {}: duplicate id `{}`", n + 1, c.id)));
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 {
            return Err(Error::input("import", format!("row {} ({}): zero vector", n + 1, c.id)));
        }
        for x in v.iter_mut() {
            *x /= norm;
            emb.write_all(&x.to_le_bytes()).map_err(|e| Error::bad_file(&epath, e))?;
        }
        serde_json::to_writer(&mut chunks_out, &c).map_err(|e| Error::bad_file(&cpath, e))?;
        chunks_out.write_all(b"\n").map_err(|e| Error::bad_file(&cpath, e))?;
        bm25.add(&c.text)?;
        n += 1;
        if n.is_multiple_of(1024) {
            bar.inc(1024);
        }
    }
    bar.inc((n % 1024) as u64);
    bar.finish();
    if n != rows {
        return Err(Error::bad_file(file, format!("{n} rows read, {rows} expected")));
    }
    chunks_out.flush().map_err(|e| Error::bad_file(&cpath, e))?;
    emb.flush().map_err(|e| Error::bad_file(&epath, e))?;
    let t = Instant::now();
    bm25.finish()?;
    tracing::info!(chunks = n, secs = t.elapsed().as_secs_f32(), "BM25 index committed and merged");

    let manifest = Manifest {
        version: FORMAT_VERSION,
        corpus: file.canonicalize().unwrap_or_else(|_| file.to_path_buf()).display().to_string(),
        corpus_format: CorpusFormat::Import,
        chunks: n,
        embedder: embedder.name().to_string(),
        embedder_dir: embedder.dir().canonicalize().unwrap_or_else(|_| embedder.dir().to_path_buf()).display().to_string(),
        dimension: dim,
        max_chunk_tokens: MAX_CHUNK_TOKENS,
        analyzer: ANALYZER.to_string(),
    };
    write_manifest(dir, &manifest)
}

/// Writes the index's manifest (the last file an index build writes) and returns what it describes.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<IndexInfo> {
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(manifest).map_err(|e| Error::bad_file(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::bad_file(&path, e))?;
    Ok(info_of(manifest))
}

fn info_of(m: &Manifest) -> IndexInfo {
    IndexInfo { chunks: m.chunks, corpus: m.corpus.clone(), embedder: m.embedder.clone(), dimension: m.dimension }
}

impl Index {
    /// Opens an index written by [`build_index`], with the embedder recorded in its manifest.
    pub fn open(dir: &Path) -> Result<Index> {
        Self::open_with_embedder(dir, None)
    }

    /// Opens an index with the embedder at `embedder_dir` instead of the manifest's path (for an
    /// index moved to another machine). It must be the model the index was built with.
    pub fn open_with_embedder(dir: &Path, embedder_dir: Option<&Path>) -> Result<Index> {
        if !dir.is_dir() {
            return Err(Error::input("index", format!("{}: no such index directory", dir.display())));
        }
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            return Err(Error::input("index", format!("{}: not an index (no {MANIFEST}; build one with `medprm index`)", dir.display())));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::bad_file(&path, e))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, e))?;
        if manifest.version != FORMAT_VERSION {
            return Err(Error::bad_file(&path, format!("index format {} (this build reads {FORMAT_VERSION}): rebuild it", manifest.version)));
        }

        let path = dir.join(CHUNKS);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::bad_file(&path, e))?;
        let chunks: Vec<Chunk> = text
            .lines()
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::bad_file(&path, format!("line {}: {e}", i + 1))))
            .collect::<Result<_>>()?;
        if chunks.len() != manifest.chunks {
            return Err(Error::bad_file(&path, format!("{} chunks, the manifest says {}", chunks.len(), manifest.chunks)));
        }

        let tdir = dir.join(TANTIVY);
        let tantivy = tantivy::Index::open_in_dir(&tdir).map_err(|e| tantivy_err(&tdir, e))?;
        let text_field = tantivy.schema().get_field(TEXT_FIELD).map_err(|e| tantivy_err(&tdir, e))?;
        let reader = tantivy
            .reader_builder()
            .reload_policy(tantivy::ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| tantivy_err(&tdir, e))?;
        {
            let searcher = reader.searcher();
            let segs = searcher.segment_readers();
            if segs.len() != 1 || segs[0].num_docs() as usize != chunks.len() || segs[0].num_deleted_docs() != 0 {
                return Err(Error::bad_file(
                    &tdir,
                    format!("expected one segment of {} documents, found {} segment(s)", chunks.len(), segs.len()),
                ));
            }
        }

        let path = dir.join(EMBEDDINGS);
        if !path.is_file() {
            return Err(Error::MissingFile(path));
        }
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
        let t = tensors
            .remove(EMBEDDINGS_TENSOR)
            .ok_or_else(|| Error::bad_file(&path, format!("no tensor `{EMBEDDINGS_TENSOR}`")))?;
        if t.dims() != [chunks.len(), manifest.dimension] || t.dtype() != candle_core::DType::F32 {
            return Err(Error::bad_file(
                &path,
                format!("shape {:?} {:?}, expected [{}, {}] f32", t.dims(), t.dtype(), chunks.len(), manifest.dimension),
            ));
        }
        let embeddings = t.contiguous()?;

        let embedder = Embedder::load(embedder_dir.unwrap_or(Path::new(&manifest.embedder_dir)))?;
        if embedder.dimension() != manifest.dimension {
            return Err(Error::bad_file(
                embedder.dir(),
                format!("embedder dimension {} but the index was built with {}", embedder.dimension(), manifest.dimension),
            ));
        }
        Ok(Index { dir: dir.to_path_buf(), manifest, chunks, reader, tantivy, text_field, embeddings, embedder })
    }

    pub fn info(&self) -> IndexInfo {
        info_of(&self.manifest)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The chunks in index order.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
