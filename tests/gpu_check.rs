//! The self-check of `make bench-gpu` (`medprm bench gpu-check`) on CPU f32 with the test-shaped
//! model: the committed goldens pass, and goldens with one step score moved by 3e-2 or with
//! another pick must make it exit non-zero, so the check cannot silently pass.

use std::process::Command;

use serde_json::Value;

fn check(goldens: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["bench", "gpu-check", "--shape", "test", "--device", "cpu", "--dtype", "f32", "--goldens"])
        .arg(goldens)
        .output()
        .expect("run medprm")
}

fn committed() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu/goldens-test.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("goldens")).expect("json")
}

fn write(dir: &std::path::Path, name: &str, v: &Value) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string(v).unwrap()).unwrap();
    p
}

#[test]
fn committed_goldens_pass_and_corrupted_ones_fail() {
    let dir = tempfile::tempdir().unwrap();
    let good = committed();
    let out = check(&write(dir.path(), "good.json", &good));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("self-check passed"), "{stdout}");

    let mut moved = good.clone();
    let p = moved["cases"][0]["scores"][2][1].as_f64().unwrap();
    moved["cases"][0]["scores"][2][1] = (if p > 0.5 { p - 0.03 } else { p + 0.03 }).into();
    let out = check(&write(dir.path(), "moved.json", &moved));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a step moved by 3e-2 must fail");
    assert!(stderr.contains("self-check FAILED") && stderr.contains("case 0 candidate 2 step 1"), "{stderr}");

    let mut picked = good.clone();
    let pick = picked["cases"][1]["pick"].as_u64().unwrap();
    picked["cases"][1]["pick"] = ((pick + 1) % 4).into();
    let out = check(&write(dir.path(), "picked.json", &picked));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another pick must fail");
    assert!(stderr.contains("case 1: picked candidate"), "{stderr}");
}
