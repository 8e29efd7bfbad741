//! report.html: one self-contained page (inline CSS and SVG, no external assets) with the
//! command line, the scorer's model and profile, the dataset hashes, the tables and the plots.

use serde_json::Value;

use super::plots::Plots;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or("n/a".into(), |x| format!("{:.2}", 100.0 * x))
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("n/a".into(), |x| format!("{x:.digits$}"))
}

/// The page for a metrics.json value and its plots.
pub fn render(m: &Value, plots: &Plots) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>medprm eval report</title>\n<style>\
body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}code,pre{background:#f6f6f6;padding:2px 4px}\
pre{white-space:pre-wrap;word-break:break-all}.plots{display:grid;grid-template-columns:1fr 1fr;gap:8px}figure{margin:0}figure svg{width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:12px}\
</style></head><body>\n<h1>medprm eval</h1>\n");
    let cmd: Vec<String> = m["command_line"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).map(String::from).collect();
    h.push_str(&format!("<h2>Run</h2><p>Command line:</p><pre>{}</pre>\n", esc(&cmd.join(" "))));
    let info = &m["scorer"]["info"];
    let model = &info["model"];
    h.push_str(&format!(
        "<table><tr><th>scorer</th><td>{}</td></tr><tr><th>model</th><td>{}</td></tr><tr><th>profile</th><td>{}</td></tr>\
<tr><th>format / dtype / device</th><td>{} / {} / {}</td></tr><tr><th>documents</th><td>{}</td></tr><tr><th>medprm</th><td>{}</td></tr></table>\n",
        esc(m["scorer"]["url"].as_str().unwrap_or("in process")),
        esc(model["model"].as_str().unwrap_or("?")),
        esc(model["profile"].as_str().unwrap_or("?")),
        esc(model["format"].as_str().unwrap_or("?")),
        esc(model["dtype"].as_str().unwrap_or("?")),
        esc(model["device"].as_str().unwrap_or("?")),
        esc(info["documents_source"].as_str().unwrap_or("?")),
        esc(info["version"].as_str().unwrap_or("?")),
    ));
    h.push_str("<h2>Plots</h2><div class=\"plots\">\n");
    for s in &plots.skipped {
        h.push_str(&format!("<p>Plot skipped: {}</p>\n", esc(s)));
    }
    for p in &plots.plots {
        h.push_str(&format!("<figure id=\"{}\">{}<figcaption>{} (also <code>{}</code>, <code>{}</code>)</figcaption></figure>\n", esc(&p.name), strip_xml_decl(&p.svg_text), esc(&p.title), esc(&p.svg), esc(&p.png)));
    }
    h.push_str("</div>\n");
    h.push_str("<h2>Datasets</h2><table><tr><th>file</th><th>format</th><th>records</th><th>sha256</th></tr>\n");
    for i in m["inputs"].as_array().into_iter().flatten() {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
            esc(i["path"].as_str().unwrap_or("")),
            esc(i["format"].as_str().unwrap_or("")),
            i["records"],
            esc(i["sha256"].as_str().unwrap_or(""))
        ));
    }
    h.push_str("</table>\n");
    let s = &m["scoring"];
    h.push_str(&format!(
        "<p>Requests sent to the scorer: {}; answered from the score cache: {}; refused: {}.</p>\n",
        s["requests_sent_to_scorer"], s["requests_from_cache"], s["refused"]
    ));
    if let Some(r) = m["refused"].as_array().filter(|r| !r.is_empty()) {
        h.push_str("<h3>Refused</h3><table><tr><th>file</th><th>record</th><th>candidate</th><th>status</th><th>error</th></tr>\n");
        for x in r {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(x["file"].as_str().unwrap_or("")),
                x["record"],
                x["candidate"],
                x["status"],
                esc(x["error"].as_str().unwrap_or(""))
            ));
        }
        h.push_str("</table>\n");
    }
    let b = &m["best_of_n"];
    if b.is_object() {
        h.push_str(&format!(
            "<h2>Best-of-N</h2><p>{} questions, {} candidates ({} refused); {} draws per N, seed {}, {} bootstrap resamples (95% percentile intervals). \
Accuracy in %, mean [low, high].</p><p><b>Tie rule.</b> {}</p>\n",
            b["questions"], b["candidates"], b["refused"], m["settings"]["draws"], b["seed"], b["bootstrap_resamples"], esc(b["tie_rule"].as_str().unwrap_or(""))
        ));
        let points: Vec<&Value> = b["points"].as_array().into_iter().flatten().collect();
        let ns: Vec<u64> = points.iter().filter_map(|p| p["n"].as_u64()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let methods: Vec<String> = points.iter().filter_map(|p| p["method"].as_str().map(String::from)).fold(Vec::new(), |mut v, x| {
            if !v.contains(&x) {
                v.push(x);
            }
            v
        });
        h.push_str("<table><tr><th>selection</th>");
        for n in &ns {
            h.push_str(&format!("<th>N={n}</th>"));
        }
        h.push_str("<th>ties at N max (decisive)</th></tr>\n");
        for meth in &methods {
            h.push_str(&format!("<tr><td>{}</td>", esc(meth)));
            let mut last = None;
            for n in &ns {
                let p = points.iter().find(|p| p["n"].as_u64() == Some(*n) && p["method"].as_str() == Some(meth));
                match p {
                    Some(p) => {
                        h.push_str(&format!("<td>{} [{}, {}]</td>", pct(&p["overall"]["mean"]), pct(&p["overall"]["lo"]), pct(&p["overall"]["hi"])));
                        last = Some(*p);
                    }
                    None => h.push_str("<td></td>"),
                }
            }
            h.push_str(&format!("<td>{}</td></tr>\n", last.map_or(String::new(), |p| format!("{} ({})", p["ties"], p["decisive_ties"]))));
        }
        h.push_str("</table>\n");
        if let Some(maxn) = ns.last() {
            let sources: Vec<String> = b["sources"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
            h.push_str(&format!("<h3>By data_source at N={maxn}</h3><table><tr><th>selection</th>"));
            for s in &sources {
                h.push_str(&format!("<th>{} ({})</th>", esc(s), b["sources"][s]));
            }
            h.push_str("<th>macro average</th></tr>\n");
            for meth in &methods {
                let Some(p) = points.iter().find(|p| p["n"].as_u64() == Some(*maxn) && p["method"].as_str() == Some(meth)) else { continue };
                h.push_str(&format!("<tr><td>{}</td>", esc(meth)));
                for s in &sources {
                    h.push_str(&format!("<td>{}</td>", pct(&p["per_source"][s]["mean"])));
                }
                h.push_str(&format!("<td>{} [{}, {}]</td></tr>\n", pct(&p["macro_avg"]["mean"]), pct(&p["macro_avg"]["lo"]), pct(&p["macro_avg"]["hi"])));
            }
            h.push_str("</table>\n");
        }
    }
    if let Some(steps) = m["step_level"].as_object().filter(|s| !s.is_empty()) {
        h.push_str(&format!(
            "<h2>Step level</h2><p>Threshold {}: a step scored under it is predicted wrong; the first such step is the predicted first error \
(ProcessBench). ProcessBench F1 = 2ab/(a+b) of a = accuracy on solutions with a wrong step (first-error accuracy) and b = accuracy on \
correct solutions. The best threshold of the sweep is chosen on these same data: it is optimistic, not a result. Values in % except AUROC and ECE.</p>\n",
            m["settings"]["threshold"]
        ));
        h.push_str("<table><tr><th>layout</th><th>solutions</th><th>refused</th><th>labelled steps</th><th>first-error acc.</th><th>correct acc.</th>\
<th>ProcessBench F1</th><th>positive F1</th><th>negative F1</th><th>macro-F1</th><th>AUROC</th><th>ECE</th><th>best threshold (F1 there)</th></tr>\n");
        for (f, r) in steps {
            let a = &r["at_threshold"];
            let best = &r["best_threshold_on_this_data"];
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td></tr>\n",
                esc(f), r["solutions"], r["refused"], r["labelled_steps"], pct(&a["erroneous_accuracy"]), pct(&a["correct_accuracy"]), pct(&a["processbench_f1"]),
                pct(&a["positive_f1"]), pct(&a["negative_f1"]), pct(&a["macro_f1"]), num(&r["auroc"], 3), num(&r["ece"], 3),
                num(&best["threshold"], 2), pct(&best["processbench_f1"])
            ));
        }
        h.push_str("</table>\n");
        for (f, r) in steps {
            h.push_str(&format!("<h3>{} by data_source</h3><table><tr><th>data_source</th><th>solutions</th><th>ProcessBench F1</th><th>macro-F1</th><th>AUROC</th></tr>\n", esc(f)));
            for (s, v) in r["per_source"].as_object().into_iter().flatten() {
                h.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    esc(s), v["solutions"], pct(&v["at_threshold"]["processbench_f1"]), pct(&v["at_threshold"]["macro_f1"]), num(&v["auroc"], 3)
                ));
            }
            h.push_str("</table>\n");
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn strip_xml_decl(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_has_no_external_assets() {
        let m = serde_json::json!({"command_line": ["medprm", "eval", "--input", "<x>.json"], "scorer": {"info": {}}, "inputs": [], "scoring": {}, "refused": [], "best_of_n": null, "step_level": {}, "settings": {}});
        let h = render(&m, &Plots::default());
        assert!(h.contains("&lt;x&gt;.json"));
        assert!(!h.contains("<script") && !h.contains("src=\"http") && !h.contains("<link"));
    }
}
