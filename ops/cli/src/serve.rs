//! `glmfleet serve MODEL`: load a checkpoint (or the demo, or dummy/fake weights), size the KV cache, and
//! run one replica until SIGTERM/Ctrl-C, then drain. The replica crate owns the server; this file owns
//! turning a model folder into its parts.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::Backend;
use model::{Glm4Moe, Glm4MoeConfig, LoadOptions};
use replica::config::LoadFormat;
use replica::{ReplicaParts, ServeConfig};

/// Default KV-cache size on the CPU when neither `--kv-cache-memory` nor `--num-gpu-blocks-override`
/// is given.
const CPU_KV_CACHE_BYTES: u64 = 512 << 20;
/// Blocks for the fake/scripted runners, which hold no KV.
const FAKE_BLOCKS: usize = 8192;

pub fn run(args: replica::ServeArgs) -> Result<()> {
    let mut cfg = replica::load_config(&args)?;
    if cfg.api_key.is_none() {
        // the chart's Secret (and the router) use one variable for the key
        cfg.api_key = std::env::var("GLMFLEET_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
    }
    let dir = crate::model_source::resolve(cfg.model.as_deref())?;
    let parts = build_parts(&cfg, &dir)?;
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let addr = cfg.bind_addr();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
        let shutdown = crate::shutdown_signal();
        crate::announce("replica", listener.local_addr()?);
        replica::serve(cfg, parts, listener, shutdown).await?;
        Ok(())
    })
}

/// What a replica needs from its model folder.
pub fn build_parts(cfg: &ServeConfig, dir: &Path) -> Result<ReplicaParts> {
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| {
        anyhow!(
            "{}: {e} (a replica needs the checkpoint's tokenizer.json)",
            tok_path.display()
        )
    })?;
    let mcfg = Glm4MoeConfig::from_dir(dir)?;
    let eos = crate::generate::eos_ids(dir, &mcfg.eos_token_ids);
    let name_hint = cfg
        .model
        .clone()
        .unwrap_or_else(|| crate::demo::DEMO.into());
    let family = chat::ModelFamily::from_name_hint(&name_hint).unwrap_or(chat::ModelFamily::Glm45);
    let chat_template = match chat::resolve_chat_template(Some(dir), family) {
        Ok(t) if !matches!(t.kind, chat::TemplateKind::Builtin(_)) => Some(t.source),
        Ok(_) => None,
        Err(e) => bail!("chat template of {}: {e}", dir.display()),
    };
    let generation_defaults = std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .map(|v| replica::GenerationDefaults::from_generation_config(&v))
        .unwrap_or_default();
    let (runner, num_blocks) = build_runner(cfg, dir, &mcfg, &tokenizer, &eos)?;
    Ok(ReplicaParts {
        runner,
        tokenizer: Arc::new(tokenizer),
        num_blocks,
        eos_token_ids: eos,
        chat_template,
        model_family_hint: Some(family),
        max_position_embeddings: mcfg.max_position_embeddings,
        default_served_name: name_hint,
        generation_defaults,
    })
}

fn build_runner(
    cfg: &ServeConfig,
    dir: &Path,
    mcfg: &Glm4MoeConfig,
    tokenizer: &tokenizers::Tokenizer,
    eos: &[u32],
) -> Result<(Box<dyn replica::Runner>, usize)> {
    if let Some(r) =
        replica::runner::fake::runner_for_load_format(&cfg.load_format, tokenizer, eos)?
    {
        return Ok((r, cfg.num_gpu_blocks_override.unwrap_or(FAKE_BLOCKS)));
    }
    let device = std::env::var("GLMFLEET_DEVICE").unwrap_or_else(|_| default_device().into());
    match device.as_str() {
        "cpu" => runner_on::<model::CpuBackend>(cfg, dir, mcfg, &Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => runner_on::<model::CudaBackend>(cfg, dir, mcfg, &Default::default()),
        #[cfg(feature = "gpu")]
        "gpu" => gpu_runner(cfg, dir, mcfg),
        other => bail!(
            "GLMFLEET_DEVICE={other}: unknown device (cpu{}{})",
            if cfg!(feature = "cuda") { ", cuda" } else { "" },
            if cfg!(feature = "gpu") { ", gpu" } else { "" }
        ),
    }
}

fn default_device() -> &'static str {
    if cfg!(feature = "gpu") {
        "gpu"
    } else if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "cpu"
    }
}

