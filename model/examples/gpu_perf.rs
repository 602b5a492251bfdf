//! GPU performance of the engine on a full-size config with dummy weights (feature `gpu`):
//! kernel-level (each GEMM shape of the model at M = 1…8192 beside cuBLASLt and the decode GEMV,
//! grouped expert GEMMs, the MoE GEMV, LM head) against the weight-read and FP8-peak rooflines, and
//! model-level (decode step at batch 1/2/4/8/16/64/256, eager and replayed from CUDA graphs, with
//! and without the GEMVs up to batch 8; prefill tokens/s at 8k). `ops/perf/gpu.sh` runs it on the H200
//! together with the PyTorch/cuBLAS counterparts; the notes are in `ops/perf/`.
//!
//! Usage: gpu_perf CONFIG_DIR [OUT.json] [--kernels-only | --model-only | --ncu-step B,B,... |
//! --sweep | --sweep-defaults | --trace-step B,B,...]
//!
//! `--sweep` times the graph-replayed decode step at batch 1–64 under each setting of the switches
//! that need no restart (attention key splits, PDL in graphs, GEMV rows and tokens), in one process;
//! `--sweep-defaults` the defaults only (twice), for comparing kernel builds across processes.
//!
//! `--ncu-step` runs one eager decode step per batch size (context 1,024) between
//! cuProfilerStart/Stop, for `ncu --profile-from-start off` to time every kernel of a step.
//!
//! `--trace-step` (with `GLMFLEET_TRACE=1`: kernels built with timeline marks) replays one decode
//! step per batch size (context 1,024) from its graph and writes the kernels' timeline records to
//! OUT-bB.bin (little-endian u64 words, `Gpu::trace_take`) for `ops/perf/trace_summary.py`.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use model::gpu::weights::{GpuLinear, WeightFormat};
use model::gpu::{
    gemm_launch, gemv_launch, ActRows, DevBuf, Gpu, GpuModel, GpuOptions, HiddenRow, KeepFrom,
    MoeGemv, StepOutput,
};
use model::sample::DeviceSampling;
use model::{Glm4MoeConfig, SeqInput};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Measured device copy bandwidth (bytes read + written) and FP8 dense peak on the H200
/// (`../shared/reference/h200-baseline.md`).
const HBM_TBS: f64 = 4.3;
const FP8_PEAK_TFLOPS: f64 = 1426.0;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .ok_or("usage: gpu_perf CONFIG_DIR [OUT.json] [--kernels-only|--model-only]")?;
    let out = args.get(2).filter(|a| !a.starts_with("--")).cloned();
    let kernels = !args.iter().any(|a| a == "--model-only");
    let whole = !args.iter().any(|a| a == "--kernels-only");
    let cfg = Glm4MoeConfig::from_dir(std::path::Path::new(dir))?;
    let (ncu, trace) = (
        batch_list(&args, "--ncu-step")?,
        batch_list(&args, "--trace-step")?,
    );
    match (ncu, trace) {
        (Some(_), Some(_)) => return Err("--ncu-step and --trace-step are separate runs".into()),
        (Some(batches), None) => return ncu_steps(&cfg, &batches),
        (None, Some(batches)) => {
            let out = out.ok_or("--trace-step needs an output path prefix")?;
            return trace_steps(&cfg, &batches, &out);
        }
        (None, None) => {}
    }
    let defaults_only = args.iter().any(|a| a == "--sweep-defaults");
    if defaults_only || args.iter().any(|a| a == "--sweep") {
        let rows = decode_sweep(&cfg, defaults_only)?;
        if let Some(path) = out {
            std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        }
        return Ok(());
    }
    let mut report = json!({});
    if kernels {
        let g = Gpu::new(0)?;
        println!("device: {} ({} SMs)", g.name, g.sm_count);
        report["kernels"] = kernel_bench(&g, &cfg)?;
        drop(g);
    }
    if whole {
        report["model"] = model_bench(&cfg)?;
    }
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {path}");
    }
    Ok(())
}

/// The batch sizes after `flag` (e.g. `--ncu-step 1,64`), when it is given.
fn batch_list(args: &[String], flag: &str) -> Res<Option<Vec<usize>>> {
    let Some(i) = args.iter().position(|a| a == flag) else {
        return Ok(None);
    };
    let list = args
        .get(i + 1)
        .ok_or(format!("{flag} needs batch sizes, e.g. 1,64"))?;
    Ok(Some(
        list.split(',')
            .map(|b| b.parse())
            .collect::<Result<_, _>>()?,
    ))
}

/// Mean µs per call of `f` over `iters` calls after `warm` warm-ups, timed with CUDA events.
fn time_us(g: &Gpu, warm: usize, iters: usize, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    for _ in 0..warm {
        f()?;
    }
    let start = g.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = g.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    start.record(&g.stream)?;
    for _ in 0..iters {
        f()?;
    }
    end.record(&g.stream)?;
    end.synchronize()?;
    Ok(start.elapsed_ms(&end)? as f64 * 1e3 / iters as f64)
}

struct Act {
    act: DevBuf,
    scales: DevBuf,
    /// The f32 rows they were made from (the GEMV's input).
    x: DevBuf,
}

/// Random activations for `lin`, quantized by the prep kernel.
fn activations(g: &Gpu, lin: &GpuLinear, rows: usize) -> Res<Act> {
    let x = DevBuf::zeros(g, rows * lin.k * 4)?;
    let n = (rows * lin.k) as u64;
    model::launch!(g, fill_f32_rand, (((n / 256).clamp(1, 65_535)) as u32, 1, 1), (256, 1, 1), 0;
        x.p(), n, 1234u64, 2.0f32)?;
    let act = DevBuf::zeros(g, rows * lin.kp * lin.elem_bytes())?;
    let scales = DevBuf::zeros(g, rows * lin.act_groups().max(1) * 4)?;
    let (fmt, group) = lin.act_format();
    model::launch!(g, prep_rows, (rows as u32, 1, 1), (model::gpu::prep_threads(rows), 1, 1), 0;
        x.p(), lin.k as i32, 0u64, lin.k as i32, 0i32, 0u64, 1e-5f32, 0i32, fmt, act.p(),
        lin.kp as i32, scales.p(), group as i32)?;
    Ok(Act { act, scales, x })
}

