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
        other => bail!(
            "GLMFLEET_DEVICE={other}: unknown device (cpu{})",
            if cfg!(feature = "cuda") { ", cuda" } else { "" }
        ),
    }
}

fn default_device() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "cpu"
    }
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
    let opts = LoadOptions::default();
    let model = match cfg.load_format {
        LoadFormat::Dummy => Glm4Moe::<B>::dummy(mcfg.clone(), device, cfg.seed, &opts)?,
        _ => Glm4Moe::<B>::load(dir, device, &opts).context("loading the model")?,
    };
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
