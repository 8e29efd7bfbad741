//! Deployment artifacts checked against the server they deploy: the Dockerfiles, the Kubernetes
//! manifests in deploy/kubernetes and the Grafana dashboard must name ports, probe paths,
//! `MEDPRM_*` variables and `medprm_*` metrics that the binary and its metric registry really
//! have. Needs neither Docker nor a cluster: everything is parsed, and the real binary is only
//! asked for `serve --help` and to start with each artifact's environment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use medprm::metrics::Metrics;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of a file (empty documents, e.g. after a trailing `---`, skipped).
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

const K8S: &str = "deploy/kubernetes";

/// All objects of deploy/kubernetes/*.yaml, with the file each came from.
fn manifests() -> Vec<(String, Value)> {
    manifests_in(K8S)
}

/// All objects of `dir`/*.yaml (relative to the repository), with the file each came from.
fn manifests_in(dir: &str) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let docs = yaml_docs(&std::fs::read_to_string(&f).unwrap(), &name);
        assert!(!docs.is_empty(), "{name}: no YAML document");
        out.extend(docs.into_iter().map(|d| (name.clone(), d)));
    }
    out
}

/// The single object of `kind` (panics when there are none or several).
fn one(all: &[(String, Value)], kind: &str) -> Value {
    let found: Vec<&Value> = all.iter().map(|(_, v)| v).filter(|v| v["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}, found {}", found.len());
    found[0].clone()
}

fn by_name(all: &[(String, Value)], kind: &str, name: &str) -> Value {
    all.iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
        .clone()
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

fn int(v: &Value, what: &str) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("{what}: expected an integer, got {v}"))
}

/// `selector` (a label map) selects an object carrying `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector map");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The medprm container of the Deployment.
fn container(dep: &Value) -> Value {
    let cs = dep["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    cs.iter().find(|c| c["name"] == "medprm").expect("container `medprm`").clone()
}

/// Resolves a probe/Service port (a name of the container's ports or a number) to a number.
fn resolve_port(port: &Value, c: &Value) -> i64 {
    match port {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(name) => c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name.as_str())
            .map(|p| int(&p["containerPort"], "containerPort"))
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("bad port {other}"),
    }
}

/// Gateway API / Go-style durations: `60s`, `1m30s`, `500ms`, `1h`.
fn duration(text: &str) -> Duration {
    let re = Regex::new(r"(\d+)(ms|h|m|s)").unwrap();
    let mut total = Duration::ZERO;
    let mut consumed = 0;
    for c in re.captures_iter(text) {
        let n: u64 = c[1].parse().unwrap();
        total += match &c[2] {
            "h" => Duration::from_secs(n * 3600),
            "m" => Duration::from_secs(n * 60),
            "s" => Duration::from_secs(n),
            _ => Duration::from_millis(n),
        };
        consumed += c[0].len();
    }
    assert!(consumed == text.len() && consumed > 0, "not a duration: {text:?}");
    total
}

// ---------------------------------------------------------------------------------------------
// What the server really has.

/// `MEDPRM_*` variables of `medprm serve`, read from the `[env: MEDPRM_X=...]` annotations of
/// its --help (clap may wrap an annotation across lines; the key-only form is a hidden value).
fn serve_env_vars() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_medprm")).args(["serve", "--help"]).output().expect("run medprm");
    assert!(out.status.success(), "medprm serve --help failed");
    let help = String::from_utf8(out.stdout).unwrap();
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let re = Regex::new(r"\[env: ?([A-Za-z0-9_]+)(=[^\]]*)?\]").unwrap();
    let vars: BTreeSet<String> = re.captures_iter(&flat).map(|c| c[1].to_string()).collect();
    // The parse itself is checked: these flags exist, and every annotated flag is MEDPRM_*.
    for v in ["MEDPRM_MODEL", "MEDPRM_HOST", "MEDPRM_PORT", "MEDPRM_API_KEY", "MEDPRM_MAX_BATCH_TOKENS", "MEDPRM_JSON_LOGS"] {
        assert!(vars.contains(v), "{v} not found in `medprm serve --help`:\n{help}");
    }
    assert_eq!(vars.len(), help.matches("[env:").count(), "unparsed env annotations in:\n{help}");
    vars
}

/// Series names the metric registry exposes. The exposition suffixes are not assumed but
/// observed: one counter vector and one histogram are rendered to see what the text format
/// calls their samples, and the same rule is applied to every family.
fn exposed_series() -> BTreeMap<String, prometheus::proto::MetricType> {
    use prometheus::proto::MetricType;
    let m = Metrics::new();
    // A labelled family is gathered only once it has a child: give every vector one (a new
    // labelled metric must be added here before dashboards may use it).
    touch(&m.requests);
    touch(&m.successes);
    touch(&m.failures);
    touch(&m.request_duration);
    touch(&m.retrieval_cache);
    touch(&m.model_info);
    touch(&m.images);
    m.requests.with_label_values(&["score", "success"]).inc();
    m.inference_duration.observe(0.25);
    let text = m.render();
    let samples: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    // prometheus 0.14 exposes an IntCounterVec under its own name (no `_total` added).
    let counter_suffixes: Vec<&str> =
        if samples.contains("medprm_request_count") { vec![""] } else { vec!["_total"] };
    assert!(
        samples.contains(format!("medprm_request_count{}", counter_suffixes[0]).as_str()),
        "counter not rendered as expected:\n{text}"
    );
    let hist_suffixes = ["_bucket", "_sum", "_count"];
    for suf in hist_suffixes {
        assert!(samples.contains(format!("medprm_inference_duration_seconds{suf}").as_str()), "histogram {suf} missing:\n{text}");
    }
    assert!(!samples.contains("medprm_inference_duration_seconds"), "a histogram has no bare sample");

    let mut out = BTreeMap::new();
    for fam in m.registry.gather() {
        let name = fam.name().to_string();
        let t = fam.get_field_type();
        let suffixes: Vec<&str> = match t {
            MetricType::COUNTER => counter_suffixes.clone(),
            MetricType::HISTOGRAM => hist_suffixes.to_vec(),
            MetricType::GAUGE => vec![""],
            other => panic!("{name}: metric type {other:?} not handled"),
        };
        for suf in suffixes {
            out.insert(format!("{name}{suf}"), t);
        }
    }
    assert!(out.len() > 20, "registry looks empty: {out:?}");
    out
}

