//! Parity of the GPU engine (feature `gpu`, run on a CUDA machine) with its plain references: each
//! kernel against the host math it replaces (GEMMs against f64 products of the same quantized
//! values, top-k routing against `moe::route`, sampling against `sample::sample_host`), the whole
//! model against transformers' logits and the CPU model (prefill in two chunks, then teacher-forced
//! decode steps), and CUDA-graph replay against eager launches.
#![cfg(feature = "gpu")]

mod common;

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use common::{decode_seqs, fixture, floats, ids, prompt_seqs, reference, rel_l2};
use model::fp8::{e4m3_to_f32, f32_to_e4m3, quantize_row};
use model::gpu::weights::GpuLinear;
use model::gpu::{
    gemm_launch, gemv_launch, gemv_qkv_launch, gemv_route_launch, paired_rows, prep_threads,
    rope_kv_launch, router_launch, sample_launch, sample_part_bytes, topk_smem, ActRows, BlasLt,
    DevBuf, Gpu, GpuModel, GpuOptions, HiddenRow, KeepFrom, MoeGemv, QkvOut, Route, SampleSpecs,
    StepOutput, ROUTER_GEMM_MIN_TOKENS,
};
use model::linear::{Fp8Scales, Fp8Weight, Linear, LinearWeight};
use model::sample::{min_p_log, sample_host, truncation_threshold, DeviceSampling};
use model::{CpuBackend, Fp8Activations, Glm4Moe, LoadOptions, SeqInput};
use rand::{Rng, SeedableRng};

type Cpu = CpuBackend;

fn gpu() -> Arc<Gpu> {
    Gpu::new(0).expect("a CUDA device")
}

