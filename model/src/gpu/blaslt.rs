//! cuBLASLt for the dense GEMMs, decode sizes included: at prefill sizes our `mma.sync` kernel
//! reaches about 150 TFLOP/s against cuBLAS's 900–1,300, and called directly (a plan cached per
//! shape, inside captured graphs too) cuBLAS is also faster from one row
//! (`ops/perf/2026-11-29-gpu-mtp.md`). Grouped (MoE) launches stay on our kernel, since their expert
//! row counts live on the device, unless a large step reads them back (`experts_min_rows`).
//!
//! Only FP8 per-channel and BF16 weights go here. The product runs with unit scales into f32, and
//! `scale_out` then applies the per-token activation and per-channel weight scales (both factor out
//! of the sum over K), the bias and the residual add. FP8 block weights keep our kernel, since their
//! scales change along K. The library is loaded at run time (`libcublasLt.so.13`). When it is absent,
//! or `GLMFLEET_CUBLASLT=0`, every GEMM runs on our kernel.

use std::collections::HashMap;
use std::sync::Mutex;

use cudarc::cublaslt::{result as lt, sys};

use crate::error::{ModelError, Result};
use crate::gpu::device::{DevBuf, Gpu};
use crate::gpu::weights::{GpuLinear, WeightFormat};
use crate::launch;

/// cuBLASLt workspace (the size NVIDIA recommends for Hopper).
const WORKSPACE: usize = 32 << 20;

/// Default routed rows from which the experts run through cuBLASLt. Measured on the H200 (run 26,
/// ops/perf/2026-11-29-gpu-mtp.md): at 256 tokens (2,048 rows) one GEMM per expert takes 2.2–4.4×
/// the grouped kernel's time, at 2,048 tokens 0.5–0.75×, at 8,192 tokens 0.25–0.37×; an 8 × 1,000
/// prefill went from 1,179 to 661 ms. 8,192 rows (1,024 tokens) sits past the crossover.
pub const EXPERTS_MIN_ROWS: usize = 8192;

/// A handle, its workspace and one matmul plan per shape.
pub struct BlasLt {
    /// Fewest rows a GEMM needs to run here (`GLMFLEET_CUBLASLT_MIN_ROWS`, default 1). On the H200,
    /// cuBLASLt FP8 beats the built-in kernel on every dense shape of Air from one row up (qkv
    /// 21 µs against 27 at M = 1, 39 against 236 at M = 256), also inside captured decode graphs:
    /// the batch-256 step went from 104 to 80 ms (ops/perf/2026-11-29-gpu-mtp.md, runs 19 and 20).
    pub min_rows: usize,
    /// Routed rows (tokens × top-k) from which a step's experts run here, one GEMM per expert
    /// (`GLMFLEET_CUBLASLT_EXPERTS=ROWS`, default [`EXPERTS_MIN_ROWS`]; 0: never). Our grouped
    /// kernel reaches 120–140 TFLOP/s at prefill sizes, cuBLASLt 330–580 on Air's expert shapes.
    pub experts_min_rows: Option<usize>,
    handle: sys::cublasLtHandle_t,
    workspace: DevBuf,
    plans: Mutex<HashMap<(usize, usize, usize, bool), Plan>>,
}

// The handle and plans are plain descriptors; all launches go to the one stream of `Gpu`.
unsafe impl Send for BlasLt {}
unsafe impl Sync for BlasLt {}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    w: sys::cublasLtMatrixLayout_t,
    a: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

fn lt_err(what: &'static str) -> impl FnOnce(lt::CublasError) -> ModelError {
    move |e| ModelError::Device(format!("cuBLASLt {what}: {e:?}"))
}