fn touch<T: prometheus::core::MetricVecBuilder>(v: &prometheus::core::MetricVec<T>) {
    use prometheus::core::Collector;
    let n = v.desc()[0].variable_labels.len();
    v.with_label_values(&vec!["x"; n]);
}

/// Every `medprm_*` identifier in any string of a JSON value (PromQL, legends, descriptions).
fn metric_refs(v: &Value, out: &mut BTreeSet<String>) {
    let re = Regex::new(r"\bmedprm_[a-z0-9_]+").unwrap();
    match v {
        Value::String(t) => out.extend(re.find_iter(t).map(|m| m.as_str().to_string())),
        Value::Array(a) => a.iter().for_each(|x| metric_refs(x, out)),
        Value::Object(o) => o.values().for_each(|x| metric_refs(x, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles.

#[derive(Debug, Clone)]
struct Instr {
    op: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

/// Instructions grouped by stage (comments dropped, `\` continuations joined).
fn dockerfile(rel: &str) -> Vec<Stage> {
    let text = read(rel);
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            logical.push(std::mem::take(&mut cur));
        }
    }
    assert!(cur.trim().is_empty(), "{rel}: dangling line continuation");
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical {
        let (op, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let (op, args) = (op.to_ascii_uppercase(), args.trim().to_string());
        if op == "FROM" {
            let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, as_, n] if as_.eq_ignore_ascii_case("as") => Some(n.to_string()),
                [_] => None,
                _ => panic!("{rel}: cannot read FROM {args}"),
            };
            stages.push(Stage { image: words[0].to_string(), name, instrs: vec![] });
        } else {
            let st = stages.last_mut().unwrap_or_else(|| panic!("{rel}: {op} before FROM"));
            st.instrs.push(Instr { op, args });
        }
    }
    assert!(stages.len() >= 2, "{rel}: expected a multi-stage build");
    stages
}

impl Stage {
    fn all(&self, op: &str) -> Vec<&str> {
        self.instrs.iter().filter(|i| i.op == op).map(|i| i.args.as_str()).collect()
    }
    fn last(&self, op: &str) -> Option<&str> {
        self.all(op).last().copied()
    }
    /// ENV pairs (`K=V ...` or the legacy `K V` form; values without spaces).
    fn env(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for a in self.all("ENV") {
            let words: Vec<&str> = a.split_whitespace().collect();
            if words[0].contains('=') {
                for w in words {
                    let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("bad ENV word {w}"));
                    out.insert(k.to_string(), v.trim_matches('"').to_string());
                }
            } else {
                out.insert(words[0].to_string(), words[1..].join(" "));
            }
        }
        out
    }
}

const DOCKERFILES: [&str; 2] = ["Dockerfile", "Dockerfile.cuda"];

/// `repo:tag` split; the tag is None when absent (a registry port is not a tag).
fn image_tag(image: &str) -> (String, Option<String>) {
    let image = image.split('@').next().unwrap();
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (image[..last_slash + i].to_string(), Some(image[last_slash + i + 1..].to_string())),
        None => (image.to_string(), None),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn every_manifest_parses_and_the_kustomization_lists_them() {
    let all = manifests();
    let mut kinds = BTreeSet::new();
    for (file, v) in &all {
        let kind = s(&v["kind"], &format!("{file}: kind"));
        assert!(v["apiVersion"].is_string(), "{file}: apiVersion");
        kinds.insert(kind.to_string());
        if kind == "Kustomization" {
            continue;
        }
        assert!(v["metadata"]["name"].is_string(), "{file}: metadata.name");
        // The kustomization sets no namespace, so every namespaced object names its own.
        if kind != "Namespace" {
            assert!(v["metadata"]["namespace"].is_string(), "{file}: {kind} without metadata.namespace");
        }
    }
    for k in [
        "Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
        "HTTPRoute", "ServiceMonitor", "PersistentVolumeClaim", "Kustomization",
    ] {
        assert!(kinds.contains(k), "no {k} in {K8S}");
    }
    let api = |kind: &str| one(&all, kind)["apiVersion"].as_str().unwrap().to_string();
    assert_eq!(api("HorizontalPodAutoscaler"), "autoscaling/v2");
    assert_eq!(api("HTTPRoute"), "gateway.networking.k8s.io/v1");
    assert_eq!(api("ServiceMonitor"), "monitoring.coreos.com/v1");
    assert_eq!(api("PodDisruptionBudget"), "policy/v1");
    assert_eq!(api("Deployment"), "apps/v1");

    let kust = one(&all, "Kustomization");
    let listed: BTreeSet<String> =
        kust["resources"].as_array().expect("resources").iter().map(|r| s(r, "resource").to_string()).collect();
    let files: BTreeSet<String> = all.iter().map(|(f, _)| f.clone()).filter(|f| f != "kustomization.yaml").collect();
    assert_eq!(listed, files, "kustomization.yaml resources must list exactly the manifests of {K8S}");
    assert!(kust.get("namespace").is_none(), "a kustomization namespace would move the adapter config out of monitoring");
    // The Deployment's image is the one the kustomization retags, and never `latest`.
    let image = s(&container(&one(&all, "Deployment"))["image"], "image").to_string();
    let (repo, tag) = image_tag(&image);
    assert!(tag.as_deref().is_some_and(|t| t != "latest"), "Deployment image {image} must be pinned");
    assert!(kust["images"].as_array().unwrap().iter().any(|i| i["name"] == repo.as_str()), "kustomization images: no {repo}");
}

#[test]
fn ports_probes_and_routes_match_the_server() {
    let all = manifests();
    let dep = one(&all, "Deployment");
    let c = container(&dep);
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&dep["spec"]["selector"]["matchLabels"], pod_labels), "Deployment selector vs its pod labels");

    // The server's routes, from its own OpenAPI document.
    let doc: Value = serde_json::from_str(&medprm::server::openapi_json()).unwrap();
    let paths: BTreeSet<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for p in ["/health", "/ready", "/metrics", "/v1/score", "/v1/rank"] {
        assert!(paths.contains(p), "the server has no {p}");
    }

    // One port, 8080, named http, the one the ConfigMap tells the server to listen on.
    let cm = by_name(&all, "ConfigMap", "medprm-config");
    let port: i64 = s(&cm["data"]["MEDPRM_PORT"], "MEDPRM_PORT").parse().unwrap();
    assert_eq!(port, 8080);
    assert_eq!(s(&cm["data"]["MEDPRM_HOST"], "MEDPRM_HOST"), "0.0.0.0", "a pod must listen on all interfaces");
    let ports = c["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["name"], "http");
    assert_eq!(int(&ports[0]["containerPort"], "containerPort"), port);

    // Probes: startup and readiness on /ready (503 until loaded and warmed up), liveness on
    // /health (200 as soon as the process serves).
    for (probe, path) in [("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        let g = &c[probe]["httpGet"];
        assert_eq!(s(&g["path"], probe), path, "{probe} path");
        assert!(paths.contains(path));
        assert_eq!(resolve_port(&g["port"], &c), port, "{probe} port");
    }
    // The startup probe must leave room to load a large model (>= 5 minutes).
    let sp = &c["startupProbe"];
    assert!(int(&sp["periodSeconds"], "periodSeconds") * int(&sp["failureThreshold"], "failureThreshold") >= 300);

    // Service → container port.
    let svc = one(&all, "Service");
    assert!(selects(&svc["spec"]["selector"], pod_labels), "Service selector vs pod labels");
    let sp = &svc["spec"]["ports"].as_array().unwrap()[0];
    assert_eq!(sp["name"], "http");
    assert_eq!(resolve_port(&sp["targetPort"], &c), port, "Service targetPort");
    let svc_port = int(&sp["port"], "Service port");
    let svc_name = s(&svc["metadata"]["name"], "Service name");

    // ServiceMonitor scrapes /metrics on the Service's http port.
    let sm = one(&all, "ServiceMonitor");
    assert!(selects(&sm["spec"]["selector"]["matchLabels"], &svc["metadata"]["labels"]), "ServiceMonitor selector vs Service labels");
    let ep = &sm["spec"]["endpoints"].as_array().unwrap()[0];
    assert_eq!(ep["port"], "http");
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(sm["metadata"]["namespace"], svc["metadata"]["namespace"]);

    // HTTPRoute: /v1 → the Service, with a timeout; only the API goes out, not the probes.
    let route = one(&all, "HTTPRoute");
    let rules = route["spec"]["rules"].as_array().unwrap();
    assert!(!rules.is_empty());
    for r in rules {
        let b = &r["backendRefs"].as_array().unwrap()[0];
        assert_eq!(s(&b["name"], "backendRef"), svc_name);
        assert_eq!(int(&b["port"], "backendRef port"), svc_port);
        let prefix = s(&r["matches"][0]["path"]["value"], "path match");
        assert_eq!(prefix, "/v1");
        assert!(paths.iter().any(|p| p.starts_with("/v1/")), "the prefix routes real endpoints");
        for m in r["matches"].as_array().unwrap().iter().skip(1) {
            let v = s(&m["path"]["value"], "path match");
            match s(&m["path"]["type"], "path match type") {
                "Exact" => assert!(paths.contains(v), "the route sends {v} to the server, which has no such path"),
                other => panic!("match {v}: type {other}, expected Exact"),
            }
        }
        let req = duration(s(&r["timeouts"]["request"], "timeouts.request"));
        assert!(req > Duration::ZERO);
        if let Some(b) = r["timeouts"]["backendRequest"].as_str() {
            assert!(duration(b) <= req, "backendRequest timeout must not exceed request timeout");
        }
    }

    // NetworkPolicy: the medprm pods, 8080 only, from the gateway's and monitoring's namespaces.
    let np = one(&all, "NetworkPolicy");
    assert!(selects(&np["spec"]["podSelector"]["matchLabels"], pod_labels));
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    let mut from_ns = BTreeSet::new();
    for rule in ingress {
        let ps = rule["ports"].as_array().expect("ingress rules must restrict ports");
        for p in ps {
            assert_eq!(resolve_port(&p["port"], &c), port, "NetworkPolicy port");
        }
        for f in rule["from"].as_array().expect("ingress rules must restrict sources") {
            let name = &f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"];
            assert!(f.get("ipBlock").is_none(), "no ipBlock sources");
            from_ns.insert(s(name, "namespaceSelector").to_string());
        }
    }
    let gateway_ns = s(&route["spec"]["parentRefs"][0]["namespace"], "parentRef namespace").to_string();
    let prom_ns = "monitoring".to_string();
    assert_eq!(from_ns, BTreeSet::from([gateway_ns, prom_ns]), "ingress sources");

    // PDB and HPA point at the Deployment.
    let pdb = one(&all, "PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    let hpa = one(&all, "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], dep["metadata"]["name"]);
    let (min, max) = (int(&hpa["spec"]["minReplicas"], "minReplicas"), int(&hpa["spec"]["maxReplicas"], "maxReplicas"));
    assert!(1 <= min && min < max, "replicas {min}..{max}");
    assert_eq!(int(&dep["spec"]["replicas"], "replicas"), 1);
    assert!(int(&hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], "scaleDown stabilization") >= 60);
}