fn kernel_bench(g: &Arc<Gpu>, c: &Glm4MoeConfig) -> Res<Value> {
    let h = c.hidden_size;
    let qkv_n = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim;
    let fp8 = WeightFormat::Fp8Channel;
    let dense: Vec<(&str, WeightFormat, Vec<usize>, usize)> = vec![
        ("qkv", fp8, vec![qkv_n], h),
        ("o_proj", fp8, vec![h], c.num_attention_heads * c.head_dim),
        ("dense gate+up", fp8, vec![2 * c.intermediate_size], h),
        ("dense down", fp8, vec![h], c.intermediate_size),
        ("lm_head (bf16)", WeightFormat::Bf16, vec![c.vocab_size], h),
    ];
    let ms = [1usize, 2, 4, 8, 16, 64, 256, 2048, 8192];
    let mut rows = vec![];
    let lt = model::gpu::BlasLt::new(g);
    println!(
        "cuBLASLt: {}",
        if lt.is_some() { "loaded" } else { "absent" }
    );
    println!("\n| GEMM (N×K) | M | µs | weight TB/s | TFLOP/s | roofline µs | cuBLASLt µs (same shape; the engine's path from GLMFLEET_CUBLASLT_MIN_ROWS rows) | GEMV µs, norm+quant fused (weight TB/s) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, fmt, parts, k) in &dense {
        let lin = GpuLinear::dummy(g, *fmt, parts, *k, 1, false, 7)?;
        let maxm = if name.starts_with("lm_head") {
            256
        } else {
            8192
        };
        for &m in ms.iter().filter(|&&m| m <= maxm) {
            let a = activations(g, &lin, m)?;
            let out = DevBuf::zeros(g, m * lin.n * 4)?;
            let iters = if m >= 2048 { 10 } else { 50 };
            let us = time_us(g, 3, iters, || {
                gemm_launch(g, &lin, a.act.p(), a.scales.p(), m, None, out.p(), lin.n, 0)?;
                Ok(())
            })?;
            let wbytes = (lin.n * lin.k * lin.elem_bytes()) as f64;
            let flops = 2.0 * (m * lin.n * lin.k) as f64;
            let roof = (wbytes / (HBM_TBS * 1e6)).max(flops / (FP8_PEAK_TFLOPS * 1e6));
            // cuBLASLt FP8 on the same shape, the counterpart the decode targets compare against
            let lt_us = match &lt {
                Some(lt) => Some(time_us(g, 3, iters, || {
                    lt.gemm(g, &lin, a.act.p(), a.scales.p(), m, out.p(), lin.n, 0, 0)?;
                    Ok(())
                })?),
                _ => None,
            };
            let lt_col = lt_us.map_or("—".to_string(), |u| {
                format!("{u:.1} ({:.0} TFLOP/s)", flops / u / 1e6)
            });
            // the decode GEMV (the engine's path up to GLMFLEET_GEMV_ROWS rows), from f32 rows:
            // it includes the quantization the GEMM's column leaves to prep_rows
            // (none where it does not apply, e.g. rows too long for shared memory)
            let rows_in = ActRows::plain(a.x.p(), lin.k, m, lin.k);
            let gemv_us = if m <= model::gpu::gemv_max_rows(&lin)
                && gemv_launch(g, &lin, &rows_in, out.p(), lin.n, 0)?
            {
                Some(time_us(g, 3, iters, || {
                    gemv_launch(g, &lin, &rows_in, out.p(), lin.n, 0)?;
                    Ok(())
                })?)
            } else {
                None
            };
            let gemv_col = gemv_us.map_or("—".to_string(), |u| {
                format!("{u:.1} ({:.2})", wbytes / u / 1e6)
            });
            println!(
                "| {name} {}×{} | {m} | {us:.1} | {:.2} | {:.1} | {roof:.1} | {lt_col} | {gemv_col} |",
                lin.n,
                lin.k,
                wbytes / us / 1e6,
                flops / us / 1e6
            );
            rows.push(
                json!({"gemm": name, "n": lin.n, "k": lin.k, "m": m, "us": us,
                "weight_tbs": wbytes / us / 1e6, "tflops": flops / us / 1e6, "roofline_us": roof,
                "cublaslt_us": lt_us, "gemv_us": gemv_us}),
            );
        }
    }
    // grouped expert GEMMs: B tokens routed top-k uniformly over E experts
    let (e, k, inter) = (
        c.n_routed_experts,
        c.num_experts_per_tok,
        c.moe_intermediate_size,
    );
    let gu = GpuLinear::dummy(g, fp8, &[inter, inter], h, e, false, 9)?;
    let down = GpuLinear::dummy(g, fp8, &[h], inter, e, false, 10)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    println!(
        "\n| grouped GEMM | tokens | experts touched | µs | weight TB/s | TFLOP/s | roofline µs | cuBLASLt, one GEMM per expert µs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &b in &[1usize, 16, 64, 256, 2048, 8192] {
        let mut counts = vec![0usize; e];
        for _ in 0..b {
            let mut chosen = std::collections::HashSet::new();
            while chosen.len() < k {
                chosen.insert(rng.gen_range(0..e));
            }
            for x in chosen {
                counts[x] += 1;
            }
        }
        let touched = counts.iter().filter(|&&x| x > 0).count();
        let a_rows = b * k;
        let bm = if a_rows >= 32 * e { 64 } else { 16 };
        let mut offsets = vec![0i32];
        let mut tiles = vec![];
        for (x, &cnt) in counts.iter().enumerate() {
            let s = *offsets.last().unwrap();
            for j in 0..cnt.div_ceil(bm) {
                tiles.push(x as i32);
                tiles.push(s + (j * bm) as i32);
            }
            offsets.push(s + cnt as i32);
        }
        let ntiles = tiles.len() / 2;
        let max_tiles = a_rows.div_ceil(bm) + e;
        let tb = DevBuf::from_host(g, &tiles)?;
        let ob = DevBuf::from_host(g, &offsets)?;
        let nb = DevBuf::from_host(g, &[ntiles as i32])?;
        for (name, lin) in [("expert gate+up", &gu), ("expert down", &down)] {
            let a = activations(g, lin, a_rows)?;
            let out = DevBuf::zeros(g, a_rows * lin.n * 4)?;
            let iters = if b >= 2048 { 10 } else { 50 };
            let us = time_us(g, 3, iters, || {
                gemm_launch(
                    g,
                    lin,
                    a.act.p(),
                    a.scales.p(),
                    a_rows,
                    Some((bm, max_tiles, tb.p(), nb.p(), ob.p())),
                    out.p(),
                    lin.n,
                    0,
                )?;
                Ok(())
            })?;
            let wbytes = (touched * lin.n * lin.k) as f64;
            let flops = 2.0 * (a_rows * lin.n * lin.k) as f64;
            let roof = (wbytes / (HBM_TBS * 1e6)).max(flops / (FP8_PEAK_TFLOPS * 1e6));
            // the engine's GLMFLEET_CUBLASLT_EXPERTS path (offsets already on the host here)
            let lt_us = match &lt {
                Some(lt) if b >= 256 => Some(time_us(g, 3, iters, || {
                    Ok(lt.gemm_groups(g, lin, a.act.p(), a.scales.p(), &offsets, out.p())?)
                })?),
                _ => None,
            };
            let lt_col = lt_us.map_or("—".to_string(), |u| {
                format!("{u:.1} ({:.0} TFLOP/s)", flops / u / 1e6)
            });
            println!(
                "| {name} {}×{}×{e} | {b} | {touched} | {us:.1} | {:.2} | {:.1} | {roof:.1} | {lt_col} |",
                lin.n,
                lin.k,
                wbytes / us / 1e6,
                flops / us / 1e6
            );
            rows.push(
                json!({"gemm": name, "tokens": b, "touched": touched, "us": us,
                "weight_tbs": wbytes / us / 1e6, "tflops": flops / us / 1e6, "roofline_us": roof,
                "cublaslt_per_expert_us": lt_us}),
            );
        }
    }
    moe_gemv_bench(g, c, &gu, &down, &mut rows)?;
    sampling_bench(g, c, &mut rows)?;
    host_copy_bench(g, c, &mut rows)?;
    Ok(Value::Array(rows))
}

