//! The plots of `medprm eval`, each drawn once per backend with plotters: SVG (inlined in the
//! report) and PNG (plotters' bitmap backend, encoded with the `png` crate). Accuracy against N
//! with 95% bands per selection and per source, ROC curves, reliability diagrams.
//!
//! Text needs a TrueType font (plotters' `ab_glyph`): the first of `$MEDPRM_FONT`, DejaVu Sans,
//! Liberation Sans or any `.ttf` under /usr/share/fonts. Without one the plots are skipped and
//! metrics.json says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use super::metrics_bon::{BonReport, Method};
use super::metrics_step::StepReport;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

fn find_ttf(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
    entries.sort();
    entries.iter().find(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf"))).cloned().or_else(|| {
        if depth == 0 {
            return None;
        }
        entries.iter().filter(|p| p.is_dir()).find_map(|d| find_ttf(d, depth - 1))
    })
}

/// Registers a TrueType font as plotters' "sans-serif" once; the font used, or why there is none.
pub fn ensure_font() -> Result<PathBuf, String> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("MEDPRM_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .chain(find_ttf(Path::new("/usr/share/fonts"), 3))
            .collect();
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(p);
                }
            }
        }
        Err("no TrueType font found (set MEDPRM_FONT to a .ttf, or install fonts-dejavu-core)".into())
    })
    .clone()
}

#[derive(Debug, Clone, Serialize)]
pub struct Plot {
    pub name: String,
    pub title: String,
    pub svg: String,
    pub png: String,
    #[serde(skip)]
    pub svg_text: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Plots {
    pub plots: Vec<Plot>,
    pub font: Option<PathBuf>,
    /// Why plots are missing, when they are.
    pub skipped: Vec<String>,
}

type DrawResult = Result<(), String>;
const W: u32 = 900;
const H: u32 = 560;

fn e<E: std::fmt::Debug>(err: E) -> String {
    format!("{err:?}")
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Lines of (N, mean, lo, hi) with their bands; the Ns (1, 2, 4, …, max) evenly spaced.
fn draw_curves<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, series: &[(String, Vec<(usize, f64, f64, f64)>)]) -> DrawResult {
    root.fill(&WHITE).map_err(e)?;
    let ns: Vec<usize> = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let last = ns.len().saturating_sub(1).max(1) as f64;
    let mut ch = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.15f64..last + 0.15, 0f64..100f64)
        .map_err(e)?;
    let label_of = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 { ns.get(i as usize).map_or(String::new(), |n| n.to_string()) } else { String::new() }
    };
    ch.configure_mesh()
        .x_desc("N (candidates per question; 1, 2, 4, … and the most any question has)")
        .y_desc("accuracy (%)")
        .x_labels(ns.len() * 2 + 1)
        .x_label_formatter(&label_of)
        .draw()
        .map_err(e)?;
    let x = |n: usize| ns.iter().position(|&m| m == n).unwrap_or(0) as f64;
    for (k, (name, pts)) in series.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let mut band: Vec<(f64, f64)> = pts.iter().map(|p| (x(p.0), 100.0 * p.3)).collect();
        band.extend(pts.iter().rev().map(|p| (x(p.0), 100.0 * p.2)));
        ch.draw_series(std::iter::once(Polygon::new(band, c.mix(0.10)))).map_err(e)?;
        ch.draw_series(LineSeries::new(pts.iter().map(|p| (x(p.0), 100.0 * p.1)), c.stroke_width(2)))
            .map_err(e)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        ch.draw_series(pts.iter().map(|p| Circle::new((x(p.0), 100.0 * p.1), 3, c.filled()))).map_err(e)?;
    }
    ch.configure_series_labels().position(SeriesLabelPosition::LowerLeft).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(e)?;
    root.present().map_err(e)
}

fn draw_roc<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> DrawResult {
    root.fill(&WHITE).map_err(e)?;
    let mut ch = ChartBuilder::on(root).caption(title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(55).build_cartesian_2d(0f64..1f64, 0f64..1f64).map_err(e)?;
    ch.configure_mesh().x_desc("false positive rate (wrong steps scored ≥ t)").y_desc("true positive rate (correct steps scored ≥ t)").draw().map_err(e)?;
    ch.draw_series(std::iter::once(PathElement::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))).map_err(e)?;
    for (k, (name, pts)) in curves.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        ch.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(e)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    ch.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(e)?;
    root.present().map_err(e)
}

