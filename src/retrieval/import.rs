//! Precomputed embeddings for `medprm index --import`, read as a stream: one (chunk, vector) at a
//! time, so a corpus of millions of rows is never held in memory by the reader. Both backends
//! load from it (the embedded index in [`super::index::import_index`], PostgreSQL in
//! [`super::postgres::ingest`]).
//!
//! Sources:
//! * a directory: an index built by `medprm index` (its chunks and vectors as they are);
//! * `FILE.jsonl`: one record a line,
//!   `{"id", "title", "section"?, "text", "vector": [...], "guideline"?, "source"?, ...}`;
//! * `FILE.npy` with `--metadata FILE.jsonl`: a C-order f32 `[n, dim]` matrix, read row by row,
//!   and the same records without `vector`, line i for row i.
//!
//! Imported rows are rendered as the corpus reader renders chunks (`"<title> -- <section>. <text>"`).
//! Every vector's length is checked against the embedder's dimension.

use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::corpus::{self, Chunk};
use super::embed::Embedder;
use super::Index;
use crate::error::{Error, Result};

/// One record of an import file.
#[derive(Deserialize)]
struct Record {
    id: String,
    title: String,
    #[serde(default)]
    section: String,
    text: String,
    #[serde(default)]
    vector: Option<Vec<f32>>,
    #[serde(default)]
    guideline: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    organisation: Option<String>,
    #[serde(default)]
    year: Option<i32>,
    #[serde(default)]
    doi: Option<String>,
}

impl Record {
    fn chunk(self) -> (Chunk, Option<Vec<f32>>) {
        let text = format!("{}{}", corpus::render_prefix(&self.title, &self.section), self.text.trim());
        let guideline = self.guideline.unwrap_or_else(|| self.id.rsplit_once('#').map(|(s, _)| s).unwrap_or(&self.id).to_string());
        let c = Chunk {
            source: self.source.unwrap_or_else(|| self.id.clone()),
            id: self.id,
            guideline,
            section: self.section,
            title: self.title,
            organisation: self.organisation,
            year: self.year,
            doi: self.doi,
            text,
            tokens: 0,
        };
        (c, self.vector)
    }
}

/// Non-empty lines of a JSONL file, numbered from 1.
struct JsonlLines {
    path: PathBuf,
    lines: Lines<BufReader<File>>,
    line_no: usize,
}

impl JsonlLines {
    fn open(path: &Path) -> Result<JsonlLines> {
        let f = File::open(path).map_err(|e| Error::bad_file(path, e))?;
        Ok(JsonlLines { path: path.to_path_buf(), lines: BufReader::new(f).lines(), line_no: 0 })
    }

    /// The next record and its line number.
    fn next_record(&mut self) -> Option<Result<(usize, Record)>> {
        loop {
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => return Some(Err(Error::bad_file(&self.path, e))),
            };
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            let n = self.line_no;
            return Some(
                serde_json::from_str(&line)
                    .map(|r| (n, r))
                    .map_err(|e| Error::bad_file(&self.path, format!("line {n}: {e}"))),
            );
        }
    }
}

