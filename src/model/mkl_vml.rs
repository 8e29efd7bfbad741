//! Rotary cos/sin from Intel MKL's vector math library, loaded at run time (`--mkl-vml`).
//!
//! PyTorch's x86 builds link MKL and compute `Tensor.cos()` / `Tensor.sin()` of f32 tensors with
//! VML's `vmsCos` / `vmsSin` in high-accuracy mode; transformers' rotary embedding takes its cos
//! and sin tables from them. Those results differ from the C library's `cosf`/`sinf` in the last
//! bit on about one angle in twenty, and on a deep model that alone keeps medprm's step scores
//! from being bit for bit with transformers on CPU (everything else already follows torch's
//! kernels). MKL is closed source, so medprm cannot compute its roundings itself; it can call the
//! same routines from a `libmkl_rt` the user provides (`make mkl` fetches the PyPI `mkl` wheel
//! that carries it). Without the flag the tables come from the C library, as before.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `void vms{Cos,Sin}(MKL_INT n, const float a[], float r[], MKL_INT64 mode)`, LP64 interface.
type VmlUnary = unsafe extern "C" fn(n: i32, a: *const f32, r: *mut f32, mode: i64);

/// `VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE`: the mode PyTorch passes.
const MODE: i64 = 0x2 | 0x0014_0000 | 0x100;
/// `MKL_THREADING_SEQUENTIAL`: no OpenMP runtime is needed (or shipped in the wheel).
const THREADING_SEQUENTIAL: i32 = 1;

/// An opened `libmkl_rt` and its two routines.
pub struct MklVml {
    cos: VmlUnary,
    sin: VmlUnary,
    path: PathBuf,
    // Keeps the library mapped while the function pointers above are used.
    _lib: libloading::Library,
}

impl std::fmt::Debug for MklVml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MklVml").field("path", &self.path).finish()
    }
}

impl MklVml {
    /// Opens `path` (a `libmkl_rt.so`), selects MKL's sequential threading layer and checks the
    /// routines on known angles, so a wrong file fails at start with the flag named.
    pub fn open(path: &Path) -> Result<MklVml> {
        let bad = |why: String| Error::input("mkl_vml", format!("{}: {why}", path.display()));
        // SAFETY: loading a shared library runs its initialisers; the user named this file as
        // Intel MKL's runtime library, whose initialisers only set up MKL's dispatch.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| bad(format!("cannot be loaded ({e})")))?;
        // SAFETY: the symbols are MKL's documented C entry points with the signatures above.
        let (cos, sin, threading) = unsafe {
            let cos = *lib.get::<VmlUnary>(b"vmsCos\0").map_err(|e| bad(format!("no vmsCos ({e}); is it libmkl_rt?")))?;
            let sin = *lib.get::<VmlUnary>(b"vmsSin\0").map_err(|e| bad(format!("no vmsSin ({e}); is it libmkl_rt?")))?;
            let threading = lib
                .get::<unsafe extern "C" fn(i32) -> i32>(b"MKL_Set_Threading_Layer\0")
                .map(|f| *f)
                .map_err(|e| bad(format!("no MKL_Set_Threading_Layer ({e}); is it libmkl_rt?")))?;
            (cos, sin, threading)
        };
        // SAFETY: a plain setter of MKL's global configuration, called before any other MKL call.
        unsafe { threading(THREADING_SEQUENTIAL) };
        let vml = MklVml { cos, sin, path: path.to_path_buf(), _lib: lib };
        let (c, s) = vml.cos_sin(&[0.0, std::f32::consts::FRAC_PI_2, 1.0]);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6;
        if !(c[0] == 1.0 && s[0] == 0.0 && close(c[1], 0.0) && close(s[1], 1.0) && close(c[2], 1f32.cos()) && close(s[2], 1f32.sin())) {
            return Err(bad(format!("vmsCos/vmsSin gave {c:?} / {s:?} for 0, π/2, 1")));
        }
        Ok(vml)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// cos and sin of every angle.
    pub fn cos_sin(&self, angles: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut cos = vec![0f32; angles.len()];
        let mut sin = vec![0f32; angles.len()];
        let step = i32::MAX as usize;
        for ((a, c), s) in angles.chunks(step).zip(cos.chunks_mut(step)).zip(sin.chunks_mut(step)) {
            // SAFETY: `a`, `c` and `s` hold `a.len()` (≤ i32::MAX) floats each; VML reads `n`
            // inputs and writes `n` outputs.
            unsafe {
                (self.cos)(a.len() as i32, a.as_ptr(), c.as_mut_ptr(), MODE);
                (self.sin)(a.len() as i32, a.as_ptr(), s.as_mut_ptr(), MODE);
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_mkl_is_refused_naming_the_flag() {
        let dir = std::env::temp_dir().join(format!("medprm-mkl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("libmkl_rt.so");
        std::fs::write(&fake, b"not a shared library").unwrap();
        let err = MklVml::open(&fake).unwrap_err().to_string();
        assert!(err.contains("mkl_vml") && err.contains("cannot be loaded"), "{err}");
        let err = MklVml::open(&dir.join("missing.so")).unwrap_err().to_string();
        assert!(err.contains("mkl_vml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// With `MEDPRM_TEST_MKL_VML` set (`make test` fetches MKL and sets it), the tables equal the
    /// ones torch 2.15 computed (tests/golden/torch-cpu.json, `rope`), bit for bit.
    #[test]
    fn mkl_tables_equal_torch_bit_for_bit() {
        let Some(path) = std::env::var_os("MEDPRM_TEST_MKL_VML").filter(|p| !p.is_empty()) else {
            eprintln!("MEDPRM_TEST_MKL_VML is not set: skipped (make test sets it)");
            return;
        };
        let vml = MklVml::open(Path::new(&path)).unwrap();
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/torch-cpu.json")).unwrap()).unwrap();
        let case = &golden["rope"];
        let bits = |k: &str| -> Vec<u32> { serde_json::from_value(case[k].clone()).unwrap() };
        let angles: Vec<f32> = bits("angles").into_iter().map(f32::from_bits).collect();
        let (c, s) = vml.cos_sin(&angles);
        let differ = |got: &[f32], want: Vec<u32>| got.iter().zip(&want).filter(|(g, w)| g.to_bits() != **w).count();
        assert_eq!(differ(&c, bits("cos")), 0, "cos differs from torch");
        assert_eq!(differ(&s, bits("sin")), 0, "sin differs from torch");
        // And libm does not: the test can tell the two apart.
        let libm: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        assert!(differ(&libm, bits("cos")) > 0, "libm already equals torch on these angles");
    }
}