/// A MoE layer's experts for decode-size batches as the two GEMV launches (`MoeGemv`: routed
/// experts and the shared one, SiLU·up and the combine fused) against the grouped path's kernels
/// (`prep_rows` gather+quant, gate|up GEMM, SiLU·up+quant, down GEMM, the shared expert's four,
/// `moe_combine`; without `moe_plan` and the routing, which both paths share).
fn moe_gemv_bench(
    g: &Arc<Gpu>,
    c: &Glm4MoeConfig,
    gu: &GpuLinear,
    down: &GpuLinear,
    rows: &mut Vec<Value>,
) -> Res<()> {
    let (h, e, k, inter) = (
        c.hidden_size,
        c.n_routed_experts,
        c.num_experts_per_tok,
        c.moe_intermediate_size,
    );
    let fp8 = WeightFormat::Fp8Channel;
    let sgu = GpuLinear::dummy(g, fp8, &[inter, inter], h, 1, false, 11)?;
    let sdn = GpuLinear::dummy(g, fp8, &[h], inter, 1, false, 12)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    println!("\n| MoE experts by GEMV (routed + shared, combine fused) | tokens | experts read | µs | weight TB/s | roofline µs |");
    println!("|---|---|---|---|---|---|");
    for t in [1usize, 2, 4, 8] {
        let mut ids = vec![];
        for _ in 0..t {
            let mut chosen = std::collections::HashSet::new();
            while chosen.len() < k {
                chosen.insert(rng.gen_range(0..e) as i32);
            }
            ids.extend(chosen);
        }
        let wts = vec![1.0f32 / k as f32; t * k];
        let (idb, wtb) = (DevBuf::from_host(g, &ids)?, DevBuf::from_host(g, &wts)?);
        let xn = DevBuf::zeros(g, t * h * 4)?;
        let n = (t * h) as u64;
        model::launch!(g, fill_f32_rand, (((n / 256).clamp(1, 65_535)) as u32, 1, 1), (256, 1, 1), 0;
            xn.p(), n, 99u64, 2.0f32)?;
        let x = DevBuf::zeros(g, t * h * 4)?;
        let f1 = DevBuf::zeros(g, t * (k + 1) * gu.n * 4)?;
        let moe = MoeGemv {
            gate_up: gu,
            down,
            shared: Some((&sgu, &sdn)),
            inter,
            k,
            ids: idb.p(),
            wts: wtb.p(),
            flat: true,
            paired: true,
            routed: None,
        };
        let cfg = moe.config(g, t, h).ok_or("the MoE GEMV does not apply")?;
        let us = time_us(g, 3, 50, || {
            Ok(moe.launch(g, &cfg, t, (xn.p(), h), f1.p(), x.p())?)
        })?;
        let touched = ids.iter().collect::<std::collections::HashSet<_>>().len();
        let read = (t * k + t) as f64 * 3.0 * (h * inter) as f64;
        let roof = (touched + 1) as f64 * 3.0 * (h * inter) as f64 / (HBM_TBS * 1e6);
        println!(
            "| {h}×{inter}, {e} experts, top-{k} | {t} | {} (+1 shared) | {us:.1} | {:.2} | {roof:.1} |",
            t * k,
            read / us / 1e6
        );
        rows.push(
            json!({"moe_gemv_tokens": t, "us": us, "weight_tbs": read / us / 1e6,
            "roofline_us": roof}),
        );
    }
    Ok(())
}