/// Non-empty lines of `path` (one pass, for the row count and the progress bar).
fn count_records(path: &Path) -> Result<usize> {
    let f = File::open(path).map_err(|e| Error::bad_file(path, e))?;
    let mut n = 0;
    for line in BufReader::new(f).lines() {
        if !line.map_err(|e| Error::bad_file(path, e))?.trim().is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

enum Inner {
    Index { index: Box<Index>, next: usize },
    Jsonl(JsonlLines),
    Npy { meta: JsonlLines, npy: npyz::NpyReader<f32, BufReader<File>>, file: PathBuf, row: usize },
}

/// The rows of an import, in file order.
pub struct ImportReader {
    rows: usize,
    dim: usize,
    embedder: String,
    inner: Inner,
}

impl ImportReader {
    /// Opens `file` (and `metadata` for an .npy) and checks what can be checked before reading:
    /// the matrix's shape and type, and that its row count matches the metadata's.
    pub fn open(file: &Path, metadata: Option<&Path>, embedder: &Embedder) -> Result<ImportReader> {
        let dim = embedder.dimension();
        let name = embedder.name().to_string();
        if file.is_dir() {
            let index = Index::open_with_embedder(file, Some(embedder.dir()))?;
            if index.manifest().embedder != name {
                return Err(Error::input(
                    "import",
                    format!("{}: built with the embedder `{}`, this run loads `{name}`", file.display(), index.manifest().embedder),
                ));
            }
            let rows = index.chunks().len();
            return Ok(ImportReader { rows, dim, embedder: name, inner: Inner::Index { index: Box::new(index), next: 0 } });
        }
        if !file.is_file() {
            return Err(Error::input("import", format!("{}: no such file or directory", file.display())));
        }
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        match (ext, metadata) {
            ("npy", Some(meta)) => {
                let rows = count_records(meta)?;
                let f = File::open(file).map_err(|e| Error::bad_file(file, e))?;
                let npy = npyz::NpyFile::new(BufReader::with_capacity(1 << 20, f)).map_err(|e| Error::bad_file(file, e))?;
                let shape = npy.shape().to_vec();
                if shape.len() != 2 || shape[0] as usize != rows {
                    return Err(Error::bad_file(file, format!("shape {shape:?}, expected [{rows}, {dim}] (one row per metadata line)")));
                }
                if shape[1] as usize != dim {
                    return Err(Error::input("import", format!("{}: {}-d vectors, the embedder `{name}` is {dim}-d", file.display(), shape[1])));
                }
                if npy.order() != npyz::Order::C {
                    return Err(Error::bad_file(file, "Fortran-order matrix; write it in C order (numpy's default)"));
                }
                let npy = npy.data::<f32>().map_err(|e| Error::bad_file(file, format!("not an f32 matrix: {e}")))?;
                let meta = JsonlLines::open(meta)?;
                Ok(ImportReader { rows, dim, embedder: name, inner: Inner::Npy { meta, npy, file: file.to_path_buf(), row: 0 } })
            }
            ("npy", None) => Err(Error::input("metadata", "an .npy import needs --metadata FILE.jsonl (id, title, section, text per row)")),
            _ => {
                let rows = count_records(file)?;
                Ok(ImportReader { rows, dim, embedder: name, inner: Inner::Jsonl(JsonlLines::open(file)?) })
            }
        }
    }

    /// Rows in the import.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dimension(&self) -> usize {
        self.dim
    }

    /// Up to `n` more rows (fewer only at the end).
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<(Chunk, Vec<f32>)>> {
        let mut out = Vec::with_capacity(n.min(self.rows));
        while out.len() < n {
            match self.next() {
                Some(r) => out.push(r?),
                None => break,
            }
        }
        Ok(out)
    }

    fn check(&self, i: usize, c: &Chunk, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            return Err(Error::input(
                "import",
                format!("row {} ({}): {}-d vector, the embedder `{}` is {}-d", i + 1, c.id, v.len(), self.embedder, self.dim),
            ));
        }
        if let Some(j) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::input("import", format!("row {} ({}): component {j} is not a finite number", i + 1, c.id)));
        }
        Ok(())
    }
}

impl Iterator for ImportReader {
    type Item = Result<(Chunk, Vec<f32>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let dim = self.dim;
        let (i, item) = match &mut self.inner {
            Inner::Index { index, next } => {
                let i = *next;
                if i >= index.chunks().len() {
                    return None;
                }
                *next += 1;
                let v = index.embeddings.get(i).and_then(|t| t.to_vec1::<f32>()).map_err(Error::from);
                (i, v.map(|v| (index.chunks()[i].clone(), v)))
            }
            Inner::Jsonl(lines) => {
                let (n, r) = match lines.next_record()? {
                    Ok(x) => x,
                    Err(e) => return Some(Err(e)),
                };
                let (c, v) = r.chunk();
                let i = n - 1;
                match v {
                    Some(v) => (i, Ok((c, v))),
                    None => (i, Err(Error::bad_file(&lines.path, format!("line {n}: no `vector`")))),
                }
            }
            Inner::Npy { meta, npy, file, row } => {
                let r = match meta.next_record()? {
                    Ok((_, r)) => r,
                    Err(e) => return Some(Err(e)),
                };
                let i = *row;
                *row += 1;
                let mut v = Vec::with_capacity(dim);
                for _ in 0..dim {
                    match npy.next() {
                        Some(Ok(x)) => v.push(x),
                        Some(Err(e)) => return Some(Err(Error::bad_file(file.as_path(), format!("row {}: {e}", i + 1)))),
                        None => return Some(Err(Error::bad_file(file.as_path(), format!("ends inside row {}", i + 1)))),
                    }
                }
                (i, Ok((r.chunk().0, v)))
            }
        };
        Some(item.and_then(|(c, v)| {
            self.check(i, &c, &v)?;
            Ok((c, v))
        }))
    }
}