fn bf16_round(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

// ---------------------------------------------------------------------------------------------
// GEMM

enum Kind {
    Bf16,
    Channel,
    Block(usize, usize),
}

impl Kind {
    /// Whether a `k`-wide weight can be made in this format: 128-wide blocks need whole blocks
    /// past the first.
    fn fits(&self, k: usize) -> bool {
        !matches!(self, Kind::Block(128, _)) || k.is_multiple_of(128) || k <= 128
    }
}

/// Every weight format the kernels take, by name.
fn weight_kinds() -> [(&'static str, Kind); 4] {
    [
        ("bf16", Kind::Bf16),
        ("fp8-channel", Kind::Channel),
        ("fp8-block-128", Kind::Block(128, 128)),
        ("fp8-block-32", Kind::Block(32, 32)),
    ]
}

fn random_linear(rng: &mut rand::rngs::StdRng, kind: &Kind, out: usize, inp: usize) -> Linear<Cpu> {
    let dev = Default::default();
    match kind {
        Kind::Bf16 => {
            let v: Vec<f32> = (0..out * inp).map(|_| rng.gen_range(-1.0..1.0)).collect();
            Linear {
                weight: LinearWeight::Dense(Tensor::from_data(
                    TensorData::new(v, [out, inp]),
                    &dev,
                )),
                bias: None,
            }
        }
        Kind::Channel | Kind::Block(..) => {
            let bytes: Vec<u8> = (0..out * inp)
                .map(|_| f32_to_e4m3(rng.gen_range(-448.0..448.0)))
                .collect();
            let scales = match kind {
                Kind::Channel => {
                    Fp8Scales::Channel((0..out).map(|_| rng.gen_range(0.001..0.01)).collect())
                }
                Kind::Block(bn, bk) => Fp8Scales::Block {
                    block: [*bn, *bk],
                    scales: (0..out.div_ceil(*bn) * inp.div_ceil(*bk))
                        .map(|_| rng.gen_range(0.001..0.01))
                        .collect(),
                },
                Kind::Bf16 => unreachable!(),
            };
            Linear {
                weight: LinearWeight::Fp8(Fp8Weight {
                    out_features: out,
                    in_features: inp,
                    bytes: bytes.into(),
                    scales,
                }),
                bias: None,
            }
        }
    }
}

/// y = x Wᵀ with the kernel's numerics: BF16 operands rounded, FP8 activations quantized per
/// token (and K group), products summed in f64.
fn reference_gemm(x: &[f32], m: usize, w: &Linear<Cpu>) -> Vec<f32> {
    let (n, k) = match &w.weight {
        LinearWeight::Dense(t) => (t.dims()[0], t.dims()[1]),
        LinearWeight::Fp8(f) => (f.out_features, f.in_features),
    };
    let mut y = vec![0f32; m * n];
    match &w.weight {
        LinearWeight::Dense(t) => {
            let wv: Vec<f32> = t.to_data().convert::<f32>().to_vec().unwrap();
            for r in 0..m {
                for c in 0..n {
                    let s: f64 = (0..k)
                        .map(|j| bf16_round(x[r * k + j]) as f64 * bf16_round(wv[c * k + j]) as f64)
                        .sum();
                    y[r * n + c] = s as f32;
                }
            }
        }
        LinearWeight::Fp8(f) => {
            let group = match &f.scales {
                Fp8Scales::Channel(_) => k,
                Fp8Scales::Block { block, .. } => block[1],
            };
            let ng = k.div_ceil(group);
            let mut xq = vec![0f32; m * k];
            let mut sx = vec![0f32; m * ng];
            for r in 0..m {
                for gi in 0..ng {
                    let (c0, c1) = (gi * group, ((gi + 1) * group).min(k));
                    sx[r * ng + gi] =
                        quantize_row(&x[r * k + c0..r * k + c1], &mut xq[r * k + c0..r * k + c1]);
                }
            }
            for r in 0..m {
                for c in 0..n {
                    let mut s = 0f64;
                    for gi in 0..ng {
                        let (c0, c1) = (gi * group, ((gi + 1) * group).min(k));
                        let dot: f64 = (c0..c1)
                            .map(|j| xq[r * k + j] as f64 * e4m3_to_f32(f.bytes[c * k + j]) as f64)
                            .sum();
                        let sw = match &f.scales {
                            Fp8Scales::Channel(s) => s[c],
                            Fp8Scales::Block { block, scales } => scales[(c / block[0]) * ng + gi],
                        };
                        s += dot * sx[r * ng + gi] as f64 * sw as f64;
                    }
                    y[r * n + c] = s as f32;
                }
            }
        }
    }
    y
}

/// Quantizes `x` for `lin` with the prep kernel and runs the GEMM; grouped when `groups` gives
/// each group's row count.
/// `m` rows of `x` quantized (or cast) on the device as `lin`'s activations, with their scales.
fn prep_act(g: &Gpu, lin: &GpuLinear, x: &[f32], m: usize) -> (DevBuf, DevBuf) {
    let k = lin.k;
    let xb = DevBuf::from_host(g, x).unwrap();
    let act = DevBuf::zeros(g, m * lin.kp * 2).unwrap();
    let sc = DevBuf::zeros(g, m * lin.act_groups().max(1) * 4).unwrap();
    let (fmt, group) = lin.act_format();
    model::launch!(g, prep_rows, (m as u32, 1, 1), (prep_threads(m), 1, 1), 0;
        xb.p(), k as i32, 0u64, k as i32, 0i32, 0u64, 1e-6f32, 0i32, fmt, act.p(), lin.kp as i32,
        sc.p(), group as i32)
    .unwrap();
    (act, sc)
}

fn run_gemm(g: &Gpu, lin: &GpuLinear, x: &[f32], m: usize, groups: Option<&[usize]>) -> Vec<f32> {
    let (act, sc) = prep_act(g, lin, x, m);
    let out = DevBuf::zeros(g, m * lin.n * 4).unwrap();
    match groups {
        None => gemm_launch(g, lin, act.p(), sc.p(), m, None, out.p(), lin.n, 0).unwrap(),
        Some(counts) => {
            let bm = if m >= 32 * counts.len() { 64 } else { 16 };
            let mut offsets = vec![0i32];
            let mut tiles = vec![];
            for (e, &c) in counts.iter().enumerate() {
                let start = *offsets.last().unwrap();
                for j in 0..c.div_ceil(bm) {
                    tiles.push(e as i32);
                    tiles.push(start + (j * bm) as i32);
                }
                offsets.push(start + c as i32);
            }
            let nt = tiles.len() / 2;
            let max_tiles = m.div_ceil(bm) + counts.len();
            let tb = DevBuf::from_host(g, &tiles).unwrap();
            let ob = DevBuf::from_host(g, &offsets).unwrap();
            let nb = DevBuf::from_host(g, &[nt as i32]).unwrap();
            gemm_launch(
                g,
                lin,
                act.p(),
                sc.p(),
                m,
                Some((bm, max_tiles, tb.p(), nb.p(), ob.p())),
                out.p(),
                lin.n,
                0,
            )
            .unwrap();
        }
    }
    let mut y = vec![0f32; m * lin.n];
    g.download(out.p(), &mut y).unwrap();
    y
}

/// Rows of width `ld` (block-FP8 weights pad N to whole blocks) cut to their first `n` columns.
fn unpad(y: &[f32], ld: usize, n: usize) -> Vec<f32> {
    y.chunks(ld).flat_map(|r| r[..n].iter().copied()).collect()
}

/// The cuBLASLt path (prefill-size dense GEMMs) against the f64 reference, storing and adding.
/// The device runs must have the library (`ops/perf/gpu.sh` puts PyTorch's on the path); only
/// `GLMFLEET_CUBLASLT=0` skips it.
#[test]
fn cublaslt_gemm_matches_reference() {
    let g = gpu();
    let Some(lt) = BlasLt::new(&g) else {
        assert_eq!(
            std::env::var("GLMFLEET_CUBLASLT").as_deref(),
            Ok("0"),
            "libcublasLt not found"
        );
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Hopper's FP8 tensor cores accumulate with fewer bits than f32 between cuBLASLt's promotions
    // (run 14: 1.1e-4 at K = 512); BF16 and our FP8 kernel stay near 1e-7. Both are far below the
    // FP8 quantization error itself (about 6e-2 against the unquantized model).
    for (name, kind, tol) in [
        ("bf16", Kind::Bf16, 2e-5),
        ("fp8-channel", Kind::Channel, 1e-3),
    ] {
        // decode rows (1, 16) with tiny-model widths, and prefill rows
        let shapes = [
            (1usize, 520usize, 512usize),
            (16, 72, 64),
            (300, 520, 512),
            (1000, 1024, 1000),
        ];
        for &(m, n, k) in &shapes {
            let w = random_linear(&mut rng, &kind, n, k);
            let lin = GpuLinear::upload(&g, &[vec![&w]]).unwrap();
            let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let (act, sc) = prep_act(&g, &lin, &x, m);
            let want = reference_gemm(&x, m, &w);
            // store in place
            let out = DevBuf::zeros(&g, m * n * 4).unwrap();
            lt.gemm(&g, &lin, act.p(), sc.p(), m, out.p(), n, 0, 0)
                .unwrap();
            let mut got = vec![0f32; m * n];
            g.download(out.p(), &mut got).unwrap();
            let err = rel_l2(&got, &want);
            eprintln!("cuBLASLt {name} m={m} n={n} k={k}: rel L2 {err:.2e}");
            assert!(
                err < tol,
                "cuBLASLt {name} m={m} n={n} k={k}: rel L2 {err:e}"
            );
            // add into a residual through the scratch
            let base: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
            let res = DevBuf::from_host(&g, &base).unwrap();
            let scratch = DevBuf::zeros(&g, m * n * 4).unwrap();
            lt.gemm(&g, &lin, act.p(), sc.p(), m, res.p(), n, 1, scratch.p())
                .unwrap();
            g.download(res.p(), &mut got).unwrap();
            let want_add: Vec<f32> = want.iter().zip(&base).map(|(a, b)| a + b).collect();
            let err = rel_l2(&got, &want_add);
            assert!(err < tol, "cuBLASLt add {name} m={m}: rel L2 {err:e}");
        }
        // one GEMM per expert of a grouped weight (uneven rows, one expert empty), as the MoE
        // layer runs its routed rows with GLMFLEET_CUBLASLT_EXPERTS
        let (n, k) = (192, 256);
        let counts = [3usize, 0, 40, 1, 77];
        let m: usize = counts.iter().sum();
        let ws: Vec<Linear<Cpu>> = counts
            .iter()
            .map(|_| random_linear(&mut rng, &kind, n, k))
            .collect();
        let lin = GpuLinear::upload(&g, &ws.iter().map(|w| vec![w]).collect::<Vec<_>>()).unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let (act, sc) = prep_act(&g, &lin, &x, m);
        let mut offsets = vec![0i32];
        for &c in &counts {
            offsets.push(offsets.last().unwrap() + c as i32);
        }
        let out = DevBuf::zeros(&g, m * n * 4).unwrap();
        lt.gemm_groups(&g, &lin, act.p(), sc.p(), &offsets, out.p())
            .unwrap();
        let mut got = vec![0f32; m * n];
        g.download(out.p(), &mut got).unwrap();
        let mut row = 0;
        for (e, &c) in counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            let want = reference_gemm(&x[row * k..(row + c) * k], c, &ws[e]);
            let err = rel_l2(&got[row * n..(row + c) * n], &want);
            assert!(err < tol, "cuBLASLt {name} expert {e}: rel L2 {err:e}");
            row += c;
        }
        eprintln!(
            "cuBLASLt {name}: {} experts, {m} rows, one GEMM each",
            counts.len()
        );
        assert!(lt
            .gemm_groups(&g, &lin, act.p(), sc.p(), &[0, 1, 2, 3, 4, 5, 6], out.p())
            .is_err());
    }
}

#[test]
fn gemm_kernels_match_reference() {
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (name, kind) in &weight_kinds() {
        for &(m, n, k) in &[
            (1, 136, 64),
            (5, 256, 200),
            (17, 300, 1024),
            (100, 128, 40),
            (300, 520, 512),
        ] {
            if !kind.fits(k) {
                continue;
            }
            let w = random_linear(&mut rng, kind, n, k);
            let lin = GpuLinear::upload(&g, &[vec![&w]]).unwrap();
            let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let got = unpad(&run_gemm(&g, &lin, &x, m, None), lin.n, n);
            let want = reference_gemm(&x, m, &w);
            let err = rel_l2(&got, &want);
            eprintln!("gemm {name} m={m} n={n} k={k}: rel L2 {err:.2e}");
            assert!(err < 2e-5, "gemm {name} m={m} n={n} k={k}: rel L2 {err:e}");
        }
        // grouped: 5 experts with uneven (and one empty) row counts
        let (n, k) = (192, 256);
        let counts = [3usize, 0, 40, 1, 77];
        let m: usize = counts.iter().sum();
        let ws: Vec<Linear<Cpu>> = (0..counts.len())
            .map(|_| random_linear(&mut rng, kind, n, k))
            .collect();
        let lin = GpuLinear::upload(&g, &ws.iter().map(|w| vec![w]).collect::<Vec<_>>()).unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let got = unpad(&run_gemm(&g, &lin, &x, m, Some(&counts)), lin.n, n);
        let mut row = 0;
        for (e, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let want = reference_gemm(&x[row * k..(row + c) * k], c, &ws[e]);
            let err = rel_l2(&got[row * n..(row + c) * n], &want);
            assert!(err < 2e-5, "grouped gemm {name} expert {e}: rel L2 {err:e}");
            row += c;
        }
        eprintln!(
            "grouped gemm {name}: {} experts, {m} rows match",
            counts.len()
        );
    }
}

/// The decode GEMV (norm and quant fused) against the same f64 reference as the GEMM, for 1..=4
/// rows (BF16) and up to 8 (FP8) on every weight format it takes, each input mode (its own FP8
/// instantiation): plain rows, RMSNorm'd rows gathered through row indices with a residual add
/// and bias, and SiLU·up of gate|up rows. FP8 blocks under 64 columns are refused (the GEMM takes
/// them).
#[test]
fn gemv_kernels_match_reference() {
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (name, kind) in &weight_kinds() {
        for &(n, k) in &[(136, 64), (300, 1024), (520, 512), (96, 200)] {
            if !kind.fits(k) {
                continue;
            }
            let mut w = random_linear(&mut rng, kind, n, k);
            let bias: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            if matches!(kind, Kind::Block(32, _)) {
                // K blocks shorter than the FP8 kernel's 64-byte steps: the GEMM path takes them
                let lin = GpuLinear::upload(&g, &[vec![&w]]).unwrap();
                let x = DevBuf::zeros(&g, k * 4).unwrap();
                let a = ActRows::plain(x.p(), k, 1, k);
                assert!(!gemv_launch(&g, &lin, &a, x.p(), lin.n, 0).unwrap());
                continue;
            }
            let row_counts: &[usize] = match kind {
                Kind::Bf16 => &[1, 2, 3, 4],
                _ => &[1, 2, 3, 4, 8],
            };
            for &m in row_counts {
                // 20 source rows, the kernel reads rows picked in reverse; RMSNorm with weights
                let src: Vec<f32> = (0..20 * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let nw: Vec<f32> = (0..k).map(|_| rng.gen_range(0.5..1.5)).collect();
                let picks: Vec<i32> = (0..m as i32).map(|i| 19 - i).collect();
                let picked: Vec<f32> = picks
                    .iter()
                    .flat_map(|&p| &src[p as usize * k..(p as usize + 1) * k])
                    .copied()
                    .collect();
                let x = rms_norm_rows(&picked, k, &nw, 1e-5);
                let plain = src[..m * k].to_vec();
                w.bias = None;
                let lin = GpuLinear::upload(&g, &[vec![&w]]).unwrap();
                let srcb = DevBuf::from_host(&g, &src).unwrap();
                let nwb = DevBuf::from_host(&g, &nw).unwrap();
                let pb = DevBuf::from_host(&g, &picks).unwrap();
                let out = DevBuf::zeros(&g, m * lin.n * 4).unwrap();
                // plain rows, stored
                let a = ActRows::plain(srcb.p(), k, m, k);
                assert!(gemv_launch(&g, &lin, &a, out.p(), lin.n, 0).unwrap());
                let mut y = vec![0f32; m * lin.n];
                g.download(out.p(), &mut y).unwrap();
                let err = rel_l2(&unpad(&y, lin.n, n), &reference_gemm(&plain, m, &w));
                assert!(err < 2e-5, "gemv {name} m={m} n={n} k={k}: rel L2 {err:e}");
                // normed, gathered rows added to y, with a bias
                w.bias = Some(Tensor::from_data(
                    TensorData::new(bias.clone(), [n]),
                    &Default::default(),
                ));
                let linb = GpuLinear::upload(&g, &[vec![&w]]).unwrap();
                w.bias = None;
                let a = ActRows::plain(srcb.p(), k, m, k)
                    .gathered(pb.p())
                    .normed(nwb.p(), 1e-5);
                assert!(gemv_launch(&g, &linb, &a, out.p(), linb.n, 1).unwrap());
                let mut y2 = vec![0f32; m * linb.n];
                g.download(out.p(), &mut y2).unwrap();
                let normed = reference_gemm(&x, m, &w);
                let want: Vec<f32> = (0..m * n)
                    .map(|i| y[(i / n) * lin.n + i % n] + normed[i] + bias[i % n])
                    .collect();
                // the device's norm sums in another order: a last-bit difference can flip the
                // rounding of an element (a bf16 step is 2^-8 of it, an e4m3 step 2^-4)
                let err = rel_l2(&unpad(&y2, linb.n, n), &want);
                assert!(
                    err < 5e-3,
                    "gemv {name} normed m={m} n={n} k={k}: rel L2 {err:e}"
                );
                // SiLU·up of gate|up rows (the up half from column k): the down projection's
                // rows; SiLU's exp differs in the last bits, so a rounding may flip as above
                let gu: Vec<f32> = (0..m * 2 * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let act: Vec<f32> = gu
                    .chunks(2 * k)
                    .flat_map(|r| (0..k).map(move |j| silu(r[j]) * r[k + j]))
                    .collect();
                let gub = DevBuf::from_host(&g, &gu).unwrap();
                let a = ActRows::plain(gub.p(), 2 * k, m, k).swiglu(k);
                assert!(gemv_launch(&g, &lin, &a, out.p(), lin.n, 0).unwrap());
                let mut y3 = vec![0f32; m * lin.n];
                g.download(out.p(), &mut y3).unwrap();
                let err = rel_l2(&unpad(&y3, lin.n, n), &reference_gemm(&act, m, &w));
                assert!(
                    err < 5e-3,
                    "gemv {name} SiLU·up m={m} n={n} k={k}: rel L2 {err:e}"
                );
            }
            eprintln!("gemv {name} n={n} k={k}: rows {row_counts:?} match");
        }
    }
}

/// RMSNorm of each `k`-column row of `x` with weight `nw`, in f32 (the kernels' formula).
fn rms_norm_rows(x: &[f32], k: usize, nw: &[f32], eps: f32) -> Vec<f32> {
    x.chunks(k)
        .flat_map(|row| {
            let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / k as f32;
            let rs = 1.0 / (ss + eps).sqrt();
            row.iter().zip(nw).map(move |(v, w)| v * rs * w)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// RoPE and the KV-cache write

/// NeoX RoPE of one head's first `rot` dims at `pos`: the angle in f32 as the kernels take it,
/// the rest in f64.
fn rope_head(x: &[f32], pos: i32, rot: usize, theta: f32) -> Vec<f32> {
    let half = rot / 2;
    let mut y = x.to_vec();
    for i in 0..half {
        let a = pos as f32 * (1.0 / theta.powf((2 * i) as f32 / rot as f32));
        let (s, c) = (a as f64).sin_cos();
        let (x1, x2) = (x[i] as f64, x[i + half] as f64);
        y[i] = (x1 * c - x2 * s) as f32;
        y[i + half] = (x2 * c + x1 * s) as f32;
    }
    y
}

/// The QKV GEMV with RoPE and the cache writes as its epilogue (rotary rows paired), and
/// `rope_kv` after a GEMM over the paired and the checkpoint row order, against the projection
/// turned on the host: q, and the K and V caches (BF16 and FP8), at 1-3 and 8 tokens, the second
/// without a cache slot.
#[test]
fn qkv_rope_matches_reference() {
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let (nh, nkv, d, rot, h, theta) = (4usize, 2usize, 128usize, 64usize, 256usize, 10_000f32);
    let slots_n = 20;
    for (name, kind) in weight_kinds() {
        let mut parts: Vec<Linear<Cpu>> = vec![];
        for n in [nh * d, nkv * d, nkv * d] {
            let mut l = random_linear(&mut rng, &kind, n, h);
            let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            l.bias = Some(Tensor::from_data(
                TensorData::new(b, [n]),
                &Default::default(),
            ));
            parts.push(l);
        }
        let fused = vec![parts.iter().collect::<Vec<_>>()];
        let plain = GpuLinear::upload(&g, &fused).unwrap();
        let heads = (nh, nkv, d, rot);
        let order = move |p: &[usize], n: usize| paired_rows(n, heads, p[1]);
        let (paired, applied) = GpuLinear::upload_ordered(&g, &fused, Some(&order)).unwrap();
        // 32-row scale blocks: the order would move rows across them
        assert_eq!(applied, !matches!(kind, Kind::Block(32, _)), "{name}");
        for kv_fp8 in [false, true] {
            for t in [1usize, 2, 3, 8] {
                // the GEMV path norms the raw rows itself (normed rows: the instantiation the
                // layers run), the others take the host's normed rows
                let raw: Vec<f32> = (0..t * h).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let nw: Vec<f32> = (0..h).map(|_| rng.gen_range(0.5..1.5)).collect();
                let x = rms_norm_rows(&raw, h, &nw, 1e-5);
                let pos: Vec<i32> = (0..t).map(|i| 37 + 101 * i as i32).collect();
                let slots: Vec<i32> = (0..t)
                    .map(|i| if i == 1 { -1 } else { (2 * i + 1) as i32 })
                    .collect();
                // the host's q and caches (f32; the caches compared after rounding below)
                let ys: Vec<Vec<f32>> = parts.iter().map(|p| reference_gemm(&x, t, p)).collect();
                let bias = |p: &Linear<Cpu>| -> Vec<f32> {
                    p.bias
                        .as_ref()
                        .unwrap()
                        .to_data()
                        .convert::<f32>()
                        .to_vec()
                        .unwrap()
                };
                let mut want_q = vec![0f32; t * nh * d];
                let mut want_kv = [vec![0f32; slots_n * nkv * d], vec![0f32; slots_n * nkv * d]];
                for tok in 0..t {
                    for (pi, p) in parts.iter().enumerate() {
                        let (heads, b) = (if pi == 0 { nh } else { nkv }, bias(p));
                        for hd in 0..heads {
                            let row: Vec<f32> = (0..d)
                                .map(|j| ys[pi][tok * heads * d + hd * d + j] + b[hd * d + j])
                                .collect();
                            let row = if pi < 2 {
                                rope_head(&row, pos[tok], rot, theta)
                            } else {
                                row
                            };
                            if pi == 0 {
                                want_q[(tok * nh + hd) * d..][..d].copy_from_slice(&row);
                            } else if slots[tok] >= 0 {
                                let at = (slots[tok] as usize * nkv + hd) * d;
                                want_kv[pi - 1][at..at + d].copy_from_slice(&row);
                            }
                        }
                    }
                }
                let round = |v: f32| {
                    if kv_fp8 {
                        e4m3_to_f32(f32_to_e4m3(v))
                    } else {
                        bf16_round(v)
                    }
                };
                let elem = if kv_fp8 { 1 } else { 2 };
                let (pb, sb, rawb, nwb) = (
                    DevBuf::from_host(&g, &pos).unwrap(),
                    DevBuf::from_host(&g, &slots).unwrap(),
                    DevBuf::from_host(&g, &raw).unwrap(),
                    DevBuf::from_host(&g, &nw).unwrap(),
                );
                for path in ["QKV GEMV + RoPE", "rope_kv, paired rows", "rope_kv"] {
                    let q = DevBuf::zeros(&g, t * nh * d * 4).unwrap();
                    let kc = DevBuf::zeros(&g, slots_n * nkv * d * elem).unwrap();
                    let vc = DevBuf::zeros(&g, slots_n * nkv * d * elem).unwrap();
                    let out = QkvOut {
                        pos: pb.p(),
                        slots: sb.p(),
                        q: q.p(),
                        kc: kc.p(),
                        vc: vc.p(),
                        nh: nh as i32,
                        nkv: nkv as i32,
                        d: d as i32,
                        rot: rot as i32,
                        kv_fp8: i32::from(kv_fp8),
                        theta,
                    };
                    let lin = if path == "rope_kv" { &plain } else { &paired };
                    let offs = (lin.parts[1], lin.parts[2]);
                    if path == "QKV GEMV + RoPE" {
                        let a = ActRows::plain(rawb.p(), h, t, h).normed(nwb.p(), 1e-5);
                        let fp8_gemv = applied && !matches!(kind, Kind::Bf16);
                        let ran = gemv_qkv_launch(&g, &paired, &a, &out, offs).unwrap();
                        assert_eq!(ran, fp8_gemv, "{name}: the GEMV takes paired FP8 weights");
                        if !ran {
                            continue;
                        }
                    } else {
                        if path != "rope_kv" && !applied {
                            continue;
                        }
                        let f1 = DevBuf::from_host(&g, &run_gemm(&g, lin, &x, t, None)).unwrap();
                        let src = (f1.p(), lin.n, offs.0, offs.1);
                        rope_kv_launch(&g, t, src, &out, (0, 0, 1e-6), path != "rope_kv").unwrap();
                    }
                    let mut got_q = vec![0f32; t * nh * d];
                    g.download(q.p(), &mut got_q).unwrap();
                    let what = format!("{name} {path} t={t} kv_fp8={kv_fp8}");
                    let err = rel_l2(&got_q, &want_q);
                    // the device's norm sums in another order: a last-bit difference can flip
                    // an element's e4m3 rounding (gemv_kernels_match_reference)
                    let tol = if path == "QKV GEMV + RoPE" {
                        5e-3
                    } else {
                        1e-4
                    };
                    assert!(err < tol, "{what}: q rel L2 {err:e}");
                    for (cache, want, part) in [(&kc, &want_kv[0], "k"), (&vc, &want_kv[1], "v")] {
                        let got: Vec<f32> = if kv_fp8 {
                            let mut b = vec![0u8; slots_n * nkv * d];
                            g.download(cache.p(), &mut b).unwrap();
                            b.iter().map(|&v| e4m3_to_f32(v)).collect()
                        } else {
                            let mut b = vec![0u16; slots_n * nkv * d];
                            g.download(cache.p(), &mut b).unwrap();
                            b.iter()
                                .map(|&v| half::bf16::from_bits(v).to_f32())
                                .collect()
                        };
                        let want: Vec<f32> = want.iter().map(|&v| round(v)).collect();
                        // a value at a rounding boundary may round either way
                        let err = rel_l2(&got, &want);
                        let tol = if kv_fp8 { 2e-2 } else { 2e-3 };
                        assert!(err < tol, "{what}: {part} cache rel L2 {err:e}");
                    }
                    println!("{what}: ok");
                }
            }
        }
    }
}

fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// The decode MoE GEMVs (routed experts and the shared one, combine fused) against the host:
/// per token and slot, gate|up and down by the f64 reference GEMM, SiLU·up between, summed with
/// the routing weights into the residual.
/// An expert's gate, up and down projections.
type Expert = (Linear<Cpu>, Linear<Cpu>, Linear<Cpu>);

/// `e` random experts and a shared one of `h` → `inter` → `h`, and on the device: the experts'
/// gate|up and down, the shared expert's gate|up and down.
fn random_experts(
    g: &Gpu,
    rng: &mut rand::rngs::StdRng,
    kind: &Kind,
    e: usize,
    h: usize,
    inter: usize,
) -> (Vec<Expert>, Expert, [GpuLinear; 4]) {
    let mut mk = || {
        (
            random_linear(rng, kind, inter, h),
            random_linear(rng, kind, inter, h),
            random_linear(rng, kind, h, inter),
        )
    };
    let experts: Vec<_> = (0..e).map(|_| mk()).collect();
    let shared = mk();
    let gu = GpuLinear::upload(
        g,
        &experts.iter().map(|x| vec![&x.0, &x.1]).collect::<Vec<_>>(),
    )
    .unwrap();
    let dn = GpuLinear::upload(g, &experts.iter().map(|x| vec![&x.2]).collect::<Vec<_>>()).unwrap();
    let sgu = GpuLinear::upload(g, &[vec![&shared.0, &shared.1]]).unwrap();
    let sdn = GpuLinear::upload(g, &[vec![&shared.2]]).unwrap();
    (experts, shared, [gu, dn, sgu, sdn])
}

#[test]
fn moe_gemv_matches_reference() {
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let kinds = [
        ("bf16", Kind::Bf16),
        ("fp8-channel", Kind::Channel),
        ("fp8-block-128", Kind::Block(128, 128)),
    ];
    // inter: three 128-column activation groups (FP8 block scales) in the down kernel's row
    let (h, inter, e, k) = (256, 384, 6, 3);
    for (name, kind) in &kinds {
        let (experts, shared, [gu, dn, sgu, sdn]) = random_experts(&g, &mut rng, kind, e, h, inter);
        // up to 8 tokens: the GEMV path the engine takes up to 8 (runs 57/58); one token also
        // with gate|up flat (moe_gemv_fp8_flat); FP8 gate|up applying SiLU·up itself (paired,
        // the engine's default) and not
        for (t, flat, paired) in [
            (1usize, false, true),
            (1, false, false),
            (1, true, true),
            (1, true, false),
            (2, false, true),
            (3, false, true),
            (3, false, false),
            (4, false, true),
            (8, false, true),
            (8, false, false),
        ] {
            let xn: Vec<f32> = (0..t * h).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let x0: Vec<f32> = (0..t * h).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let ids: Vec<i32> = (0..t * k).map(|i| ((i * 5 + t) % e) as i32).collect();
            let wts: Vec<f32> = (0..t * k).map(|_| rng.gen_range(0.1..0.5)).collect();
            let (xnb, xb) = (
                DevBuf::from_host(&g, &xn).unwrap(),
                DevBuf::from_host(&g, &x0).unwrap(),
            );
            let (idb, wtb) = (
                DevBuf::from_host(&g, &ids).unwrap(),
                DevBuf::from_host(&g, &wts).unwrap(),
            );
            let f1 = DevBuf::zeros(&g, t * (k + 1) * gu.n * 4).unwrap();
            let moe = MoeGemv {
                gate_up: &gu,
                down: &dn,
                shared: Some((&sgu, &sdn)),
                inter,
                k,
                ids: idb.p(),
                wts: wtb.p(),
                flat,
                paired,
                routed: None,
            };
            let cfg = moe.config(&g, t, h).expect("the MoE GEMV applies");
            let fp8 = !matches!(kind, Kind::Bf16);
            assert_eq!(cfg.flat().is_some(), flat && fp8, "flat gate|up at t={t}");
            assert_eq!(cfg.paired(), paired && fp8, "paired gate|up at t={t}");
            moe.launch(&g, &cfg, t, (xnb.p(), h), f1.p(), xb.p())
                .unwrap();
            let mut got = vec![0f32; t * h];
            g.download(xb.p(), &mut got).unwrap();
            let mut want = x0.clone();
            for tok in 0..t {
                let row = &xn[tok * h..(tok + 1) * h];
                let slots = (0..k)
                    .map(|j| (&experts[ids[tok * k + j] as usize], wts[tok * k + j]))
                    .chain(std::iter::once((&shared, 1.0)));
                for (ex, wt) in slots {
                    let gate = reference_gemm(row, 1, &ex.0);
                    let up = reference_gemm(row, 1, &ex.1);
                    let mid: Vec<f32> = gate.iter().zip(&up).map(|(a, b)| silu(*a) * b).collect();
                    let y = reference_gemm(&mid, 1, &ex.2);
                    for c in 0..h {
                        want[tok * h + c] += wt * y[c];
                    }
                }
            }
            // e4m3 rounding of SiLU·up can flip a step where the f32 and f64 gate|up differ
            let err = rel_l2(&got, &want);
            let mut how = cfg
                .flat()
                .map_or(String::new(), |w| format!(" (flat, {w} warps)"));
            if cfg.paired() {
                how += " (SiLU·up in gate|up)";
            }
            eprintln!("moe gemv {name} t={t}{how}: rel L2 {err:.2e}");
            assert!(err < 1e-3, "moe gemv {name} t={t}{how}: rel L2 {err:e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routing and sampling

/// The routing fields of a config for the routing tests (the launches pass the same: groups `ng`,
/// of which `tg` kept, `k` of `e` experts, weights normalised and scaled by 2.5).
fn routing_config(ng: usize, tg: usize, e: usize, k: usize) -> model::Glm4MoeConfig {
    let mut cfg = model::Glm4MoeConfig::from_dir(&fixture("tiny-a")).unwrap();
    cfg.n_group = ng;
    cfg.topk_group = tg;
    cfg.n_routed_experts = e;
    cfg.num_experts_per_tok = k;
    cfg.norm_topk_prob = true;
    cfg.routed_scaling_factor = 2.5;
    cfg
}

#[test]
fn moe_topk_matches_host_routing() {
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (ng, tg, e, k) in [
        (4usize, 2usize, 16usize, 4usize),
        (1, 1, 128, 8),
        (8, 4, 256, 8),
    ] {
        let cfg = routing_config(ng, tg, e, k);
        let t = 37;
        let logits: Vec<f32> = (0..t * e).map(|_| rng.gen_range(-4.0..4.0)).collect();
        let bias: Vec<f32> = (0..e).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let want = model::moe::route(&logits, &bias, &cfg);
        let lb = DevBuf::from_host(&g, &logits).unwrap();
        let bb = DevBuf::from_host(&g, &bias).unwrap();
        let ids = DevBuf::zeros(&g, t * k * 4).unwrap();
        let wts = DevBuf::zeros(&g, t * k * 4).unwrap();
        model::launch!(g, moe_topk, (t as u32, 1, 1), (128, 1, 1), topk_smem(e);
            lb.p(), bb.p(), t as i32, e as i32, k as i32, ng as i32, tg as i32, 1i32, 2.5f32,
            ids.p(), wts.p())
        .unwrap();
        assert_routing(&g, &ids, &wts, &want, &format!("{ng} groups"));
    }
}

/// The device's top-k (`ids`, `wts`) equal to the host's: the same experts, weights within 1e-5.
fn assert_routing(g: &Gpu, ids: &DevBuf, wts: &DevBuf, want: &model::moe::Routing, what: &str) {
    let n = want.experts.len();
    let mut gi = vec![0i32; n];
    let mut gw = vec![0f32; n];
    g.download(ids.p(), &mut gi).unwrap();
    g.download(wts.p(), &mut gw).unwrap();
    let gi: Vec<usize> = gi.into_iter().map(|i| i as usize).collect();
    assert_eq!(gi, want.experts, "{what}: experts");
    for (a, b) in gw.iter().zip(&want.weights) {
        assert!((a - b).abs() < 1e-5, "{what}: weights {a} vs {b}");
    }
}

/// The rows of `x` (`h` columns) RMSNorm'd with weight `nw` in f64, and their router logits
/// against `gw [e, h]`: (logits [rows, e], normed rows).
fn norm_and_router(
    x: &[f32],
    h: usize,
    nw: &[f32],
    eps: f32,
    gw: &[f32],
    e: usize,
) -> (Vec<f32>, Vec<f32>) {
    let t = x.len() / h;
    let mut logits = vec![0f32; t * e];
    let mut normed = vec![0f32; t * h];
    for i in 0..t {
        let row = &x[i * h..(i + 1) * h];
        let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / h as f64;
        let rs = 1.0 / (ms + eps as f64).sqrt();
        for c in 0..h {
            normed[i * h + c] = (row[c] as f64 * rs * nw[c] as f64) as f32;
        }
        for j in 0..e {
            let dot: f64 = (0..h)
                .map(|c| row[c] as f64 * rs * nw[c] as f64 * gw[j * h + c] as f64)
                .sum();
            logits[i * e + j] = dot as f32;
        }
    }
    (logits, normed)
}

/// One token's routing begun in its O GEMV (`gemv_route_launch`: the router's products added to
/// `acc`) and finished in its flat gate|up (`MoeGemv::routed`), against the launches it replaces:
/// the O GEMV, `moe_route` and the flat gate|up on its normed row. The experts and weights equal
/// host routing of the row after the O GEMV, the layer's output the replaced launches' (up to
/// the order of f32 sums and an e4m3 rounding that flips with them), and `acc` and the count are
/// back at zero for the next layer (two rounds a format). BF16 weights: not taken.
#[test]
fn moe_routed_by_o_gemv_and_gate_up_matches_moe_route() {
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let (h, kin, inter, e, k, eps) = (256usize, 512usize, 128usize, 16usize, 4usize, 1e-5f32);
    let cfg = routing_config(1, 1, e, k);
    let acc = DevBuf::zeros(&g, e * 8).unwrap();
    let done = DevBuf::zeros(&g, 4).unwrap();
    let route_done = DevBuf::zeros(&g, 4).unwrap();
    let kinds = [
        ("bf16", Kind::Bf16),
        ("fp8-channel", Kind::Channel),
        ("fp8-block-128", Kind::Block(128, 128)),
    ];
    for (name, kind) in &kinds {
        let (_, _, [gu, dn, sgu, sdn]) = random_experts(&g, &mut rng, kind, e, h, inter);
        let o = GpuLinear::upload(&g, &[vec![&random_linear(&mut rng, kind, h, kin)]]).unwrap();
        let nw: Vec<f32> = (0..h).map(|_| rng.gen_range(0.5..1.5)).collect();
        let gw: Vec<f32> = (0..e * h).map(|_| rng.gen_range(-0.2..0.2)).collect();
        let bias: Vec<f32> = (0..e).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let [nwb, gwb, biasb] = [&nw, &gw, &bias].map(|v| DevBuf::from_host(&g, v).unwrap());
        let bufs = || {
            [k * 4, k * 4, h * 4, e * 4, (k + 1) * gu.n * 4].map(|b| DevBuf::zeros(&g, b).unwrap())
        };
        for round in 0..2 {
            let what = format!("{name}, round {round}");
            let a: Vec<f32> = (0..kin).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let x0: Vec<f32> = (0..h).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let ab = DevBuf::from_host(&g, &a).unwrap();
            let rows = ActRows::plain(ab.p(), kin, 1, kin);
            let moe = |ids: &DevBuf, wts: &DevBuf, routed: Option<Route>| MoeGemv {
                gate_up: &gu,
                down: &dn,
                shared: Some((&sgu, &sdn)),
                inter,
                k,
                ids: ids.p(),
                wts: wts.p(),
                flat: true,
                paired: true,
                routed,
            };
            // the replaced launches: the O GEMV, moe_route, the experts on the normed row
            let xa = DevBuf::from_host(&g, &x0).unwrap();
            let [ids_a, wts_a, xn, logits, f1] = bufs();
            assert!(gemv_launch(&g, &o, &rows, xa.p(), h, 1).unwrap());
            let mut x_post = vec![0f32; h];
            g.download(xa.p(), &mut x_post).unwrap();
            model::launch!(g, moe_route, (e as u32, 1, 1), (128, 1, 1), topk_smem(e);
                xa.p(), h as i32, nwb.p(), eps, xn.p(), gwb.p(), logits.p(), 1i32, e as i32,
                h as i32, biasb.p(), k as i32, 1i32, 1i32, 1i32, 2.5f32, ids_a.p(), wts_a.p(),
                route_done.p())
            .unwrap();
            let plain = moe(&ids_a, &wts_a, None);
            let pcfg = plain.config(&g, 1, h).expect("the MoE GEMV applies");
            plain
                .launch(&g, &pcfg, 1, (xn.p(), h), f1.p(), xa.p())
                .unwrap();
            // routed by the O GEMV and the gate|up
            let xb = DevBuf::from_host(&g, &x0).unwrap();
            let [ids_b, wts_b, _, _, f1] = bufs();
            let route = Route {
                gw: gwb.p(),
                nw: nwb.p(),
                bias: biasb.p(),
                acc: acc.p(),
                ids: ids_b.p(),
                wts: wts_b.p(),
                done: done.p(),
                eps,
                rscale: 2.5,
                e: e as i32,
                k: k as i32,
                norm: 1,
            };
            let ran = gemv_route_launch(&g, &o, &rows, xb.p(), &route).unwrap();
            if matches!(kind, Kind::Bf16) {
                assert!(!ran, "{what}: BF16 weights are not taken");
                break;
            }
            assert!(ran, "{what}: the O GEMV's part not taken");
            let routed = moe(&ids_b, &wts_b, Some(route));
            let rcfg = routed.config(&g, 1, h).expect("the MoE GEMV applies");
            assert!(rcfg.routed(), "{what}: the gate|up's part not taken");
            routed.launch(&g, &rcfg, 1, (0, h), f1.p(), xb.p()).unwrap();
            let (want_logits, _) = norm_and_router(&x_post, h, &nw, eps, &gw, e);
            let want = model::moe::route(&want_logits, &bias, &cfg);
            assert_routing(&g, &ids_b, &wts_b, &want, &what);
            let (mut ya, mut yb) = (vec![0f32; h], vec![0f32; h]);
            g.download(xa.p(), &mut ya).unwrap();
            g.download(xb.p(), &mut yb).unwrap();
            let err = rel_l2(&yb, &ya);
            assert!(err < 1e-3, "{what}: layer output, rel L2 {err:e}");
            let mut left = vec![0u64; e];
            g.download(acc.p(), &mut left).unwrap();
            let mut count = [0i32];
            g.download(done.p(), &mut count).unwrap();
            assert!(
                left.iter().all(|v| *v == 0) && count[0] == 0,
                "{what}: acc {left:?}, count {count:?}"
            );
            eprintln!("O GEMV + gate|up routing {what}: rel L2 {err:.2e}");
        }
    }
}

/// `moe_route` (post-attention RMSNorm folded into the router, the normed rows written, then
/// top-k in the last block) against host routing of the host-normed rows; launched twice per
/// case, since its block counter must be back at zero for the next launch.
#[test]
fn moe_route_matches_host_routing() {
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let (e, k, h, eps) = (128usize, 8usize, 512usize, 1e-5f32);
    let cfg = routing_config(1, 1, e, k);
    let done = DevBuf::zeros(&g, 4).unwrap();
    for t in [1usize, 3, 11] {
        let x: Vec<f32> = (0..t * h).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let nw: Vec<f32> = (0..h).map(|_| rng.gen_range(0.5..1.5)).collect();
        let gw: Vec<f32> = (0..e * h).map(|_| rng.gen_range(-0.2..0.2)).collect();
        let bias: Vec<f32> = (0..e).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let (logits, normed) = norm_and_router(&x, h, &nw, eps, &gw, e);
        let want = model::moe::route(&logits, &bias, &cfg);
        let bufs = [&x, &nw, &gw, &bias].map(|v| DevBuf::from_host(&g, v).unwrap());
        let out = DevBuf::zeros(&g, t * e * 4).unwrap();
        let xn = DevBuf::zeros(&g, t * h * 4).unwrap();
        for round in 0..2 {
            let ids = DevBuf::zeros(&g, t * k * 4).unwrap();
            let wts = DevBuf::zeros(&g, t * k * 4).unwrap();
            model::launch!(g, moe_route, (e as u32, 1, 1), (128, 1, 1), topk_smem(e);
                bufs[0].p(), h as i32, bufs[1].p(), eps, xn.p(), bufs[2].p(), out.p(), t as i32,
                e as i32, h as i32, bufs[3].p(), k as i32, 1i32, 1i32, 1i32, 2.5f32, ids.p(),
                wts.p(), done.p())
            .unwrap();
            assert_routing(
                &g,
                &ids,
                &wts,
                &want,
                &format!("{t} tokens, launch {round}"),
            );
            let mut got = vec![0f32; t * h];
            g.download(xn.p(), &mut got).unwrap();
            let err = rel_l2(&got, &normed);
            assert!(err < 1e-6, "{t} tokens: normed rows, rel L2 {err:e}");
        }
    }
}

/// Router logits in f32 against f64 host products, on both layouts (few tokens: one block per 8
/// tokens and expert; many: the tiled GEMM), with shapes that are not multiples of the tiles.
#[test]
fn router_logits_match_host_products() {
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let many = ROUTER_GEMM_MIN_TOKENS;
    for (t, e, h) in [
        (5usize, 40usize, 96usize),
        (129, 128, 4096),
        (many + 5, 40, 96),
        (many + 3, 128, 1024),
    ] {
        let x: Vec<f32> = (0..t * h).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let w: Vec<f32> = (0..e * h).map(|_| rng.gen_range(-0.05..0.05)).collect();
        let (xb, wb) = (
            DevBuf::from_host(&g, &x).unwrap(),
            DevBuf::from_host(&g, &w).unwrap(),
        );
        let out = DevBuf::zeros(&g, t * e * 4).unwrap();
        router_launch(&g, xb.p(), wb.p(), out.p(), t, e, h).unwrap();
        let mut got = vec![0f32; t * e];
        g.download(out.p(), &mut got).unwrap();
        let mut worst = 0f64;
        for i in 0..t {
            for j in 0..e {
                let want: f64 = (0..h)
                    .map(|k| x[i * h + k] as f64 * w[j * h + k] as f64)
                    .sum();
                let scale: f64 = (0..h)
                    .map(|k| (x[i * h + k] as f64 * w[j * h + k] as f64).abs())
                    .sum();
                worst = worst.max((got[i * e + j] as f64 - want).abs() / scale.max(1e-30));
            }
        }
        assert!(
            worst < 1e-5,
            "{t} tokens, {e} experts, {h}: worst {worst:e}"
        );
    }
}

/// The sampling kernels against their host twin: greedy and temperature rows, and rows truncated
/// by top-k, top-p, min-p and their combinations (the thresholds of `sample_thresh` against
/// `truncation_threshold`, then the drawn ids), over a vocabulary with padded columns.
#[test]
fn sampling_kernel_matches_host_twin() {
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let v = 1000usize;
    let trunc: [(u32, f32, f32); 10] = [
        (0, 1.0, 0.0),
        (1, 1.0, 0.0),
        (40, 1.0, 0.0),
        (0, 0.95, 0.0),
        (0, 0.3, 0.0),
        (0, 1.0, 0.05),
        (50, 0.9, 0.0),
        (7, 0.5, 0.01),
        (2000, 0.99, 0.0),
        (0, 0.8, 0.2),
    ];
    let mut specs: Vec<DeviceSampling> = Vec::new();
    for (i, &(top_k, top_p, min_p)) in trunc.iter().enumerate() {
        for temperature in [0.0, 0.3 + i as f32 * 0.15, 1.7] {
            specs.push(DeviceSampling {
                temperature,
                seed: rng.gen(),
                top_k,
                top_p,
                min_p,
            });
        }
    }
    let r = specs.len();
    // peaked rows (a few large logits) and flat ones
    let logits: Vec<f32> = (0..r * v)
        .map(|i| {
            let x: f32 = rng.gen_range(-5.0..5.0);
            if (i / v).is_multiple_of(2) && rng.gen_range(0..50) == 0 {
                x + 8.0
            } else {
                x
            }
        })
        .collect();
    let col = |f: fn(&DeviceSampling) -> f32| specs.iter().map(f).collect::<Vec<f32>>();
    let lb = DevBuf::from_host(&g, &logits).unwrap();
    let tb = DevBuf::from_host(&g, &col(|s| s.temperature)).unwrap();
    let sb = DevBuf::from_host(&g, &specs.iter().map(|s| s.seed).collect::<Vec<_>>()).unwrap();
    let kb = DevBuf::from_host(
        &g,
        &specs.iter().map(|s| s.top_k as i32).collect::<Vec<_>>(),
    )
    .unwrap();
    let pb = DevBuf::from_host(&g, &col(|s| s.top_p)).unwrap();
    let mb = DevBuf::from_host(&g, &col(|s| min_p_log(s.min_p))).unwrap();
    let out = DevBuf::zeros(&g, r * 4).unwrap();
    let part = DevBuf::zeros(&g, sample_part_bytes(r)).unwrap();
    let valid = v - 10;
    for truncate in [false, true] {
        sample_launch(
            &g,
            (lb.p(), v, valid),
            SampleSpecs {
                temps: tb.p(),
                seeds: sb.p(),
                trunc: truncate.then(|| [kb.p(), pb.p(), mb.p()]),
            },
            part.p(),
            out.p(),
            r,
        )
        .unwrap();
        let mut got = vec![0i32; r];
        g.download(out.p(), &mut got).unwrap();
        let mut thr = vec![0f32; r];
        if truncate {
            g.download(part.at(sample_part_bytes(r) - r * 4), &mut thr)
                .unwrap();
        }
        for i in 0..r {
            let row = &logits[i * v..(i + 1) * v];
            let s = if truncate {
                specs[i]
            } else {
                DeviceSampling {
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    ..specs[i]
                }
            };
            if truncate {
                let want = truncation_threshold(row, valid, s);
                assert_eq!(thr[i], want, "row {i} threshold ({s:?})");
            }
            let want = sample_host(row, valid, s);
            assert_eq!(got[i] as u32, want, "row {i} ({s:?})");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The whole model

fn opts() -> GpuOptions {
    GpuOptions {
        max_num_batched_tokens: 512,
        max_num_seqs: 8,
        max_model_len: 512,
        block_size: 16,
        num_blocks: Some(96),
        ..Default::default()
    }
}

fn logits_of(out: StepOutput) -> Vec<f32> {
    match out {
        StepOutput::Logits { data, .. } => data,
        other => panic!("expected logits, got {other:?}"),
    }
}

/// Worst relative L2 errors of one fixture on the GPU.
#[derive(Debug, Default)]
struct Errors {
    /// Last-position prefill logits against transformers (the dequantized model for FP8).
    prefill_vs_ref: f64,
    /// The same against the CPU model (W8A8 for FP8 checkpoints, as the GPU computes).
    prefill_vs_cpu: f64,
    /// Teacher-forced decode steps against the CPU model.
    decode_vs_cpu: f64,
    /// Decode steps whose argmax equals the CPU model's, and steps.
    agree: usize,
    steps: usize,
}

/// Prefill in two chunks, then 8 teacher-forced decode steps along the reference greedy path,
/// comparing every sampled row with the CPU model (same weights; W8A8 for FP8 checkpoints).
fn check_model(name: &str) -> Errors {
    let dir = fixture(name);
    let r = reference(name);
    let mut gm = GpuModel::load(&dir, &opts()).unwrap();
    let cpu = Glm4Moe::<Cpu>::load(
        &dir,
        &Default::default(),
        &LoadOptions {
            fp8_activations: Fp8Activations::Dynamic,
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    let mut e = Errors::default();
    for p in r["prompts"].as_array().unwrap() {
        let prompt = ids(&p["token_ids"]);
        let greedy = ids(&p["greedy"]);
        let table: Vec<u32> = (0..((prompt.len() + 10).div_ceil(16)) as u32)
            .rev()
            .map(|b| b + 3)
            .collect();
        let mut kv = cpu.new_kv_cache(96, 16).unwrap();
        let split = prompt.len() / 2;
        if split > 0 {
            let seq = [SeqInput {
                tokens: &prompt[..split],
                start_pos: 0,
                block_table: &table,
                sample: false,
            }];
            assert_eq!(gm.step(&seq, None).unwrap(), StepOutput::Nothing);
            cpu.forward(&seq, &mut kv).unwrap();
        }
        let seq = [SeqInput {
            tokens: &prompt[split..],
            start_pos: split,
            block_table: &table,
            sample: true,
        }];
        let got = logits_of(gm.step(&seq, None).unwrap());
        let want: Vec<f32> = common::to_f32(cpu.forward(&seq, &mut kv).unwrap().logits.unwrap());
        let (vs_cpu, vs_ref) = (
            rel_l2(&got, &want),
            rel_l2(&got, &floats(&p["last_logits"])),
        );
        e.prefill_vs_cpu = e.prefill_vs_cpu.max(vs_cpu);
        e.prefill_vs_ref = e.prefill_vs_ref.max(vs_ref);
        let mut worst_decode = 0f64;
        for (i, &tok) in greedy.iter().take(8).enumerate() {
            let pos = prompt.len() + i;
            let one = [tok];
            let seq = [SeqInput {
                tokens: &one,
                start_pos: pos,
                block_table: &table,
                sample: true,
            }];
            let got = logits_of(gm.step(&seq, None).unwrap());
            let want = common::to_f32(cpu.forward(&seq, &mut kv).unwrap().logits.unwrap());
            worst_decode = worst_decode.max(rel_l2(&got, &want));
            let am = |v: &[f32]| {
                v.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0
            };
            e.agree += usize::from(am(&got) == am(&want));
            e.steps += 1;
        }
        e.decode_vs_cpu = e.decode_vs_cpu.max(worst_decode);
        eprintln!(
            "{name}: prompt {:3} tokens: prefill rel L2 vs transformers {vs_ref:.3e}, vs CPU {vs_cpu:.3e}; decode vs CPU worst {worst_decode:.3e}",
            prompt.len()
        );
    }
    eprintln!("{name}: {e:?}");
    e
}

// BF16 operands, BF16 KV cache: the bound is BF16 rounding of activations (2^-8 relative per
// element, averaged over the reductions), far above the f32 CPU bound.
const BF16_TOL: f64 = 3e-2;
// W8A8 against the dequantized reference: the CPU W8A8 emulation's documented bound
// (ops/perf/parity.md). Against the CPU's own W8A8 the two differ by E4M3 rounding flips that
// BF16 differences upstream trigger, each a 1/16 step; decode steps are checked by argmax.
const W8A8_TOL: f64 = 0.08;

fn check_bf16(name: &str) {
    let e = check_model(name);
    assert!(e.prefill_vs_ref < BF16_TOL, "{name}: {e:?}");
    assert!(e.prefill_vs_cpu < BF16_TOL, "{name}: {e:?}");
    assert!(e.decode_vs_cpu < BF16_TOL, "{name}: {e:?}");
    assert_eq!(e.agree, e.steps, "{name}: {e:?}");
}

fn check_fp8(name: &str) {
    let e = check_model(name);
    assert!(e.prefill_vs_ref < W8A8_TOL, "{name}: {e:?}");
    assert!(4 * e.agree >= 3 * e.steps, "{name}: {e:?}");
}

/// The routed experts as one cuBLASLt GEMM per expert (`set_cublaslt_experts`) give the logits
/// of our grouped kernel: a prefill of 130 tokens, then a decode step, on BF16 and FP8 weights.
#[test]
fn cublaslt_experts_match_the_grouped_kernel() {
    for (name, tol) in [("tiny-b", 2e-3), ("tiny-b-fp8", W8A8_TOL)] {
        let mut gm = GpuModel::load(&fixture(name), &opts()).unwrap();
        let prompt: Vec<u32> = (0..130).map(|i| (i * 37 + 5) % 250).collect();
        let table: Vec<u32> = (0..10).collect();
        let prefill = [SeqInput {
            tokens: &prompt,
            start_pos: 0,
            block_table: &table,
            sample: true,
        }];
        let next = [77u32];
        let decode = [SeqInput {
            tokens: &next,
            start_pos: prompt.len(),
            block_table: &table,
            sample: true,
        }];
        let run = |gm: &mut GpuModel| {
            let a = logits_of(gm.step(&prefill, None).unwrap());
            let b = logits_of(gm.step(&decode, None).unwrap());
            (a, b)
        };
        let (want_p, want_d) = run(&mut gm);
        if !gm.set_cublaslt_experts(Some(1)) {
            assert_eq!(std::env::var("GLMFLEET_CUBLASLT").as_deref(), Ok("0"));
            return;
        }
        let (got_p, got_d) = run(&mut gm);
        let (ep, ed) = (rel_l2(&got_p, &want_p), rel_l2(&got_d, &want_d));
        eprintln!(
            "{name}: cuBLASLt experts vs grouped kernel: prefill rel L2 {ep:.2e}, decode {ed:.2e}"
        );
        assert!(
            ep < tol && ed < tol,
            "{name}: prefill {ep:e}, decode {ed:e}"
        );
    }
}

/// Decode attention with its key splits merged in a thread-block cluster's shared memory and
/// through global memory by their last block gives the same logits, for a context of one key tile
/// a split (300 keys) and one of several (1,500: the kernel's four-warp path) in one batch.
#[test]
fn attention_cluster_merge_equals_global_merge() {
    let o = GpuOptions {
        max_num_batched_tokens: 2048,
        max_model_len: 2048,
        num_blocks: Some(160),
        ..opts()
    };
    let mut gm = GpuModel::load(&fixture("tiny-b"), &o).unwrap();
    assert!(gm.gpu().clusters, "the parity tests run on sm_90 or newer");
    let prompts: [Vec<u32>; 2] = [
        (0..1500).map(|i| (i * 37 + 5) % 250).collect(),
        (0..300).map(|i| (i * 11 + 3) % 250).collect(),
    ];
    let tables: [Vec<u32>; 2] = [(0..95).collect(), (100..120).collect()];
    gm.step(&prompt_seqs(&prompts, &tables), None).unwrap();
    let next = [[77u32], [78u32]];
    let decode = decode_seqs(&next, &prompts, &tables);
    let [cl, global] = [true, false].map(|on| {
        gm.set_attn_cluster(on);
        logits_of(gm.step(&decode, None).unwrap())
    });
    let err = rel_l2(&cl, &global);
    eprintln!("attention merged in a cluster vs through memory: rel L2 {err:.2e}");
    assert!(err < 1e-4, "rel L2 {err:e}");
}

#[test]
fn gpu_tiny_a_matches_transformers_and_cpu() {
    check_bf16("tiny-a");
}

#[test]
fn gpu_tiny_b_matches_transformers_and_cpu() {
    check_bf16("tiny-b");
}

#[test]
fn gpu_fp8_channel_w8a8_within_tolerance() {
    check_fp8("tiny-b-fp8");
}

#[test]
fn gpu_fp8_block_w8a8_within_tolerance() {
    check_fp8("tiny-b-fp8-block");
}

/// Decode steps replayed from CUDA graphs give the same tokens as eager launches, for a batch that
/// is padded up to its bucket (3 -> 4), with greedy and seeded sampling.
#[test]
fn graph_replay_equals_eager() {
    let dir = fixture("tiny-b");
    let run = |graphs: bool| -> Vec<Vec<u32>> {
        let mut gm = GpuModel::load(
            &dir,
            &GpuOptions {
                cuda_graphs: graphs,
                ..opts()
            },
        )
        .unwrap();
        let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 13, 2], vec![7], vec![100, 3, 3, 3, 3, 3, 40]];
        let tables: Vec<Vec<u32>> = (0..3u32)
            .map(|i| (0..4u32).map(|b| i * 4 + b).collect())
            .collect();
        let mut toks: Vec<Vec<u32>> = prompts.clone();
        let sp: Vec<DeviceSampling> = (0..3)
            .map(|i| DeviceSampling {
                temperature: if i == 1 { 0.8 } else { 0.0 },
                seed: 99,
                ..DeviceSampling::GREEDY
            })
            .collect();
        // prefill all three in one mixed step
        let seqs = prompt_seqs(&prompts, &tables);
        let StepOutput::Tokens(first) = gm.step(&seqs, Some(&sp)).unwrap() else {
            panic!()
        };
        for (t, f) in toks.iter_mut().zip(first) {
            t.push(f);
        }
        for step in 0..10 {
            let last: Vec<[u32; 1]> = toks.iter().map(|t| [*t.last().unwrap()]).collect();
            let seqs: Vec<SeqInput> = (0..3)
                .map(|i| SeqInput {
                    tokens: &last[i],
                    start_pos: toks[i].len() - 1,
                    block_table: &tables[i],
                    sample: true,
                })
                .collect();
            let sp: Vec<DeviceSampling> = sp
                .iter()
                .map(|s| DeviceSampling {
                    seed: s.seed + step,
                    ..*s
                })
                .collect();
            let StepOutput::Tokens(next) = gm.step(&seqs, Some(&sp)).unwrap() else {
                panic!()
            };
            for (t, n) in toks.iter_mut().zip(next) {
                t.push(n);
            }
        }
        if graphs {
            assert_eq!(
                gm.graph_buckets(),
                vec![4],
                "one graph for the padded bucket"
            );
        }
        toks
    };
    assert_eq!(run(true), run(false));
}

/// A step that drew on the device leaves its logits readable row by row (`last_logits`, for the
/// host-sampled rows of a mixed batch): the eager prefill and a graph-replayed decode step give
/// the rows a logits step computes, and rows past the step's, or after a logits step, are errors.
#[test]
fn last_logits_are_the_sampled_steps_logits() {
    let dir = fixture("tiny-b");
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 13, 2], vec![7], vec![100, 3, 3, 3, 3, 40]];
    let tables: Vec<Vec<u32>> = (0..3u32)
        .map(|i| (0..4u32).map(|b| i * 4 + b).collect())
        .collect();
    let next: Vec<[u32; 1]> = vec![[11], [12], [13]];
    let decode = decode_seqs(&next, &prompts, &tables);
    let sp = vec![DeviceSampling::GREEDY; 3];
    let opts = GpuOptions {
        cuda_graphs: true,
        ..opts()
    };
    let mut plain = GpuModel::load(&dir, &opts).unwrap();
    let want_prefill = logits_of(plain.step(&prompt_seqs(&prompts, &tables), None).unwrap());
    let want_decode = logits_of(plain.step(&decode, None).unwrap());
    assert!(plain.last_logits(&[0]).is_err(), "rows after a logits step");

    let mut gm = GpuModel::load(&dir, &opts).unwrap();
    let v = gm.config.vocab_size;
    let rows = |all: &[f32], idx: &[usize]| -> Vec<f32> {
        idx.iter()
            .flat_map(|&r| all[r * v..(r + 1) * v].to_vec())
            .collect()
    };
    for (seqs, want) in [
        (prompt_seqs(&prompts, &tables), &want_prefill),
        (decode.clone(), &want_decode),
    ] {
        gm.step(&seqs, Some(&sp)).unwrap();
        for idx in [vec![2, 0], vec![1]] {
            let got = gm.last_logits(&idx).unwrap();
            let err = rel_l2(&got, &rows(want, &idx));
            assert!(err < 1e-5, "rows {idx:?}: rel L2 {err:.2e}");
        }
        assert!(gm.last_logits(&[3]).is_err(), "a row past the step's");
    }
    assert_eq!(
        gm.graph_buckets(),
        vec![4],
        "the decode step replayed a graph"
    );
}

/// Bad batches are errors, not device faults.
#[test]
fn gpu_rejects_bad_batches() {
    let mut gm = GpuModel::load(&fixture("tiny-b"), &opts()).unwrap();
    let table = [0u32, 1];
    let tok = [1u32];
    let cases: [(&[u32], usize, &[u32], &str); 3] = [
        (&[600], 0, &table, "vocabulary"),
        (&tok, 40, &table, "block table"),
        (&tok, 0, &[1000], "outside the cache"),
    ];
    for (tokens, start_pos, block_table, want) in cases {
        let seq = [SeqInput {
            tokens,
            start_pos,
            block_table,
            sample: true,
        }];
        let e = gm.step(&seq, None).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    // still serves after errors
    let out = gm
        .step(
            &[SeqInput {
                tokens: &tok,
                start_pos: 0,
                block_table: &table,
                sample: true,
            }],
            None,
        )
        .unwrap();
    assert!(matches!(out, StepOutput::Logits { rows: 1, .. }));
}

/// `--kv-cache-dtype fp8`: twice the blocks in the same bytes, and logits within a measured distance
/// of the BF16 cache (prefill and teacher-forced decode on tiny-b).
#[test]
fn fp8_kv_cache_doubles_capacity_within_tolerance() {
    let dir = fixture("tiny-b");
    let r = reference("tiny-b");
    let mk = |fp8: bool| {
        GpuModel::load(
            &dir,
            &GpuOptions {
                kv_fp8: fp8,
                num_blocks: None,
                kv_cache_bytes: Some(1 << 20),
                ..opts()
            },
        )
        .unwrap()
    };
    let (mut bf, mut f8, mut f8h) = (mk(false), mk(true), mk(true));
    // the f16-widening attention (attn_f8h_*) beside the bf16-widening one
    f8h.set_fp8_attn_f16(true);
    f8.set_fp8_attn_f16(false);
    assert_eq!(f8.num_blocks(), 2 * bf.num_blocks());
    let (mut worst, mut agree, mut steps) = (0f64, 0, 0);
    let (mut worst_h, mut agree_h, mut h_vs_b) = (0f64, 0, 0f64);
    for p in r["prompts"].as_array().unwrap() {
        let prompt = ids(&p["token_ids"]);
        let table: Vec<u32> = (0..((prompt.len() + 10).div_ceil(16)) as u32).collect();
        let seq = [SeqInput {
            tokens: &prompt,
            start_pos: 0,
            block_table: &table,
            sample: true,
        }];
        let (a, b, h) = (
            logits_of(bf.step(&seq, None).unwrap()),
            logits_of(f8.step(&seq, None).unwrap()),
            logits_of(f8h.step(&seq, None).unwrap()),
        );
        worst = worst.max(rel_l2(&b, &a));
        worst_h = worst_h.max(rel_l2(&h, &a));
        h_vs_b = h_vs_b.max(rel_l2(&h, &b));
        for (i, &tok) in ids(&p["greedy"]).iter().take(8).enumerate() {
            let one = [tok];
            let seq = [SeqInput {
                tokens: &one,
                start_pos: prompt.len() + i,
                block_table: &table,
                sample: true,
            }];
            let (a, b, h) = (
                logits_of(bf.step(&seq, None).unwrap()),
                logits_of(f8.step(&seq, None).unwrap()),
                logits_of(f8h.step(&seq, None).unwrap()),
            );
            worst = worst.max(rel_l2(&b, &a));
            worst_h = worst_h.max(rel_l2(&h, &a));
            h_vs_b = h_vs_b.max(rel_l2(&h, &b));
            let am = |v: &[f32]| {
                v.iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .unwrap()
                    .0
            };
            agree += usize::from(am(&a) == am(&b));
            agree_h += usize::from(am(&a) == am(&h));
            steps += 1;
        }
    }
    eprintln!(
        "fp8 KV: {} blocks vs {} (bf16); worst rel L2 vs the BF16 cache {worst:.3e}; decode argmax {agree}/{steps}",
        f8.num_blocks(),
        bf.num_blocks()
    );
    eprintln!(
        "fp8 KV, f16 widening: worst rel L2 vs the BF16 cache {worst_h:.3e}, vs the bf16 widening {h_vs_b:.3e}; decode argmax {agree_h}/{steps}"
    );
    assert!(worst < 0.1, "fp8 KV rel L2 {worst:e}");
    assert!(4 * agree >= 3 * steps, "fp8 KV argmax {agree}/{steps}");
    assert!(worst_h < 0.1, "fp8 KV, f16 widening: rel L2 {worst_h:e}");
    assert!(
        4 * agree_h >= 3 * steps,
        "fp8 KV, f16 widening: argmax {agree_h}/{steps}"
    );
    // the two widenings differ only by bf16 against f16 rounding of Q·scale and P
    assert!(h_vs_b < BF16_TOL, "f16 vs bf16 widening: rel L2 {h_vs_b:e}");
}

// ---------------------------------------------------------------------------------------------
// Speculative decoding: the verify step and the MTP draft layer

/// The verify step's logits for every drafted position, the MTP pass over a whole history (its
/// hidden inputs from the verify step, the prompt split in two passes with the first pass's last
/// row carried through the kept pool, as a chunked prefill does), and a further draft step from the
/// pass's own output, each against the CPU model on tiny-a (BF16 tolerance).
#[test]
fn gpu_mtp_draft_matches_cpu() {
    let dir = fixture("tiny-a");
    let mut gm = GpuModel::load(
        &dir,
        &GpuOptions {
            speculative_tokens: 2,
            ..opts()
        },
    )
    .unwrap();
    assert!(gm.has_mtp());
    let cpu = Glm4Moe::<Cpu>::load(
        &dir,
        &Default::default(),
        &LoadOptions {
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(cpu.has_mtp());
    let history: Vec<u32> = (0..41).map(|i| (i * 37 + 5) % 250).collect();
    let n = history.len();
    let table: Vec<u32> = (0..4).map(|b| 10 + 2 * b).collect();
    let mut kv = cpu.new_kv_cache(96, 16).unwrap();
    // Target over history[..n - 1]: logits for its last three positions (a verify of two drafts).
    let target = [SeqInput {
        tokens: &history[..n - 1],
        start_pos: 0,
        block_table: &table,
        sample: true,
    }];
    let got = logits_of(gm.verify_step(&target, &[3], false).unwrap());
    let out = cpu.forward_rows(&target, &[3], &mut kv).unwrap();
    let want = common::to_f32(out.logits.unwrap());
    let verify_err = rel_l2(&got, &want);
    // MTP over positions 0..n-2 in two passes; the first pass's last row is kept (slot 3) and
    // feeds the second pass, whose first token is the first pass's missing one.
    let split = 17;
    let first = [SeqInput {
        tokens: &history[1..split],
        start_pos: 0,
        block_table: &table,
        sample: false,
    }];
    let hidden: Vec<HiddenRow> = (0..split - 1).map(HiddenRow::Verified).collect();
    assert!(
        gm.mtp_step(&first, &hidden[..split - 2], &[], false)
            .is_err(),
        "row count mismatch"
    );
    let none = gm.mtp_step(&first[..], &hidden, &[], false).unwrap();
    assert_eq!(none, StepOutput::Nothing);
    gm.keep_rows(KeepFrom::Verified, &[(split - 1, 3)]).unwrap();
    let second = [SeqInput {
        tokens: &history[split..],
        start_pos: split - 1,
        block_table: &table,
        sample: true,
    }];
    let hidden: Vec<HiddenRow> = std::iter::once(HiddenRow::Kept(3))
        .chain((split..n - 1).map(HiddenRow::Verified))
        .collect();
    let last = n - split - 1;
    let draft = logits_of(gm.mtp_step(&second, &hidden, &[last], false).unwrap());
    let (cpu_logits, y) = cpu
        .mtp_forward(
            &[SeqInput {
                tokens: &history[1..],
                start_pos: 0,
                block_table: &table,
                sample: true,
            }],
            out.hidden,
            &mut kv,
        )
        .unwrap();
    let want_draft = common::to_f32(cpu_logits.narrow(0, n - 2, 1));
    let draft_err = rel_l2(&draft, &want_draft);
    // A further draft step from the pass's output row, kept in the pool's last slot.
    let slot = gm.mtp_slots() - 1;
    gm.keep_rows(KeepFrom::MtpOutput, &[(last, slot)]).unwrap();
    let d1 = [7u32];
    let step = [SeqInput {
        tokens: &d1,
        start_pos: n - 1,
        block_table: &table,
        sample: true,
    }];
    let next = logits_of(
        gm.mtp_step(&step, &[HiddenRow::Kept(slot)], &[0], false)
            .unwrap(),
    );
    let (want_next, _) = cpu
        .mtp_forward(&step, y.narrow(0, n - 2, 1), &mut kv)
        .unwrap();
    let next_err = rel_l2(&next, &common::to_f32(want_next));
    eprintln!(
        "tiny-a MTP: verify rel L2 {verify_err:.3e}, draft {draft_err:.3e}, next draft {next_err:.3e}"
    );
    assert!(verify_err < BF16_TOL, "verify {verify_err}");
    assert!(draft_err < BF16_TOL, "draft {draft_err}");
    assert!(next_err < BF16_TOL, "next draft {next_err}");
    // Greedy draws on the device: each id is its row's argmax (rerunning a step rewrites the
    // same KV, so the rows are the ones above up to rounding).
    let vocab = gm.config.vocab_size;
    let near_max = |ids: StepOutput, rows: &[f32]| {
        let StepOutput::Tokens(ids) = ids else {
            panic!("expected ids, got {ids:?}")
        };
        assert_eq!(ids.len(), rows.len() / vocab);
        for (id, row) in ids.iter().zip(rows.chunks(vocab)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let scale = row.iter().map(|x| x.abs()).fold(0f32, f32::max);
            assert!(
                row[*id as usize] >= max - 1e-3 * scale,
                "id {id}: {} vs {max}",
                row[*id as usize]
            );
        }
    };
    near_max(gm.verify_step(&target, &[3], true).unwrap(), &got);
    near_max(
        gm.mtp_step(&step, &[HiddenRow::Kept(slot)], &[0], true)
            .unwrap(),
        &next,
    );
    // Out-of-range inputs are errors.
    assert!(gm.keep_rows(KeepFrom::Verified, &[(0, 10_000)]).is_err());
    assert!(gm
        .mtp_step(&step, &[HiddenRow::Kept(10_000)], &[0], false)
        .is_err());
    assert!(gm
        .mtp_step(&step, &[HiddenRow::Kept(slot)], &[1], false)
        .is_err());
}

/// A checkpoint without an MTP layer cannot draft: a clear error at load.
#[test]
fn gpu_speculation_needs_an_mtp_layer() {
    let e = GpuModel::load(
        &fixture("tiny-b"),
        &GpuOptions {
            speculative_tokens: 1,
            ..opts()
        },
    )
    .err()
    .expect("tiny-b has no MTP layer");
    assert!(e.to_string().contains("MTP layer"), "{e}");
}