/// The sampling kernels over full vocabulary rows: temperature only, and truncated (temperature
/// 0.6, top-p 0.95 with and without top-k 50: `sample_thresh` first). Top-p alone over flat
/// logits is the threshold kernel's worst case: most of the row is in the kept mass.
fn sampling_bench(g: &Arc<Gpu>, c: &Glm4MoeConfig, rows: &mut Vec<Value>) -> Res<()> {
    let v = c.vocab_size;
    println!("\n| sampling, rows × {v} | µs, temperature | µs, + top-k 50, top-p 0.95 (`sample_thresh`) | µs, + top-p 0.95 |");
    println!("|---|---|---|---|");
    for b in [1usize, 64, 256] {
        let logits = DevBuf::zeros(g, b * v * 4)?;
        model::launch!(g, fill_f32_rand, (1024, 1, 1), (256, 1, 1), 0;
            logits.p(), (b * v) as u64, 11u64, 8f32)?;
        let temps = DevBuf::from_host(g, &vec![0.6f32; b])?;
        let seeds = DevBuf::from_host(g, &(0..b as u64).collect::<Vec<_>>())?;
        let top_k = DevBuf::from_host(g, &vec![50i32; b])?;
        let no_top_k = DevBuf::zeros(g, b * 4)?;
        let top_p = DevBuf::from_host(g, &vec![0.95f32; b])?;
        let min_p = DevBuf::from_host(g, &vec![model::sample::min_p_log(0.0); b])?;
        let part = DevBuf::zeros(g, model::gpu::sample_part_bytes(b))?;
        let out = DevBuf::zeros(g, b * 4)?;
        let mut us = [0f64; 3];
        for (i, trunc) in [
            None,
            Some([top_k.p(), top_p.p(), min_p.p()]),
            Some([no_top_k.p(), top_p.p(), min_p.p()]),
        ]
        .into_iter()
        .enumerate()
        {
            let spec = model::gpu::SampleSpecs {
                temps: temps.p(),
                seeds: seeds.p(),
                trunc,
            };
            us[i] = time_us(g, 3, 20, || {
                Ok(model::gpu::sample_launch(
                    g,
                    (logits.p(), v, v),
                    spec,
                    part.p(),
                    out.p(),
                    b,
                )?)
            })?;
        }
        println!("| {b} | {:.1} | {:.1} | {:.1} |", us[0], us[1], us[2]);
        rows.push(
            json!({"sampling_rows": b, "us": us[0], "us_truncated": us[1], "us_top_p": us[2]}),
        );
    }
    Ok(())
}

/// Logits rows to the host (64 and 128 rows: a sampled batch, and an MTP verify of 64 sequences):
/// pageable copies into fresh memory, pinned staging into fresh memory (what a step did before
/// logits buffers were recycled), and pinned staging into a reused buffer (`GpuModel::recycle_host`).
fn host_copy_bench(g: &Arc<Gpu>, c: &Glm4MoeConfig, rows: &mut Vec<Value>) -> Res<()> {
    let v = c.vocab_size;
    println!("\n| logits to the host, rows × {v} | MB | pageable, fresh ms | pinned, fresh ms | pinned, reused ms | GB/s (reused) |");
    println!("|---|---|---|---|---|---|");
    for r in [64usize, 128] {
        let n = r * v;
        let dev = DevBuf::zeros(g, n * 4)?;
        let iters = 5;
        let mut ms = [0f64; 3];
        let mut reused = vec![0f32; n];
        for i in 0..iters + 1 {
            let t = Instant::now();
            let mut fresh = vec![0f32; n];
            g.download(dev.p(), &mut fresh)?;
            let pageable = t.elapsed().as_secs_f64() * 1e3;
            drop(fresh);
            let t = Instant::now();
            let mut fresh = vec![0f32; n];
            g.download_f32(dev.p(), &mut fresh)?;
            let pinned = t.elapsed().as_secs_f64() * 1e3;
            drop(fresh);
            let t = Instant::now();
            g.download_f32(dev.p(), &mut reused)?;
            let again = t.elapsed().as_secs_f64() * 1e3;
            if i > 0 {
                for (m, x) in ms.iter_mut().zip([pageable, pinned, again]) {
                    *m += x / iters as f64;
                }
            }
        }
        let mb = (n * 4) as f64 / 1e6;
        println!(
            "| {r} | {mb:.1} | {:.2} | {:.2} | {:.2} | {:.1} |",
            ms[0],
            ms[1],
            ms[2],
            mb / ms[2]
        );
        rows.push(
            json!({"host_copy_rows": r, "mb": mb, "pageable_fresh_ms": ms[0],
            "pinned_fresh_ms": ms[1], "pinned_reused_ms": ms[2]}),
        );
    }
    Ok(())
}

/// Weight bytes one decode step reads at batch `b` (experts touched in expectation).
fn decode_weight_bytes(c: &Glm4MoeConfig, b: usize) -> f64 {
    let h = c.hidden_size as f64;
    let qd = (c.num_attention_heads * c.head_dim) as f64;
    let kvd = (c.num_key_value_heads * c.head_dim) as f64;
    let attn = h * (qd + 2.0 * kvd) + qd * h;
    let expert = 3.0 * h * c.moe_intermediate_size as f64;
    let e = c.n_routed_experts as f64;
    let touched = e * (1.0 - (1.0 - c.num_experts_per_tok as f64 / e).powi(b as i32));
    let mut total = 0.0;
    for l in 0..c.num_hidden_layers {
        total += attn;
        total += if c.is_moe_layer(l) {
            touched * expert + expert * c.n_shared_experts as f64
        } else {
            3.0 * h * c.intermediate_size as f64
        };
    }
    total + 2.0 * h * c.vocab_size as f64 // BF16 LM head
}

