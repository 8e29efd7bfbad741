//! The self-check of `make bench-gpu` (`medprm bench gpu-check`) on CPU f32 with the test-shaped
//! model: the committed goldens pass, and goldens with one step score moved by 3e-2 or with
//! another pick (where the goldens' margin is above the bound) must make it exit non-zero, so the
//! check cannot silently pass.

use std::process::Command;

use serde_json::Value;

fn check(goldens: &std::path::Path, bound: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medprm"))
        .args(["bench", "gpu-check", "--shape", "test", "--device", "cpu", "--dtype", "f32", "--bound", bound, "--goldens"])
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
    let out = check(&write(dir.path(), "good.json", &good), "2e-2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("self-check passed"), "{stdout}");

    let mut moved = good.clone();
    let p = moved["cases"][0]["scores"][2][1].as_f64().unwrap();
    moved["cases"][0]["scores"][2][1] = (if p > 0.5 { p - 0.03 } else { p + 0.03 }).into();
    let out = check(&write(dir.path(), "moved.json", &moved), "2e-2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a step moved by 3e-2 must fail");
    assert!(stderr.contains("self-check FAILED") && stderr.contains("case 0 candidate 2 step 1"), "{stderr}");

    // Another pick fails where the goldens separate the candidates by more than the bound (case
    // 0's margin is 1.8e-2: checked at a bound of 5e-3, which f32 on the CPU meets by far), and is
    // only reported where they do not (at 2e-2).
    let mut picked = good.clone();
    let margin = picked["cases"][0]["margin"].as_f64().unwrap();
    assert!(margin > 5e-3 && margin < 2e-2, "case 0's golden margin {margin}");
    let pick = picked["cases"][0]["pick"].as_u64().unwrap();
    picked["cases"][0]["pick"] = ((pick + 1) % 8).into();
    let path = write(dir.path(), "picked.json", &picked);
    let out = check(&path, "5e-3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another pick must fail");
    assert!(stderr.contains("case 0: picked candidate"), "{stderr}");
    let out = check(&path, "2e-2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("tie at the bound's resolution, not a failure: case 0"), "{stdout}");
}