/// The CUDA engine with our own kernels (`model::gpu`): weights, workspace and a KV cache planned
/// from `--gpu-memory-utilization` (or `--kv-cache-memory` / `--num-gpu-blocks-override`).
#[cfg(feature = "gpu")]
fn gpu_runner(
    cfg: &ServeConfig,
    dir: &Path,
    mcfg: &Glm4MoeConfig,
) -> Result<(Box<dyn replica::Runner>, usize)> {
    let opts = model::gpu::GpuOptions {
        device: 0,
        max_num_batched_tokens: cfg.max_num_batched_tokens,
        max_num_seqs: cfg.max_num_seqs,
        max_model_len: cfg
            .max_model_len
            .unwrap_or(mcfg.max_position_embeddings)
            .min(mcfg.max_position_embeddings),
        block_size: cfg.block_size,
        gpu_memory_utilization: cfg.gpu_memory_utilization,
        num_blocks: cfg.num_gpu_blocks_override,
        kv_cache_bytes: cfg.kv_cache_memory.as_ref().map(|b| b.0),
        cuda_graphs: !cfg.enforce_eager
            && std::env::var("GLMFLEET_CUDA_GRAPHS").map_or(true, |v| v != "0"),
        kv_fp8: matches!(cfg.kv_cache_dtype, replica::config::KvCacheDtype::Fp8),
        // the MTP layer (and its KV layer) only when it drafts
        speculative_tokens: cfg
            .speculative_config
            .as_ref()
            .map_or(0, |s| s.num_speculative_tokens),
    };
    let t0 = std::time::Instant::now();
    let model = match cfg.load_format {
        LoadFormat::Dummy => model::gpu::GpuModel::dummy(mcfg.clone(), &opts, cfg.seed, false)?,
        _ => model::gpu::GpuModel::load(dir, &opts).context("loading the model onto the GPU")?,
    };
    let (w, ws, kv) = model.memory();
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    tracing::info!(
        "GPU engine on {}: weights {:.2} GiB, workspace {:.2} GiB, KV cache {:.2} GiB ({} blocks of {} tokens), ready in {:.1} s",
        model.device_name(),
        gib(w),
        gib(ws),
        gib(kv),
        model.num_blocks(),
        model.block_size(),
        t0.elapsed().as_secs_f64()
    );
    if model.truncates_on_device() {
        tracing::info!(
            "GPU sampling: greedy, temperature and top-k/top-p/min-p rows on the device"
        );
    } else {
        tracing::info!(
            "GPU sampling: greedy and temperature rows on the device; top-k/top-p/min-p rows on the host (GLMFLEET_DEVICE_TRUNCATION=0)"
        );
    }
    let n = model.num_blocks();
    Ok((Box::new(replica::runner::GpuRunner::new(model)), n))
}

fn runner_on<B: Backend>(
    cfg: &ServeConfig,
    dir: &Path,
    mcfg: &Glm4MoeConfig,
    device: &B::Device,
) -> Result<(Box<dyn replica::Runner>, usize)>
where
    B::Device: Send,
    replica::runner::ModelRunner<B>: replica::Runner,
{
    // The MTP layer (and its KV layer) only when it drafts: `--speculative-config`.
    let opts = LoadOptions {
        load_mtp: cfg.speculative_config.is_some(),
        ..LoadOptions::default()
    };
    let model = match cfg.load_format {
        LoadFormat::Dummy => Glm4Moe::<B>::dummy(mcfg.clone(), device, cfg.seed, &opts)?,
        _ => Glm4Moe::<B>::load(dir, device, &opts).context("loading the model")?,
    };
    if opts.load_mtp && !model.has_mtp() {
        bail!(
            "--speculative-config: {} has no MTP layer (num_nextn_predict_layers = {}), so \
             method mtp cannot draft",
            dir.display(),
            mcfg.num_nextn_predict_layers
        );
    }
    let elem_bytes = match cfg.kv_cache_dtype {
        replica::config::KvCacheDtype::Fp8 => {
            bail!("--kv-cache-dtype fp8 needs the GPU kernels (not available in this build)")
        }
        _ => std::mem::size_of::<B::FloatElem>(),
    };
    let per_block = model::PagedKvCache::<B>::bytes_per_block(
        &model.config,
        model.num_kv_layers(),
        cfg.block_size,
        elem_bytes,
    );
    let num_blocks = match (cfg.num_gpu_blocks_override, &cfg.kv_cache_memory) {
        (Some(n), _) => n,
        (None, Some(bytes)) => (bytes.0 / per_block as u64) as usize,
        (None, None) => (CPU_KV_CACHE_BYTES / per_block as u64) as usize,
    };
    if num_blocks == 0 {
        bail!("the KV cache holds no block: give a larger --kv-cache-memory (one block is {per_block} bytes)");
    }
    let runner = replica::runner::ModelRunner::new(model, num_blocks, cfg.block_size)?;
    Ok((Box::new(runner), num_blocks))
}