/// The engine's switches that need no restart, as `--sweep` sets them.
#[derive(Clone, Copy)]
struct Switches {
    attn_blocks_per_sm: usize,
    pdl_graph_batch: usize,
    gemv_rows: usize,
    moe_gemv_tokens: usize,
    moe_flat: bool,
    moe_paired: bool,
    qkv_rope: bool,
    o_route: bool,
    attn_cluster: bool,
}

impl Switches {
    fn of(m: &GpuModel) -> Self {
        Self {
            attn_blocks_per_sm: m.attn_blocks_per_sm(),
            pdl_graph_batch: m.pdl_graph_batch(),
            gemv_rows: m.gemv().0,
            moe_gemv_tokens: m.gemv().1,
            moe_flat: m.moe_flat(),
            moe_paired: m.moe_paired(),
            qkv_rope: m.qkv_rope(),
            o_route: m.o_route(),
            attn_cluster: m.attn_cluster(),
        }
    }

    fn apply(&self, m: &mut GpuModel) {
        m.set_attn_blocks_per_sm(self.attn_blocks_per_sm);
        m.set_pdl_graph_batch(self.pdl_graph_batch);
        m.set_gemv(self.gemv_rows, self.moe_gemv_tokens);
        m.set_moe_flat(self.moe_flat);
        m.set_moe_paired(self.moe_paired);
        m.set_qkv_rope(self.qkv_rope);
        m.set_o_route(self.o_route);
        m.set_attn_cluster(self.attn_cluster);
    }

    fn json(&self) -> Value {
        json!({"attn_blocks_per_sm": self.attn_blocks_per_sm,
            "pdl_graph_batch": self.pdl_graph_batch.min(1 << 20), "gemv_rows": self.gemv_rows,
            "moe_gemv_tokens": self.moe_gemv_tokens, "moe_flat": self.moe_flat,
            "moe_paired": self.moe_paired, "qkv_rope": self.qkv_rope, "o_route": self.o_route,
            "attn_cluster": self.attn_cluster})
    }
}

/// Graph-replayed decode steps (context 1,024) under each setting of the engine's switches that
/// need no restart: the defaults first and last (drift), then each alternative on its own. With
/// `defaults_only` (`--sweep-defaults`) just the defaults, twice: the A/B of builds or kernel
/// variants (`GLMFLEET_KERNEL_DEFINES`), a process each.
fn decode_sweep(c: &Glm4MoeConfig, defaults_only: bool) -> Res<Value> {
    let mut opts = bench_options();
    opts.cuda_graphs = true;
    let mut m = GpuModel::dummy(c.clone(), &opts, 42, false)?;
    let d = Switches::of(&m);
    let mut variants: Vec<(String, Switches)> = vec![("defaults".into(), d)];
    let mut vary = |name: String, f: &dyn Fn(&mut Switches)| {
        if !defaults_only {
            let mut s = d;
            f(&mut s);
            variants.push((name, s));
        }
    };
    for (name, p) in [("PDL in no graph", 0), ("PDL in every graph", usize::MAX)] {
        if p != d.pdl_graph_batch {
            vary(name.into(), &|s| s.pdl_graph_batch = p);
        }
    }
    vary(format!("flat MoE gate|up {}", !d.moe_flat), &|s| {
        s.moe_flat = !d.moe_flat
    });
    vary(
        format!("MoE GEMV gate|up applies SiLU·up {}", !d.moe_paired),
        &|s| s.moe_paired = !d.moe_paired,
    );
    vary(format!("QKV GEMV applies RoPE {}", !d.qkv_rope), &|s| {
        s.qkv_rope = !d.qkv_rope
    });
    vary(
        format!("O GEMV routes the MoE token {}", !d.o_route),
        &|s| s.o_route = !d.o_route,
    );
    vary(
        format!("attention splits merged in a cluster {}", !d.attn_cluster),
        &|s| s.attn_cluster = !d.attn_cluster,
    );
    for n in [1usize, 2, 8]
        .into_iter()
        .filter(|&n| n != d.attn_blocks_per_sm)
    {
        vary(format!("attention: {n} blocks an SM"), &|s| {
            s.attn_blocks_per_sm = n
        });
    }
    // (2 and 4 rows measured slower at batch 2-4 in runs 57-58)
    if d.gemv_rows != 8 {
        vary("dense GEMV up to 8 rows".into(), &|s| s.gemv_rows = 8);
    }
    // the other of the two MoE GEMV limits measured (4, 8)
    let t = if d.moe_gemv_tokens == 8 { 4 } else { 8 };
    vary(format!("MoE GEMV up to {t} tokens"), &|s| {
        s.moe_gemv_tokens = t
    });
    variants.push(("defaults (again)".into(), d));
    let (bs, nb, ctx) = (m.block_size(), m.num_blocks(), 1024usize);
    let batches = [1usize, 2, 4, 8, 16, 64];
    println!("defaults: {}", d.json());
    println!(
        "\n| setting | {} |",
        batches.map(|b| format!("batch {b} ms")).join(" | ")
    );
    println!("|---|{}", "---|".repeat(batches.len()));
    let mut out = vec![];
    for (name, s) in variants {
        s.apply(&mut m);
        let mut cells = vec![];
        for b in batches {
            let batch = DecodeBatch::new(b, ctx.div_ceil(bs) + 1, nb);
            let ms = time_steps(&mut m, &batch.seqs(ctx), &batch.sampling(), 3, 30)?;
            cells.push(format!("{ms:.3}"));
            out.push(
                json!({"setting": name, "switches": s.json(), "decode_batch": b,
                "context": ctx, "graph_ms": ms}),
            );
        }
        println!("| {name} | {} |", cells.join(" | "));
    }
    d.apply(&mut m);
    Ok(Value::Array(out))
}