impl BlasLt {
    /// Loads cuBLASLt, or `None` when it is absent or disabled (`GLMFLEET_CUBLASLT=0`).
    pub fn new(g: &Gpu) -> Option<Self> {
        if std::env::var("GLMFLEET_CUBLASLT").is_ok_and(|v| v == "0") {
            return None;
        }
        // SAFETY: only probes for the shared library.
        if !unsafe { sys::is_culib_present() } {
            tracing::warn!("libcublasLt not found: large GEMMs run on the built-in kernel");
            return None;
        }
        let handle = lt::create_handle().ok()?;
        let workspace = DevBuf::zeros(g, WORKSPACE).ok()?;
        let min_rows = std::env::var("GLMFLEET_CUBLASLT_MIN_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let experts_min_rows: usize = std::env::var("GLMFLEET_CUBLASLT_EXPERTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(EXPERTS_MIN_ROWS);
        Some(Self {
            min_rows,
            experts_min_rows: (experts_min_rows > 0).then_some(experts_min_rows),
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `w` can run here: FP8 per-channel or BF16 weights, with 16-byte output rows.
    pub fn handles(w: &GpuLinear) -> bool {
        matches!(w.format, WeightFormat::Fp8Channel | WeightFormat::Bf16) && w.n.is_multiple_of(4)
    }

    /// `out = act · Wᵀ` over `rows` rows, as [`crate::gpu::gemm_launch`] computes it (`omode` 0 store
    /// f32, 1 add f32). `scratch` holds `rows × w.n` f32 when the result cannot be written in place.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        g: &Gpu,
        w: &GpuLinear,
        act: u64,
        act_scales: u64,
        rows: usize,
        out: u64,
        ldc: usize,
        omode: i32,
        scratch: u64,
    ) -> Result<()> {
        self.gemm_group(g, w, 0, act, act_scales, rows, out, ldc, omode, scratch)
    }

    /// As [`Self::gemm`] with group `gi` of a grouped weight (one routed expert of a stacked
    /// `[experts, n, kp]` weight): its rows and its weight scales.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_group(
        &self,
        g: &Gpu,
        w: &GpuLinear,
        gi: usize,
        act: u64,
        act_scales: u64,
        rows: usize,
        out: u64,
        ldc: usize,
        omode: i32,
        scratch: u64,
    ) -> Result<()> {
        if gi >= w.groups.max(1) {
            return Err(ModelError::Input(format!(
                "group {gi} of a weight with {} groups",
                w.groups
            )));
        }
        let fp8 = matches!(w.format, WeightFormat::Fp8Channel);
        let in_place = omode == 0 && ldc == w.n;
        let d = if in_place { out } else { scratch };
        let wp = w.w.p() + (gi * w.n * w.kp * w.elem_bytes()) as u64;
        self.matmul(g, fp8, act, wp, rows, w.n, w.kp, d)?;
        let sw = w
            .scales
            .as_ref()
            .map_or(0, |s| s.p() + (gi * w.scales_per_group() * 4) as u64);
        let bias = w.bias_ptr();
        if in_place && !fp8 && bias == 0 {
            return Ok(());
        }
        let sa = if fp8 { act_scales } else { 0 };
        launch!(g, scale_out, (rows as u32, w.n.div_ceil(256) as u32, 1), (256, 1, 1), 0;
            d, rows as i32, w.n as i32, sa, sw, bias, out, ldc as i32, omode)
    }

    /// One GEMM per group of `w` over consecutive row ranges of `act` (group `i` takes rows
    /// `offsets[i]..offsets[i + 1]`, as the MoE plan lays out the routed rows), stored in place
    /// (`out` rows of `w.n` f32).
    pub fn gemm_groups(
        &self,
        g: &Gpu,
        w: &GpuLinear,
        act: u64,
        act_scales: u64,
        offsets: &[i32],
        out: u64,
    ) -> Result<()> {
        let (act_row, out_row) = ((w.kp * w.elem_bytes()) as u64, (w.n * 4) as u64);
        for (gi, r) in offsets.windows(2).enumerate() {
            let (r0, rows) = (r[0].max(0) as u64, (r[1] - r[0]).max(0) as usize);
            if rows == 0 {
                continue;
            }
            self.gemm_group(
                g,
                w,
                gi,
                act + r0 * act_row,
                act_scales + r0 * 4,
                rows,
                out + r0 * out_row,
                w.n,
                0,
                0,
            )?;
        }
        Ok(())
    }

    /// `d [m, n] (f32, ld n) = a [m, k] · w [n, k]ᵀ`, both operands K-major with leading dimension
    /// `k` elements (the "TN" layout cuBLASLt's FP8 kernels need).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        g: &Gpu,
        fp8: bool,
        a: u64,
        w: u64,
        m: usize,
        n: usize,
        k: usize,
        d: u64,
    ) -> Result<()> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let key = (m, n, k, fp8);
        let p = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(fp8, m, n, k)?),
        };
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: the descriptors live in `plans` (never freed while `self` lives); the pointers are
        // device buffers of the sizes the layouts describe; the stream is the engine's.
        unsafe {
            lt::matmul(
                self.handle,
                p.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                w as *const _,
                p.w,
                a as *const _,
                p.a,
                d as *const _,
                p.d,
                d as *mut _,
                p.d,
                &p.algo,
                self.workspace.p() as *mut _,
                WORKSPACE,
                g.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(lt_err("matmul"))
    }

    fn plan(&self, fp8: bool, m: usize, n: usize, k: usize) -> Result<Plan> {
        use sys::cublasLtMatmulDescAttributes_t as A;
        let ty = if fp8 {
            sys::cudaDataType::CUDA_R_8F_E4M3
        } else {
            sys::cudaDataType::CUDA_R_16BF
        };
        let f32t = sys::cudaDataType::CUDA_R_32F;
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32t)
            .map_err(lt_err("matmul descriptor"))?;
        // cublasOperation_t values (an int32 attribute): CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
        let (t, nt) = (1i32, 0i32);
        // column-major view: D [n, m] = op(W [k, n])ᵀ · A [k, m]
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                A::CUBLASLT_MATMUL_DESC_TRANSA,
                (&t as *const i32).cast(),
                std::mem::size_of_val(&t),
            )
            .map_err(lt_err("transa"))?;
            lt::set_matmul_desc_attribute(
                desc,
                A::CUBLASLT_MATMUL_DESC_TRANSB,
                (&nt as *const i32).cast(),
                std::mem::size_of_val(&nt),
            )
            .map_err(lt_err("transb"))?;
        }
        let wl = lt::create_matrix_layout(ty, k as u64, n as u64, k as i64)
            .map_err(lt_err("weight layout"))?;
        let al = lt::create_matrix_layout(ty, k as u64, m as u64, k as i64)
            .map_err(lt_err("activation layout"))?;
        let dl = lt::create_matrix_layout(f32t, n as u64, m as u64, n as i64)
            .map_err(lt_err("output layout"))?;
        let pref = lt::create_matmul_pref().map_err(lt_err("preference"))?;
        let ws = WORKSPACE as u64;
        let algo = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                std::mem::size_of_val(&ws),
            )
            .map_err(lt_err("workspace preference"))?;
            let h = lt::get_matmul_algo_heuristic(self.handle, desc, wl, al, dl, dl, pref)
                .map_err(lt_err("no algorithm for this shape"));
            let _ = lt::destroy_matmul_pref(pref);
            h?.algo
        };
        Ok(Plan {
            desc,
            w: wl,
            a: al,
            d: dl,
            algo,
        })
    }
}

impl Drop for BlasLt {
    fn drop(&mut self) {
        let plans = self.plans.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: nothing uses the descriptors or the handle after this.
        unsafe {
            for p in plans.values() {
                let _ = lt::destroy_matmul_desc(p.desc);
                for l in [p.w, p.a, p.d] {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