#[test]
fn every_env_var_is_a_serve_flag() {
    let flags = serve_env_vars();
    let all = manifests();
    let mut used: Vec<(String, String)> = Vec::new();
    for (file, v) in &all {
        if v["kind"] == "ConfigMap" && v["metadata"]["name"] == "medprm-config" {
            for k in v["data"].as_object().unwrap().keys() {
                used.push((file.clone(), k.clone()));
            }
        }
    }
    let dep = one(&all, "Deployment");
    let c = container(&dep);
    for e in c["env"].as_array().map(Vec::as_slice).unwrap_or_default() {
        used.push(("deployment.yaml".into(), s(&e["name"], "env name").to_string()));
    }
    for f in DOCKERFILES {
        for st in dockerfile(f) {
            // NVIDIA_* configure the NVIDIA Container Toolkit (Dockerfile.cuda), not medprm.
            for k in st.env().keys().filter(|k| !k.starts_with("NVIDIA_")) {
                used.push((f.to_string(), k.clone()));
            }
        }
    }
    assert!(used.len() > 15, "too few variables found: {used:?}");
    for (file, name) in &used {
        assert!(name.starts_with("MEDPRM_"), "{file}: {name} is not a MEDPRM_* variable");
        assert!(flags.contains(name), "{file}: {name} is not a `medprm serve` flag (flags: {flags:?})");
    }

    // Kubernetes injects `<SERVICE>_PORT=tcp://ip:port` (and more) for every Service in the
    // namespace unless service links are off: for a Service named medprm that is MEDPRM_PORT,
    // a serve flag.
    let svc = one(&all, "Service");
    let svc_prefix = s(&svc["metadata"]["name"], "Service name").to_ascii_uppercase().replace('-', "_") + "_";
    if flags.iter().any(|f| f.starts_with(&svc_prefix)) {
        assert_eq!(
            dep["spec"]["template"]["spec"]["enableServiceLinks"], false,
            "service links would set {svc_prefix}PORT=tcp://... in the pod; set enableServiceLinks: false"
        );
    }

    // envFrom loads that ConfigMap; the API key comes from an optional Secret, never the ConfigMap.
    let refs: Vec<&str> = c["envFrom"].as_array().unwrap().iter().map(|e| s(&e["configMapRef"]["name"], "configMapRef")).collect();
    assert_eq!(refs, ["medprm-config"]);
    let cm = by_name(&all, "ConfigMap", "medprm-config");
    assert!(cm["data"].get("MEDPRM_API_KEY").is_none(), "the API key belongs in a Secret");
    let key = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "MEDPRM_API_KEY").expect("MEDPRM_API_KEY env");
    assert!(key.get("value").is_none(), "MEDPRM_API_KEY must not be a literal");
    let sk = &key["valueFrom"]["secretKeyRef"];
    assert!(sk["name"].is_string() && sk["key"].is_string());
    assert_eq!(sk["optional"], true);
}