/// One profiled eager decode step per batch size (after two warm-up steps each).
/// Four layers (the dense one and three MoE layers) stand for the model: every layer after the
/// first runs the same kernels at the same shapes.
fn ncu_steps(c: &Glm4MoeConfig, batches: &[usize]) -> Res<()> {
    let mut c = c.clone();
    c.num_hidden_layers = c.num_hidden_layers.min(4);
    let mut m = GpuModel::dummy(c, &bench_options(), 42, false)?;
    m.set_cuda_graphs(false);
    one_step_each(&mut m, batches, 2, |m, b, step| {
        let prof = cudarc::driver::Profiler::new()?;
        step(m)?;
        drop(prof);
        println!("profiled one decode step at batch {b}");
        Ok(())
    })
}

/// For each batch size, a decode batch at context 1,024, `warm` steps of it, then `f` with the
/// model, the batch size and a function that runs one more step (ms).
fn one_step_each(
    m: &mut GpuModel,
    batches: &[usize],
    warm: usize,
    mut f: impl FnMut(&mut GpuModel, usize, &dyn Fn(&mut GpuModel) -> Res<f64>) -> Res<()>,
) -> Res<()> {
    let per_seq = 1024usize.div_ceil(m.block_size()) + 1;
    for &b in batches {
        let batch = DecodeBatch::new(b, per_seq, m.num_blocks());
        let (seqs, sp) = (batch.seqs(1024), batch.sampling());
        time_steps(m, &seqs, &sp, warm, 0)?;
        f(m, b, &|m| time_steps(m, &seqs, &sp, 0, 1))?;
    }
    Ok(())
}

/// One graph-replayed decode step per batch size with the kernels' timeline marks on: the records
/// go to `{out}-b{B}.bin`.
fn trace_steps(c: &Glm4MoeConfig, batches: &[usize], out: &str) -> Res<()> {
    let mut m = GpuModel::dummy(c.clone(), &bench_options(), 42, false)?;
    m.set_cuda_graphs(true);
    one_step_each(&mut m, batches, 3, |m, b, step| {
        m.gpu()
            .trace_take()?
            .ok_or("the kernels have no timeline marks: run with GLMFLEET_TRACE=1")?;
        let ms = step(m)?;
        let recs = m.gpu().trace_take()?.unwrap_or_default();
        let bytes: Vec<u8> = recs
            .iter()
            .flatten()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let path = format!("{out}-b{b}.bin");
        std::fs::write(&path, bytes)?;
        println!(
            "batch {b}: one step {ms:.3} ms, {} warp records -> {path}",
            recs.len()
        );
        Ok(())
    })
}

/// The engine options of the model benchmarks.
fn bench_options() -> GpuOptions {
    GpuOptions {
        max_num_batched_tokens: 8192,
        max_num_seqs: 256,
        max_model_len: 8192,
        gpu_memory_utilization: 0.92,
        cuda_graphs: false,
        ..Default::default()
    }
}