fn draw_reliability<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, r: &StepReport) -> DrawResult {
    root.fill(&WHITE).map_err(e)?;
    let mut ch = ChartBuilder::on(root).caption(title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(55).build_cartesian_2d(0f64..1f64, 0f64..1f64).map_err(e)?;
    ch.configure_mesh().x_desc("p(+) (bin of the step score)").y_desc("share of correct steps").draw().map_err(e)?;
    ch.draw_series(std::iter::once(PathElement::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3))))
        .map_err(e)?
        .label("perfect calibration")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    let c = PALETTE[0];
    ch.draw_series(r.reliability.iter().filter_map(|b| b.accuracy.map(|a| Rectangle::new([(b.lo + 0.005, 0.0), (b.hi - 0.005, a)], c.mix(0.45).filled()))))
        .map_err(e)?
        .label(format!("share correct per bin (ECE {:.3})", r.ece))
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], c.mix(0.45).filled()));
    let o = PALETTE[1];
    ch.draw_series(r.reliability.iter().filter_map(|b| b.confidence.map(|m| Circle::new((m, b.accuracy.unwrap_or(0.0)), 4, o.filled()))))
        .map_err(e)?
        .label("mean score vs share correct")
        .legend(move |(x, y)| Circle::new((x + 10, y), 4, o.filled()));
    ch.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(e)?;
    root.present().map_err(e)
}

/// Draws one plot to `OUT/name.svg` and `OUT/name.png`.
fn emit(out: &Path, name: &str, title: &str, draw: &dyn Fn(&DrawingArea<SVGBackend, Shift>) -> DrawResult, draw_png: &dyn Fn(&DrawingArea<BitMapBackend, Shift>) -> DrawResult) -> Result<Plot, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        draw(&root)?;
    }
    let mut rgb = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (W, H)).into_drawing_area();
        draw_png(&root)?;
    }
    let svg_path = out.join(format!("{name}.svg"));
    std::fs::write(&svg_path, &svg).map_err(|err| format!("{}: {err}", svg_path.display()))?;
    let png_path = out.join(format!("{name}.png"));
    let f = std::fs::File::create(&png_path).map_err(|err| format!("{}: {err}", png_path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().and_then(|mut w| w.write_image_data(&rgb)).map_err(|err| format!("{}: {err}", png_path.display()))?;
    Ok(Plot { name: name.into(), title: title.into(), svg: format!("{name}.svg"), png: format!("{name}.png"), svg_text: svg })
}

fn curve(r: &BonReport, m: Method, source: Option<&str>) -> Vec<(usize, f64, f64, f64)> {
    r.points
        .iter()
        .filter(|p| p.method == m)
        .filter_map(|p| {
            let s = match source {
                None => Some(p.overall),
                Some(s) => p.per_source.get(s).copied(),
            }?;
            Some((p.n, s.mean, s.lo, s.hi))
        })
        .collect()
}

/// Every plot the results allow; failures are listed, never fatal (metrics.json is the result).
pub fn write_all(out: &Path, bon: Option<&BonReport>, step: &BTreeMap<String, StepReport>) -> Plots {
    let mut plots = Plots::default();
    match ensure_font() {
        Ok(f) => plots.font = Some(f),
        Err(why) => {
            plots.skipped.push(why);
            return plots;
        }
    }
    let mut add = |r: Result<Plot, String>| match r {
        Ok(p) => plots.plots.push(p),
        Err(why) => plots.skipped.push(why),
    };
    if let Some(b) = bon {
        let series: Vec<(String, Vec<_>)> = Method::ALL.iter().map(|&m| (m.name().to_string(), curve(b, m, None))).collect();
        let title = format!("Best-of-N accuracy by selection ({} questions, 95% bootstrap bands)", b.questions);
        add(emit(out, "bon_by_selection", &title, &|r| draw_curves(r, &title, &series), &|r| draw_curves(r, &title, &series)));
        let mut series: Vec<(String, Vec<_>)> = b.sources.keys().map(|s| (s.clone(), curve(b, Method::BestOfNMin, Some(s)))).collect();
        series.push(("macro average".into(), b.points.iter().filter(|p| p.method == Method::BestOfNMin).map(|p| (p.n, p.macro_avg.mean, p.macro_avg.lo, p.macro_avg.hi)).collect()));
        let title = "Best-of-N (min) accuracy by data_source, 95% bootstrap bands".to_string();
        add(emit(out, "bon_by_source", &title, &|r| draw_curves(r, &title, &series), &|r| draw_curves(r, &title, &series)));
    }
    if !step.is_empty() {
        let curves: Vec<(String, Vec<(f64, f64)>)> =
            step.iter().map(|(f, r)| (format!("{f} (AUROC {})", r.auroc.map_or("n/a".into(), |a| format!("{a:.3}"))), r.roc.clone())).collect();
        let title = "ROC of step scores (correct steps as positives)".to_string();
        add(emit(out, "roc", &title, &|r| draw_roc(r, &title, &curves), &|r| draw_roc(r, &title, &curves)));
        for (f, r) in step {
            let title = format!("Reliability of step scores: {f}");
            add(emit(out, &format!("reliability_{f}"), &title, &|a| draw_reliability(a, &title, r), &|a| draw_reliability(a, &title, r)));
        }
    }
    plots
}
