//! `glmfleet generate`: run the model on one prompt from the command line (greedy unless sampling flags
//! are given). Prints text, or one JSON line `{"token_ids": [...]}` with `--json`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use model::generate::{generate, GenerateOptions, Greedy, TokenPicker};
use model::{Glm4Moe, LoadOptions};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Checkpoint folder, Hugging Face repo id, or `demo` (the embedded model).
    #[arg(long, default_value = "demo")]
    pub model: String,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub token_ids: Option<Vec<String>>,
    /// Prompt text (needs the checkpoint's tokenizer.json).
    #[arg(long)]
    pub prompt: Option<String>,
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating past EOS tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// cpu, or cuda (builds with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Temperature / top-k / top-p sampling: the replica's sampler, so a seed means the same thing here
/// as at the API.
struct Sampler {
    seq: replica::sampler::SeqSampler,
    valid: usize,
}

impl TokenPicker for Sampler {
    fn pick(&mut self, logits: &[f32]) -> u32 {
        let mut row = logits.to_vec();
        let token = self.seq.sample_row(&mut row, self.valid).token;
        self.seq.observe(&[token]);
        token
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let dir = crate::model_source::resolve(Some(&args.model))?;
    match args.device.as_str() {
        "cpu" => run_on::<model::CpuBackend>(&args, &dir, &Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => run_on::<model::CudaBackend>(&args, &dir, &Default::default()),
        other => bail!(
            "unknown device `{other}` (cpu{})",
            if cfg!(feature = "cuda") {
                ", cuda"
            } else {
                "; this build has no cuda feature"
            }
        ),
    }
}

fn run_on<B: Backend>(args: &GenerateArgs, dir: &Path, device: &B::Device) -> Result<()> {
    if args.temperature.is_nan()
        || args.temperature < 0.0
        || args.top_p.is_nan()
        || args.top_p <= 0.0
        || args.top_p > 1.0
    {
        bail!("--temperature must be >= 0 and --top-p in (0, 1]");
    }
    let tokenizer = {
        let p = dir.join("tokenizer.json");
        p.exists()
            .then(|| {
                tokenizers::Tokenizer::from_file(&p).map_err(|e| anyhow!("{}: {e}", p.display()))
            })
            .transpose()?
    };
    let prompt: Vec<u32> = match (&args.token_ids, &args.prompt) {
        (Some(ids), _) => ids
            .iter()
            .map(|s| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| anyhow!("--token-ids: `{s}` is not a token id"))
            })
            .collect::<Result<_>>()?,
        (None, Some(text)) => {
            let tok = tokenizer
                .as_ref()
                .ok_or_else(|| anyhow!("--prompt needs a tokenizer.json in {}", dir.display()))?;
            tok.encode(text.as_str(), false)
                .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?
                .get_ids()
                .to_vec()
        }
        (None, None) => bail!("give --token-ids or --prompt"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let opts = LoadOptions {
        progress: !args.json,
        ..Default::default()
    };
    let model = Glm4Moe::<B>::load(dir, device, &opts).context("loading the model")?;
    if let Some(&bad) = prompt
        .iter()
        .find(|&&t| t as usize >= model.config.vocab_size)
    {
        bail!(
            "token id {bad} is outside the vocabulary (size {})",
            model.config.vocab_size
        );
    }
    let gen_opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        stop_token_ids: if args.ignore_eos {
            vec![]
        } else {
            eos_ids(dir, &model.config.eos_token_ids)
        },
        ..Default::default()
    };
    let mut picker: Box<dyn TokenPicker> = if args.temperature == 0.0 {
        Box::new(Greedy)
    } else {
        let params = replica::sampler::SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: Some(args.seed),
            ..Default::default()
        };
        Box::new(Sampler {
            seq: replica::sampler::SeqSampler::new(params, args.seed, &prompt, vec![]),
            // never sample the padded rows past the tokenizer's vocabulary
            valid: tokenizer
                .as_ref()
                .map(|t| t.get_vocab_size(true))
                .unwrap_or(model.config.vocab_size),
        })
    };
    let out = generate(&model, &prompt, &gen_opts, picker.as_mut())?;
    if args.json {
        let mut v = serde_json::json!({ "token_ids": out });
        if let (Some(tok), true) = (&tokenizer, args.prompt.is_some()) {
            v["text"] = tok.decode(&out, true).unwrap_or_default().into();
        }
        println!("{v}");
    } else if let Some(tok) = &tokenizer {
        println!(
            "{}",
            tok.decode(&out, true)
                .map_err(|e| anyhow!("decoding: {e}"))?
        );
    } else {
        println!(
            "{}",
            out.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        );
    }
    Ok(())
}

/// EOS ids: generation_config.json wins over config.json (as in transformers).
pub fn eos_ids(dir: &Path, config_eos: &[u32]) -> Vec<u32> {
    let from_gen = std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| match &v["eos_token_id"] {
            serde_json::Value::Array(a) => Some(
                a.iter()
                    .filter_map(|x| x.as_u64().map(|n| n as u32))
                    .collect(),
            ),
            serde_json::Value::Number(n) => n.as_u64().map(|n| vec![n as u32]),
            _ => None,
        });
    from_gen.unwrap_or_else(|| config_eos.to_vec())
}