/// Runs `medprm serve` with exactly `env` (no inherited MEDPRM_*), but on 127.0.0.1:0 and with
/// a model path that does not exist. Passing flag parsing and validation prints the listen line;
/// then the index or model load fails and the process exits with status 2.
fn serve_accepts(what: &str, env: &BTreeMap<String, String>, flags: &BTreeSet<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medprm"));
    cmd.arg("serve").stdout(Stdio::piped()).stderr(Stdio::piped());
    for f in flags {
        cmd.env_remove(f);
    }
    cmd.envs(env);
    let missing = std::env::temp_dir().join(format!("medprm-deploy-test-{}-no-such-model.gguf", std::process::id()));
    cmd.env("MEDPRM_MODEL", &missing).env("MEDPRM_HOST", "127.0.0.1").env("MEDPRM_PORT", "0");
    let mut child = cmd.spawn().expect("spawn medprm serve");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{what}: medprm serve did not exit:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("medprm listening on http://127.0.0.1:"),
        "{what}: medprm serve rejected its environment:\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(status.code(), Some(2), "{what}: expected the model (or index) load to fail:\n{stderr}");
    // The index (when configured) opens before the model; neither exists here.
    assert!(stderr.contains("cannot load the model") || stderr.contains("cannot open the index"), "{what}: {stderr}");
}

#[test]
fn the_configured_values_are_accepted_by_serve() {
    let flags = serve_env_vars();
    let all = manifests();
    let cm = by_name(&all, "ConfigMap", "medprm-config");
    let env: BTreeMap<String, String> =
        cm["data"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), s(v, k).to_string())).collect();
    serve_accepts("configmap.yaml", &env, &flags);
    for f in DOCKERFILES {
        let stages = dockerfile(f);
        serve_accepts(f, &stages.last().unwrap().env(), &flags);
    }
}