fn model_bench(c: &Glm4MoeConfig) -> Res<Value> {
    let opts = bench_options();
    let t0 = Instant::now();
    let mut m = GpuModel::dummy(c.clone(), &opts, 42, false)?;
    let (w, ws, kv) = m.memory();
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    println!(
        "\nmodel: {} layers, weights {:.2} GiB, workspace {:.2} GiB, KV {:.2} GiB ({} blocks), built in {:.1} s",
        c.num_hidden_layers, gib(w), gib(ws), gib(kv), m.num_blocks(), t0.elapsed().as_secs_f64()
    );
    let bs = m.block_size();
    let nb = m.num_blocks();
    let ctx = 1024usize;
    let per_seq = ctx.div_ceil(bs) + 1;
    let kv_token_bytes =
        2.0 * (c.num_key_value_heads * c.head_dim * 2 * c.num_hidden_layers) as f64;
    let mut rows = vec![];
    println!("\n| decode batch | context | eager ms | graph ms | tok/s (graph) | roofline ms | graph / roofline | graph ms without the GEMVs | graph ms, dense GEMVs only |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &b in &[1usize, 2, 4, 8, 16, 64, 256] {
        let batch = DecodeBatch::new(b, per_seq, nb);
        let (seqs, sp) = (batch.seqs(ctx), batch.sampling());
        let run = |m: &mut GpuModel, graphs: bool, warm: usize, iters: usize| -> Res<f64> {
            m.set_cuda_graphs(graphs);
            time_steps(m, &seqs, &sp, warm, iters)
        };
        let eager = run(&mut m, false, 2, 5)?;
        let prof = m.profile_step(&seqs, Some(&sp))?;
        let total: f64 = prof.iter().map(|p| p.1).sum();
        let parts: Vec<String> = prof
            .iter()
            .map(|(l, ms)| format!("{l} {ms:.2} ms ({:.0}%)", 100.0 * ms / total))
            .collect();
        println!(
            "<!-- batch {b} eager step by phase: {} -->",
            parts.join(", ")
        );
        let graph = run(&mut m, true, 2, 20)?;
        // the same step without the decode GEMVs (GLMFLEET_GEMV_ROWS=0 GLMFLEET_MOE_GEMV_TOKENS=0)
        // and with the dense GEMVs only (GLMFLEET_MOE_GEMV_TOKENS=0)
        let (graph_no_gemv, graph_dense_gemv) = if b <= 8 {
            let (rows, tokens) = m.gemv();
            m.set_gemv(0, 0);
            let none = run(&mut m, true, 2, 20)?;
            m.set_gemv(rows.max(b), 0);
            let dense = run(&mut m, true, 2, 20)?;
            m.set_gemv(rows, tokens);
            (Some(none), Some(dense))
        } else {
            (None, None)
        };
        let bytes = decode_weight_bytes(c, b) + b as f64 * ctx as f64 * kv_token_bytes;
        let roof = bytes / (HBM_TBS * 1e9);
        println!(
            "| {b} | {ctx} | {eager:.2} | {graph:.2} | {:.0} | {roof:.2} | {:.2}× | {} | {} |",
            b as f64 / graph * 1e3,
            graph / roof,
            graph_no_gemv.map_or("—".into(), |x| format!("{x:.2}")),
            graph_dense_gemv.map_or("—".into(), |x| format!("{x:.2}"))
        );
        rows.push(
            json!({"decode_batch": b, "context": ctx, "eager_ms": eager, "graph_ms": graph,
            "graph_ms_without_gemv": graph_no_gemv,
            "graph_ms_dense_gemv_only": graph_dense_gemv,
            "tokens_per_s": b as f64 / graph * 1e3, "roofline_ms": roof,
            "phases_ms": prof.iter().map(|(l, ms)| json!([l, ms])).collect::<Vec<_>>()}),
        );
    }
    println!(
        "\n| prefill | tokens | ms, grouped expert kernel | tokens/s | ms, experts one cuBLASLt GEMM each (default) | tokens/s |"
    );
    println!("|---|---|---|---|---|---|");
    for &(nseq, len) in &[(1usize, 8192usize), (4, 2048), (8, 1000)] {
        let prompts: Vec<Vec<u32>> = (0..nseq)
            .map(|s| (0..len).map(|i| ((i * 31 + s * 7) % 700) as u32).collect())
            .collect();
        let per = len.div_ceil(bs);
        let tables: Vec<Vec<u32>> = (0..nseq)
            .map(|s| (0..per).map(|j| ((s * per + j) % nb) as u32).collect())
            .collect();
        let seqs: Vec<SeqInput> = (0..nseq)
            .map(|s| SeqInput {
                tokens: &prompts[s],
                start_pos: 0,
                block_table: &tables[s],
                sample: true,
            })
            .collect();
        let sp = vec![DeviceSampling::GREEDY; nseq];
        // first with every expert GEMM on the grouped kernel
        let has_lt = m.set_cublaslt_experts(None);
        expect_tokens(m.step(&seqs, Some(&sp))?, nseq)?;
        let iters = 3;
        let t = Instant::now();
        for _ in 0..iters {
            expect_tokens(m.step(&seqs, Some(&sp))?, nseq)?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
        let n = nseq * len;
        let prof = m.profile_step(&seqs, Some(&sp))?;
        let total: f64 = prof.iter().map(|p| p.1).sum();
        let parts: Vec<String> = prof
            .iter()
            .map(|(l, ms)| format!("{l} {ms:.1} ms ({:.0}%)", 100.0 * ms / total))
            .collect();
        println!(
            "<!-- prefill {nseq} x {len} by phase: {} -->",
            parts.join(", ")
        );
        // the same prefill as served: the routed experts as one cuBLASLt GEMM each
        let lt_ms = if has_lt {
            m.set_cublaslt_experts(Some(model::gpu::blaslt::EXPERTS_MIN_ROWS));
            expect_tokens(m.step(&seqs, Some(&sp))?, nseq)?;
            let t = Instant::now();
            for _ in 0..iters {
                expect_tokens(m.step(&seqs, Some(&sp))?, nseq)?;
            }
            Some(t.elapsed().as_secs_f64() * 1e3 / iters as f64)
        } else {
            None
        };
        let lt_cols = lt_ms.map_or("— | —".to_string(), |x| {
            format!("{x:.1} | {:.0}", n as f64 / x * 1e3)
        });
        println!(
            "| {nseq} × {len} | {n} | {ms:.1} | {:.0} | {lt_cols} |",
            n as f64 / ms * 1e3
        );
        rows.push(json!({"prefill_seqs": nseq, "prefill_len": len, "ms": ms,
            "tokens_per_s": n as f64 / ms * 1e3, "cublaslt_experts_ms": lt_ms}));
    }
    // the same decode steps with the KV cache in FP8 (`--kv-cache-dtype fp8`)
    drop(m);
    let mut m = GpuModel::dummy(
        c.clone(),
        &GpuOptions {
            kv_fp8: true,
            cuda_graphs: true,
            ..opts
        },
        42,
        false,
    )?;
    let nb8 = m.num_blocks();
    println!(
        "\nFP8 KV cache: {nb8} blocks ({} tokens) against {nb} with BF16",
        nb8 * bs
    );
    println!("\n| decode batch (FP8 KV) | context | graph ms | tok/s | graph ms, f16 widening (attn_f8h) | tok/s |");
    println!("|---|---|---|---|---|---|");
    for &b in &[16usize, 64, 256] {
        let batch = DecodeBatch::new(b, per_seq, nb8);
        m.set_fp8_attn_f16(false);
        let ms = time_steps(&mut m, &batch.seqs(ctx), &batch.sampling(), 2, 20)?;
        m.set_fp8_attn_f16(true);
        let ms_h = time_steps(&mut m, &batch.seqs(ctx), &batch.sampling(), 2, 20)?;
        println!(
            "| {b} | {ctx} | {ms:.2} | {:.0} | {ms_h:.2} | {:.0} |",
            b as f64 / ms * 1e3,
            b as f64 / ms_h * 1e3
        );
        rows.push(
            json!({"decode_batch": b, "context": ctx, "kv": "fp8", "graph_ms": ms,
            "tokens_per_s": b as f64 / ms * 1e3, "kv_blocks": nb8, "graph_ms_f16_widening": ms_h}),
        );
    }
    drop(m);
    let mtp = mtp_cost(c, &opts, &rows)?;
    Ok(
        json!({"weights_bytes": w, "workspace_bytes": ws, "kv_bytes": kv, "steps": rows, "mtp": mtp}),
    )
}

/// Batches at which the cost of MTP speculation (one draft token) is measured.
const MTP_BATCHES: [usize; 4] = [1, 16, 64, 256];

/// The cost of MTP speculation with one draft token, on the engine's own verify step and MTP
/// layer: at context 1024 every sequence verifies two tokens (the last accepted one and the draft;
/// logits of both come back to the host sampler), then the MTP pass covers the two verified
/// positions and proposes the next draft from the last (its output row kept for a further draft
/// step). A step yields 1 + a tokens (a = acceptance rate) for verify + draft ms against one
/// decode step: break-even a = (verify + draft) / decode - 1.
fn mtp_cost(c: &Glm4MoeConfig, opts: &GpuOptions, rows: &[Value]) -> Res<Value> {
    let mut m = GpuModel::dummy(
        c.clone(),
        &GpuOptions {
            speculative_tokens: 1,
            cuda_graphs: false,
            ..opts.clone()
        },
        43,
        false,
    )?;
    let ctx = 1024usize;
    let per_seq = ctx.div_ceil(m.block_size()) + 1;
    let half = m.mtp_slots() / 2;
    println!("\n| MTP, 1 draft token: batch | rows to the host | decode step ms (graph) | verify step ms (2 tokens/seq) | draft ms (MTP pass) | break-even acceptance |");
    println!("|---|---|---|---|---|---|");
    let mut out = vec![];
    for &b in &MTP_BATCHES {
        let batch = DecodeBatch::new(b, per_seq, m.num_blocks());
        let toks: Vec<[u32; 2]> = batch.toks.iter().map(|t| [t[0], t[0] + 1]).collect();
        let next: Vec<[u32; 2]> = toks.iter().map(|t| [t[1], t[1] + 1]).collect();
        let (verify_seqs, draft_seqs) = (
            pairs_at(&toks, &batch.tables, ctx - 2),
            pairs_at(&next, &batch.tables, ctx - 2),
        );
        let two = vec![2usize; b];
        let hidden: Vec<HiddenRow> = (0..2 * b).map(HiddenRow::Verified).collect();
        let last: Vec<usize> = (0..b).map(|i| 2 * i + 1).collect();
        let chains: Vec<(usize, usize)> = (0..b).map(|i| (2 * i + 1, half + i)).collect();
        let row = rows
            .iter()
            .find(|r| r["decode_batch"] == b && r["kv"].is_null())
            .ok_or("decode step missing")?;
        let decode = row["graph_ms"].as_f64().unwrap_or(f64::NAN);
        // host: logits rows to the host sampler; device: greedy ids drawn on the GPU
        for greedy in [false, true] {
            let iters = 10;
            let (mut verify, mut draft) = (0.0, 0.0);
            for i in 0..iters + 2 {
                let t = Instant::now();
                m.verify_step(&verify_seqs, &two, greedy)?;
                let v = t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                m.mtp_step(&draft_seqs, &hidden, &last, greedy)?;
                m.keep_rows(KeepFrom::MtpOutput, &chains)?;
                let d = t.elapsed().as_secs_f64() * 1e3;
                if i >= 2 {
                    verify += v / iters as f64;
                    draft += d / iters as f64;
                }
            }
            let even = (verify + draft) / decode - 1.0;
            let mode = if greedy { "greedy ids" } else { "logits" };
            println!(
                "| {b} | {mode} | {decode:.2} | {verify:.2} | {draft:.2} | {:.0}% |",
                100.0 * even
            );
            out.push(
                json!({"batch": b, "greedy_on_device": greedy, "decode_ms": decode,
                "verify_ms": verify, "draft_ms": draft, "break_even_acceptance": even}),
            );
        }
    }
    Ok(json!(out))
}

/// Two-token sequences at `pos`, one per block table.
fn pairs_at<'a>(toks: &'a [[u32; 2]], tables: &'a [Vec<u32>], pos: usize) -> Vec<SeqInput<'a>> {
    toks.iter()
        .zip(tables)
        .map(|(t, table)| SeqInput {
            tokens: t,
            start_pos: pos,
            block_table: table,
            sample: true,
        })
        .collect()
}

/// `b` one-token decode sequences at the same position, each with its own blocks (wrapping around
/// the cache when it is smaller), sampled greedily on the device.
struct DecodeBatch {
    tables: Vec<Vec<u32>>,
    toks: Vec<[u32; 1]>,
}

impl DecodeBatch {
    fn new(b: usize, per_seq: usize, num_blocks: usize) -> Self {
        Self {
            tables: (0..b)
                .map(|i| {
                    (0..per_seq)
                        .map(|j| ((i * per_seq + j) % num_blocks) as u32)
                        .collect()
                })
                .collect(),
            toks: (0..b).map(|i| [(i % 700) as u32]).collect(),
        }
    }

    fn seqs(&self, ctx: usize) -> Vec<SeqInput<'_>> {
        self.toks
            .iter()
            .zip(&self.tables)
            .map(|(t, table)| SeqInput {
                tokens: t,
                start_pos: ctx - 1,
                block_table: table,
                sample: true,
            })
            .collect()
    }

    fn sampling(&self) -> Vec<DeviceSampling> {
        vec![DeviceSampling::GREEDY; self.toks.len()]
    }
}

/// Mean wall-clock ms per step (ending with the sampled ids on the host) after `warm` steps.
fn time_steps(
    m: &mut GpuModel,
    seqs: &[SeqInput<'_>],
    sp: &[DeviceSampling],
    warm: usize,
    iters: usize,
) -> Res<f64> {
    for _ in 0..warm {
        expect_tokens(m.step(seqs, Some(sp))?, seqs.len())?;
    }
    let t = Instant::now();
    for _ in 0..iters {
        expect_tokens(m.step(seqs, Some(sp))?, seqs.len())?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / iters as f64)
}

fn expect_tokens(out: StepOutput, n: usize) -> Res<()> {
    match out {
        StepOutput::Tokens(t) if t.len() == n => Ok(()),
        other => Err(format!("expected {n} tokens, got {other:?}").into()),
    }
}