#[test]
fn shutdown_and_security_settings() {
    let all = manifests();
    let dep = one(&all, "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = container(&dep);

    // Grace period > preStop sleep (endpoint removal) + the longest request (the route timeout,
    // after which the gateway has given up anyway) + a margin for the exit itself.
    let grace = int(&pod["terminationGracePeriodSeconds"], "terminationGracePeriodSeconds");
    let pre = &c["lifecycle"]["preStop"];
    let sleep = if let Some(cmd) = pre["exec"]["command"].as_array() {
        let words: Vec<&str> = cmd.iter().map(|w| s(w, "preStop command")).collect();
        assert!(words.len() == 2 && words[0].ends_with("sleep"), "preStop must be a plain sleep: {words:?}");
        words[1].parse::<i64>().expect("sleep seconds")
    } else {
        int(&pre["sleep"]["seconds"], "preStop.sleep.seconds")
    };
    assert!(sleep >= 5, "preStop sleep {sleep}s is too short for endpoint removal to propagate");
    let route = one(&all, "HTTPRoute");
    let drain = route["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| duration(s(&r["timeouts"]["request"], "timeouts.request")).as_secs() as i64)
        .max()
        .unwrap();
    const MARGIN_S: i64 = 10;
    assert!(grace > sleep + drain + MARGIN_S, "terminationGracePeriodSeconds {grace} <= preStop {sleep} + drain {drain} + {MARGIN_S}");
    // The server's own shutdown deadline lets the longest request finish and ends before the kill.
    let cm = by_name(&all, "ConfigMap", "medprm-config");
    let deadline: i64 = s(&cm["data"]["MEDPRM_SHUTDOWN_TIMEOUT_S"], "MEDPRM_SHUTDOWN_TIMEOUT_S").parse().unwrap();
    assert!(deadline >= drain, "--shutdown-timeout-s {deadline} cuts requests the route still allows ({drain} s)");
    assert!(sleep + deadline < grace, "preStop {sleep} + --shutdown-timeout-s {deadline} >= grace {grace}: Kubernetes kills first");

    // Non-root (the image's numeric user), read-only root, no privilege escalation, no capabilities.
    let psc = &pod["securityContext"];
    let csc = &c["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    let uid = int(&psc["runAsUser"], "runAsUser");
    assert!(uid > 0);
    for f in DOCKERFILES {
        let user = dockerfile(f).last().unwrap().last("USER").unwrap_or_else(|| panic!("{f}: no USER")).to_string();
        assert_eq!(user.split(':').next().unwrap().parse::<i64>().ok(), Some(uid), "{f}: USER {user} vs runAsUser {uid}");
    }
    assert_eq!(csc["runAsNonRoot"], true);
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert_ne!(csc["privileged"], true);
    let drops: Vec<&str> = csc["capabilities"]["drop"].as_array().expect("capabilities.drop").iter().map(|d| s(d, "drop")).collect();
    assert!(drops.contains(&"ALL"), "capabilities must drop ALL: {drops:?}");
    assert!(csc["capabilities"].get("add").is_none(), "no capability is added back");

    // Writable only /tmp (an emptyDir); the model volume is a read-only PVC at /data holding MEDPRM_MODEL.
    let volumes: BTreeMap<&str, &Value> =
        pod["volumes"].as_array().unwrap().iter().map(|v| (s(&v["name"], "volume name"), v)).collect();
    let mut data_mount = None;
    for m in c["volumeMounts"].as_array().unwrap() {
        let name = s(&m["name"], "mount name");
        let path = s(&m["mountPath"], "mountPath");
        let vol = volumes.get(name).unwrap_or_else(|| panic!("mount {name}: no such volume"));
        if m["readOnly"] == true {
            if path == "/data" {
                assert!(vol["persistentVolumeClaim"]["claimName"].is_string(), "/data must be a PVC");
                data_mount = Some(s(&vol["persistentVolumeClaim"]["claimName"], "claimName").to_string());
            }
        } else {
            assert_eq!(path, "/tmp", "writable mount {name} at {path}: only /tmp may be writable");
            assert!(vol.get("emptyDir").is_some(), "/tmp must be an emptyDir");
        }
    }
    let claim = data_mount.expect("the model PVC must be mounted read-only at /data");
    by_name(&all, "PersistentVolumeClaim", &claim);
    let cm = by_name(&all, "ConfigMap", "medprm-config");
    assert!(s(&cm["data"]["MEDPRM_MODEL"], "MEDPRM_MODEL").starts_with("/data/"));

    // One GPU (requests = limits, as Kubernetes requires for extended resources), and memory bounds.
    let r = &c["resources"];
    assert_eq!(r["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(r["requests"]["nvidia.com/gpu"], r["limits"]["nvidia.com/gpu"]);
    assert!(r["requests"]["cpu"].is_string() || r["requests"]["cpu"].is_number());
    assert!(r["requests"]["memory"].is_string() && r["limits"]["memory"].is_string());
    assert_eq!(s(&cm["data"]["MEDPRM_DEVICE"], "MEDPRM_DEVICE"), "cuda", "a GPU pod runs the model on cuda");
}

#[test]
fn dockerfiles_are_pinned_non_root_and_serve() {
    let flags = serve_env_vars();
    let ignore = read(".dockerignore");
    let ignored: BTreeSet<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(ignored.contains(".git") && (ignored.contains("target") || ignored.contains("**/target")));
    for f in DOCKERFILES {
        let stages = dockerfile(f);
        let names: BTreeSet<String> = stages.iter().filter_map(|s| s.name.clone()).collect();
        for st in &stages {
            if names.contains(&st.image) {
                continue;
            }
            assert!(!st.image.contains('$'), "{f}: FROM {} must be a literal, pinned image", st.image);
            let (_, tag) = image_tag(&st.image);
            let tag = tag.unwrap_or_else(|| panic!("{f}: FROM {} has no tag", st.image));
            assert!(tag != "latest" && !tag.is_empty(), "{f}: FROM {} is not pinned", st.image);
            assert!(tag.chars().any(|c| c.is_ascii_digit()), "{f}: FROM {}: pin a version, not a moving name", st.image);
            // Every file the build copies from the context survives .dockerignore.
            for copy in st.all("COPY") {
                if copy.contains("--from") {
                    continue;
                }
                let words: Vec<&str> = copy.split_whitespace().collect();
                for src in &words[..words.len() - 1] {
                    assert!(root().join(src).exists(), "{f}: COPY {src}: no such file");
                    let top = src.split('/').next().unwrap();
                    assert!(!ignored.contains(src) && !ignored.contains(top), "{f}: COPY {src} is excluded by .dockerignore");
                }
            }
        }
        let builder = &stages[0];
        let runtime = stages.last().unwrap();
        let build_cmds = builder.all("RUN").join("\n");
        // The GPU image builds through `make build-cuda`, whose recipe is checked below.
        let build = if build_cmds.contains("make build-cuda") { "make build-cuda" } else { "cargo build" };
        assert!(build_cmds.contains("cargo build --release --locked") || build == "make build-cuda", "{f}: release build from the lockfile");
        // The dependency layer: manifests copied and built before the sources.
        let first_src = builder.instrs.iter().position(|i| i.op == "COPY" && i.args.starts_with("src")).expect("COPY src");
        let deps = builder.instrs.iter().position(|i| i.op == "RUN" && i.args.contains(build)).unwrap();
        let manifests_copy = builder.instrs.iter().position(|i| i.op == "COPY" && i.args.contains("Cargo.lock")).unwrap();
        assert!(manifests_copy < deps && deps < first_src, "{f}: dependencies must be built in a layer before COPY src");

        // Runtime: a numeric non-root USER, EXPOSE = MEDPRM_PORT, HEALTHCHECK on /health with a
        // tool the stage installs, ENTRYPOINT `medprm serve`.
        let user = runtime.last("USER").unwrap_or_else(|| panic!("{f}: no USER in the runtime stage"));
        let uid = user.split(':').next().unwrap();
        assert!(uid.parse::<u32>().is_ok_and(|u| u > 0), "{f}: USER {user} must be a numeric non-root uid");
        assert!(runtime.all("RUN").iter().any(|r| r.contains("useradd") && r.contains(&format!("--uid {uid}"))), "{f}: user {uid} is created");
        let env = runtime.env();
        let port = env.get("MEDPRM_PORT").unwrap_or_else(|| panic!("{f}: no MEDPRM_PORT"));
        assert_eq!(runtime.all("EXPOSE"), [port.as_str()], "{f}: EXPOSE");
        assert_eq!(port, "8080");
        assert_eq!(env.get("MEDPRM_HOST").map(String::as_str), Some("0.0.0.0"), "{f}: listen on all interfaces");
        assert!(env.get("MEDPRM_MODEL").is_some_and(|m| m.starts_with("/data/")), "{f}: model under /data");
        let hc = runtime.last("HEALTHCHECK").unwrap_or_else(|| panic!("{f}: no HEALTHCHECK"));
        assert!(hc.contains("CMD"), "{f}: HEALTHCHECK CMD");
        let url = Regex::new(r"http://(127\.0\.0\.1|localhost):(\$\{MEDPRM_PORT\}|\d+)/health\b").unwrap();
        let m = url.captures(hc).unwrap_or_else(|| panic!("{f}: HEALTHCHECK must hit /health: {hc}"));
        assert!(&m[2] == "${MEDPRM_PORT}" || &m[2] == port, "{f}: HEALTHCHECK port");
        let tool = hc.split("CMD").nth(1).unwrap().split_whitespace().next().unwrap();
        assert!(
            runtime.all("RUN").iter().any(|r| r.contains("apt-get install") && r.split_whitespace().any(|w| w == tool)),
            "{f}: the HEALTHCHECK tool `{tool}` is not installed in the runtime stage"
        );
        let ep: Vec<String> = serde_json::from_str(runtime.last("ENTRYPOINT").expect("ENTRYPOINT")).expect("exec-form ENTRYPOINT");
        assert_eq!(ep, ["medprm", "serve"], "{f}: ENTRYPOINT");
        assert!(
            runtime.all("COPY").iter().any(|c| c.contains("--from=builder") && c.ends_with("/usr/local/bin/medprm")),
            "{f}: the binary is copied onto the PATH"
        );
        assert!(runtime.all("CMD").is_empty(), "{f}: no CMD: flags come from MEDPRM_* variables");
        for k in env.keys() {
            // NVIDIA_* configure the NVIDIA Container Toolkit, not the server.
            assert!(flags.contains(k) || k.starts_with("NVIDIA_"), "{f}: ENV {k} is not a serve flag");
        }
    }

    // The CPU image: Rust on bookworm, debian bookworm-slim runtime. The GPU image: CUDA devel
    // and runtime of the same version, a cuda build, MEDPRM_DEVICE=cuda.
    let cpu = dockerfile("Dockerfile");
    assert!(cpu[0].image.starts_with("rust:") && cpu[0].image.ends_with("-bookworm"), "{}", cpu[0].image);
    let rt = &cpu.last().unwrap().image;
    assert!(rt.starts_with("debian:bookworm-") && rt.ends_with("-slim"), "{rt}");
    // The GPU image: the same Rust and Debian images, the toolkit from the pinned script, built by
    // the Makefile's build-cuda (cargo build --release --locked --features cuda), the driver's
    // compute libraries requested from the container toolkit.
    let gpu = dockerfile("Dockerfile.cuda");
    assert_eq!(gpu[0].image, cpu[0].image, "Dockerfile.cuda builds on the CPU image's Rust");
    assert_eq!(gpu.last().unwrap().image, cpu.last().unwrap().image, "Dockerfile.cuda runs on the CPU image's Debian");
    let gpu_build = gpu[0].all("RUN").join("\n");
    assert!(gpu_build.contains("scripts/cuda-toolchain.sh"), "Dockerfile.cuda installs the toolkit with scripts/cuda-toolchain.sh");
    assert!(gpu_build.contains("make build-cuda"), "Dockerfile.cuda builds with make build-cuda");
    let makefile = read("Makefile");
    let recipe = makefile.split("\nbuild-cuda:").nth(1).expect("Makefile: build-cuda target").split("\n\n").next().unwrap();
    assert!(recipe.contains("cargo build --release --locked --features cuda")
        || recipe.contains("$(CARGO) build --release --locked --features cuda"), "make build-cuda: {recipe}");
    let caps = gpu.last().unwrap().env().get("NVIDIA_DRIVER_CAPABILITIES").cloned().unwrap_or_default();
    assert!(caps.split(',').any(|c| c == "compute"), "Dockerfile.cuda: NVIDIA_DRIVER_CAPABILITIES must include compute");
    assert!(read("Cargo.toml").contains("\ncuda = ["), "Cargo.toml has a `cuda` feature");
    assert_eq!(gpu.last().unwrap().env().get("MEDPRM_DEVICE").map(String::as_str), Some("cuda"));
    assert_eq!(cpu.last().unwrap().env().get("MEDPRM_DEVICE").map(String::as_str), Some("cpu"));
}

#[test]
fn autoscaling_and_dashboard_metrics_exist() {
    use prometheus::proto::MetricType;
    let series = exposed_series();
    let all = manifests();

    // HPA: a Pods metric, averaged per pod, that is a gauge of the server ...
    let hpa = one(&all, "HorizontalPodAutoscaler");
    let metrics = hpa["spec"]["metrics"].as_array().unwrap();
    let pods: Vec<&Value> = metrics.iter().filter(|m| m["type"] == "Pods").collect();
    assert!(!pods.is_empty(), "the HPA scales on a Pods metric");
    let mut hpa_names = BTreeSet::new();
    for m in &pods {
        let name = s(&m["pods"]["metric"]["name"], "pods.metric.name");
        assert_eq!(m["pods"]["target"]["type"], "AverageValue");
        assert_eq!(series.get(name), Some(&MetricType::GAUGE), "HPA metric {name} is not a gauge of the server");
        hpa_names.insert(name.to_string());
    }
    assert!(hpa_names.contains("medprm_queue_size"));

    // ... exposed under that name by a prometheus-adapter rule selecting a real series.
    let adapter = all
        .iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == "ConfigMap" && v["data"]["config.yaml"].is_string())
        .expect("the prometheus-adapter ConfigMap");
    let cfg = &yaml_docs(s(&adapter["data"]["config.yaml"], "config.yaml"), "adapter config.yaml")[0];
    let rules = cfg["rules"].as_array().expect("adapter rules");
    let mut adapter_refs = BTreeSet::new();
    metric_refs(cfg, &mut adapter_refs);
    let mut exposed = BTreeSet::new();
    for r in rules {
        let q = s(&r["seriesQuery"], "seriesQuery");
        let series_name = Regex::new(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)").unwrap().captures(q).expect("seriesQuery names a series")[1].to_string();
        assert!(series.contains_key(&series_name), "adapter seriesQuery selects {series_name}, which the server does not expose");
        assert!(q.contains("namespace") && q.contains("pod"), "a Pods metric needs the namespace and pod labels: {q}");
        let ov = &r["resources"]["overrides"];
        assert_eq!(ov["pod"]["resource"], "pod");
        assert_eq!(ov["namespace"]["resource"], "namespace");
        let name = match r["name"]["as"].as_str() {
            Some(a) => {
                let re = Regex::new(s(&r["name"]["matches"], "name.matches")).unwrap();
                assert!(re.is_match(&series_name), "name.matches does not match {series_name}");
                a.to_string()
            }
            None => series_name.clone(),
        };
        assert!(s(&r["metricsQuery"], "metricsQuery").contains("<<.LabelMatchers>>"), "metricsQuery must filter by the HPA's labels");
        exposed.insert(name);
    }
    for n in &hpa_names {
        assert!(exposed.contains(n), "no adapter rule exposes the HPA metric {n} (exposed: {exposed:?})");
    }
    for n in &adapter_refs {
        assert!(series.contains_key(n), "the adapter rule references {n}, which the server does not expose");
    }

    // Grafana: every medprm_* name is a real series, and the panels the runbook needs are there.
    let dash: Value = serde_json::from_str(&read("deploy/grafana/medprm-dashboard.json")).expect("dashboard JSON");
    let mut refs = BTreeSet::new();
    metric_refs(&dash, &mut refs);
    let unknown: Vec<&String> = refs.iter().filter(|n| !series.contains_key(*n)).collect();
    assert!(unknown.is_empty(), "the dashboard references metrics the server does not expose: {unknown:?}");
    for needed in [
        "medprm_request_count", "medprm_request_failure", "medprm_request_duration_seconds_bucket", "medprm_queue_size",
        "medprm_queue_tokens", "medprm_in_flight_candidates", "medprm_batch_size_bucket", "medprm_batch_padding_ratio_sum",
        "medprm_inference_duration_seconds_bucket", "medprm_backend_up", "medprm_ready",
    ] {
        assert!(refs.contains(needed), "the dashboard does not show {needed}");
    }
    // Errors are broken down by error_type, latency shown as p50 and p99.
    let exprs = {
        let mut v = Vec::new();
        fn walk<'a>(x: &'a Value, out: &mut Vec<&'a str>) {
            match x {
                Value::Object(o) => {
                    if let Some(e) = o.get("expr").and_then(Value::as_str) {
                        out.push(e);
                    }
                    o.values().for_each(|y| walk(y, out));
                }
                Value::Array(a) => a.iter().for_each(|y| walk(y, out)),
                _ => {}
            }
        }
        walk(&dash, &mut v);
        v
    };
    assert!(exprs.iter().any(|e| e.contains("medprm_request_failure") && e.contains("by (error_type)")));
    for q in ["0.5", "0.99"] {
        assert!(
            exprs.iter().any(|e| e.contains(&format!("histogram_quantile({q},")) && e.contains("medprm_request_duration_seconds_bucket")),
            "no p{q} request latency"
        );
    }
    // Panel ids are unique (Grafana silently merges duplicates).
    let ids: Vec<i64> = dash["panels"].as_array().unwrap().iter().map(|p| int(&p["id"], "panel id")).collect();
    assert_eq!(ids.len(), ids.iter().collect::<BTreeSet<_>>().len(), "duplicate panel ids");
}

#[test]
fn duration_parser() {
    assert_eq!(duration("60s"), Duration::from_secs(60));
    assert_eq!(duration("1m30s"), Duration::from_secs(90));
    assert_eq!(duration("500ms"), Duration::from_millis(500));
    assert!(std::panic::catch_unwind(|| duration("60")).is_err());
    assert!(std::panic::catch_unwind(|| duration("1x")).is_err());
}

#[test]
fn image_tags() {
    assert_eq!(image_tag("rust:1.95.0-bookworm"), ("rust".into(), Some("1.95.0-bookworm".into())));
    assert_eq!(image_tag("registry:5000/medprm"), ("registry:5000/medprm".into(), None));
    assert_eq!(image_tag("nvidia/cuda:12.4.1-runtime-ubuntu22.04").1.as_deref(), Some("12.4.1-runtime-ubuntu22.04"));
}

const PG_OVERLAY: &str = "deploy/kubernetes/overlays/postgres";

/// All objects of the PostgreSQL overlay's files, with the file each came from.
fn overlay_manifests() -> Vec<(String, Value)> {
    manifests_in(PG_OVERLAY)
}

fn pod_labels(v: &Value) -> Value {
    v["spec"]["template"]["metadata"]["labels"].clone()
}

fn env_of<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no env {name}"))
}

/// The overlay's objects line up: the kustomization names the base and its own files, the patch
/// switches the base Deployment to the database the StatefulSet runs, the Service and the
/// NetworkPolicy select the right pods, and the database URL and password come from one Secret.
#[test]
fn postgres_overlay_wires_medprm_to_the_database() {
    let base = manifests();
    let all = overlay_manifests();
    let kust = one(&all, "Kustomization");
    let resources: BTreeSet<String> =
        kust["resources"].as_array().expect("resources").iter().map(|r| s(r, "resource").to_string()).collect();
    let patches: Vec<&Value> = kust["patches"].as_array().expect("patches").iter().collect();
    let patch_files: BTreeSet<String> = patches.iter().map(|p| s(&p["path"], "patch path").to_string()).collect();
    let files: BTreeSet<String> = all.iter().map(|(f, _)| f.clone()).filter(|f| f != "kustomization.yaml").collect();
    let mut expected: BTreeSet<String> = files.difference(&patch_files).cloned().collect();
    expected.insert("../..".into());
    assert_eq!(resources, expected, "the overlay lists the base and each of its files that is not a patch");
    assert!(kust.get("namespace").is_none());

    // Each patch names the base object it patches, and the file holds that object.
    for p in &patches {
        let (kind, name) = (s(&p["target"]["kind"], "target kind"), s(&p["target"]["name"], "target name"));
        let target = by_name(&base, kind, name);
        let file = s(&p["path"], "path");
        let obj = all.iter().find(|(f, _)| f == file).map(|(_, v)| v.clone()).expect("patch file");
        assert_eq!((&obj["kind"], &obj["metadata"]["name"]), (&target["kind"], &target["metadata"]["name"]), "{file}");
        assert_eq!(obj["metadata"]["namespace"], target["metadata"]["namespace"], "{file}");
    }
    let patched = |kind: &str| {
        let p = patches.iter().find(|p| p["target"]["kind"] == kind).unwrap_or_else(|| panic!("no {kind} patch"));
        let file = s(&p["path"], "path");
        all.iter().find(|(f, _)| f == file).map(|(_, v)| v.clone()).unwrap()
    };
    // The embedded index path leaves the ConfigMap (serve refuses --index with the postgres backend).
    let cm = by_name(&base, "ConfigMap", "medprm-config");
    let cm_patch = patched("ConfigMap");
    for (k, v) in cm_patch["data"].as_object().unwrap() {
        assert!(cm["data"].get(k).is_some() && v.is_null(), "the ConfigMap patch only deletes base keys: {k}");
    }
    if cm["data"].get("MEDPRM_INDEX").is_some() {
        assert!(cm_patch["data"]["MEDPRM_INDEX"].is_null() && cm_patch["data"].get("MEDPRM_INDEX").is_some());
    }

    // The Deployment patch: its medprm container, the backend and the URL from the Secret.
    let dep = one(&base, "Deployment");
    let patch = patched("Deployment");
    assert_eq!(patch["metadata"]["name"], dep["metadata"]["name"]);
    assert_eq!(patch["metadata"]["namespace"], dep["metadata"]["namespace"]);
    let pc = container(&patch);
    assert_eq!(env_of(&pc, "MEDPRM_RETRIEVAL_BACKEND")["value"], "postgres");
    let url = env_of(&pc, "MEDPRM_DATABASE_URL");
    assert!(url.get("value").is_none(), "the database URL holds a password: a Secret, not a literal");
    let secret = s(&url["valueFrom"]["secretKeyRef"]["name"], "secret name").to_string();
    assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "database-url");
    assert!(patch["spec"].get("replicas").is_none(), "the HPA keeps owning the replica count");

    // The database: pgvector's image pinned to PostgreSQL 16, the password from the same Secret,
    // a volume per instance, and the user/database the URL's example names.
    let sts = one(&all, "StatefulSet");
    let db = &sts["spec"]["template"]["spec"]["containers"][0];
    let image = s(&db["image"], "postgres image");
    let (repo, tag) = image_tag(image);
    assert_eq!(repo, "pgvector/pgvector");
    assert!(tag.as_deref().is_some_and(|t| t.ends_with("-pg16")), "{image}: pin a pgvector release on PostgreSQL 16");
    assert_eq!(env_of(db, "POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"]["name"], secret.as_str());
    assert!(sts["spec"]["volumeClaimTemplates"].as_array().is_some_and(|v| !v.is_empty()));
    let comment = read(&format!("{PG_OVERLAY}/kustomization.yaml"));
    let user = s(&env_of(db, "POSTGRES_USER")["value"], "user");
    let dbname = s(&env_of(db, "POSTGRES_DB")["value"], "db");
    let svc = one(&all, "Service");
    let svc_name = s(&svc["metadata"]["name"], "service name");
    let port = int(&svc["spec"]["ports"][0]["port"], "port");
    let example = format!("postgres://{user}:<password>@{svc_name}:{port}/{dbname}");
    assert!(comment.contains(&example), "the Secret example in kustomization.yaml should read {example}");
    assert!(comment.contains(&format!("generic {secret}")), "the Secret example names {secret}");
    assert_eq!(sts["spec"]["serviceName"], svc["metadata"]["name"]);
    assert!(selects(&svc["spec"]["selector"], &pod_labels(&sts)));
    assert_eq!(resolve_port(&svc["spec"]["ports"][0]["targetPort"], db), 5432);
    assert!(!selects(&svc["spec"]["selector"], &pod_labels(&dep)), "the database Service must not select medprm pods");

    // Only medprm pods reach it: the serving replicas and the index Job.
    let job = one(&all, "Job");
    let np = by_name(&all, "NetworkPolicy", "medprm-postgres");
    assert!(selects(&np["spec"]["podSelector"]["matchLabels"], &pod_labels(&sts)));
    let from = &np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"];
    assert!(selects(from, &pod_labels(&dep)) && selects(from, &pod_labels(&job)));
    assert_eq!(int(&np["spec"]["ingress"][0]["ports"][0]["port"], "port"), 5432);

    // The index Job: the Deployment's image (so the base's `images:` retag applies), the same
    // Secret, and `medprm index --backend postgres --import` on a file of the model volume.
    let jc = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(jc["image"], container(&dep)["image"]);
    assert_eq!(env_of(jc, "MEDPRM_DATABASE_URL")["valueFrom"]["secretKeyRef"]["name"], secret.as_str());
    let args: Vec<&str> = jc["args"].as_array().unwrap().iter().map(|a| s(a, "arg")).collect();
    assert_eq!(jc["command"][0], "medprm");
    assert_eq!(args[0], "index");
    let flag = |f: &str| args.iter().position(|a| *a == f).map(|i| args[i + 1]).unwrap_or_else(|| panic!("no {f} in {args:?}"));
    assert_eq!(flag("--backend"), "postgres");
    assert_eq!(flag("--database-url"), "$(MEDPRM_DATABASE_URL)");
    let import = flag("--import");
    let mount = jc["volumeMounts"].as_array().unwrap().iter().find(|m| import.starts_with(s(&m["mountPath"], "mountPath")));
    assert!(mount.is_some(), "--import {import} is on no mounted volume");
}

/// The overlay's variables and the Job's flags exist in this binary.
#[test]
fn postgres_overlay_flags_exist() {
    let flags = serve_env_vars();
    let all = overlay_manifests();
    for (file, v) in &all {
        if v["kind"] != "Deployment" {
            continue;
        }
        for e in container(v)["env"].as_array().unwrap() {
            let name = s(&e["name"], "env name");
            assert!(flags.contains(name), "{file}: {name} is not a `medprm serve` flag");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_medprm")).args(["index", "--help"]).output().expect("run medprm");
    assert!(out.status.success(), "medprm index --help failed");
    let help = String::from_utf8(out.stdout).unwrap();
    let job = one(&all, "Job");
    for a in job["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap() {
        let a = s(a, "arg");
        if a.starts_with("--") {
            assert!(help.contains(&format!("{a} ")), "Job flag {a} is not in `medprm index --help`:\n{help}");
        }
    }
}
