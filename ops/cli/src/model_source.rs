//! Where a model comes from: the embedded demo (`demo` or nothing), a local checkpoint folder, or a
//! Hugging Face repo id (`org/name`, downloaded through the hub when online, cached like the hub's own
//! clients do). The result is always a local folder.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use crate::demo;

/// Files a checkpoint folder may hold.
#[cfg(feature = "hub")]
const HUB_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
    "model.safetensors",
];

pub fn resolve(model: Option<&str>) -> Result<PathBuf> {
    let Some(m) = model.filter(|m| *m != demo::DEMO) else {
        return demo::materialize();
    };
    let path = PathBuf::from(m);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!(
                "{} has no config.json: not a Hugging Face checkpoint folder",
                path.display()
            );
        }
        return Ok(path);
    }
    if looks_like_repo_id(m) && !path.exists() {
        return download(m);
    }
    Err(anyhow!("model folder not found: {m}"))
}

fn looks_like_repo_id(m: &str) -> bool {
    let parts: Vec<&str> = m.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with('.')
        })
}

#[cfg(feature = "hub")]
fn download(repo: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| anyhow!("Hugging Face hub: {e}"))?;
    let r = api.model(repo.to_string());
    let cfg = r.get("config.json").map_err(|e| {
        anyhow!("cannot download {repo} (offline, private without HF_TOKEN, or no such repo): {e}")
    })?;
    let dir = cfg
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("bad hub cache path"))?;
    for f in HUB_FILES.iter().filter(|f| **f != "config.json") {
        // optional files: a 404 is fine
        let _ = r.get(f);
    }
    if let Ok(idx) = std::fs::read_to_string(dir.join("model.safetensors.index.json")) {
        let v: serde_json::Value =
            serde_json::from_str(&idx).map_err(|e| anyhow!("{repo}: bad index: {e}"))?;
        let mut shards: Vec<&str> = v["weight_map"]
            .as_object()
            .map(|m| m.values().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        // The index comes from the remote repo: a shard name like `../../x` would make the hub
        // client write (and link) outside the cache's snapshot folder before the loader's own
        // check refuses it.
        if let Some(bad) = shards.iter().find(|s| !stays_inside(s)) {
            bail!("{repo}: shard name `{bad}` in model.safetensors.index.json escapes the model folder");
        }
        for s in shards {
            r.get(s)
                .map_err(|e| anyhow!("{repo}: downloading {s}: {e}"))?;
        }
    }
    Ok(dir)
}

/// A relative path of plain names only (no `..`, no root, no `.`): it stays inside the folder
/// it is joined to.
#[cfg_attr(not(feature = "hub"), allow(dead_code))]
fn stays_inside(name: &str) -> bool {
    !name.is_empty()
        && std::path::Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(not(feature = "hub"))]
fn download(repo: &str) -> Result<PathBuf> {
    bail!("{repo} is not a local folder, and this build has no Hugging Face hub support (feature `hub`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("zai-org/GLM-4.5-Air-FP8"));
        assert!(!looks_like_repo_id("../etc/passwd"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("/abs"));
    }

    #[test]
    fn hub_shard_names_must_stay_inside_the_snapshot() {
        assert!(stays_inside("model-00001-of-00002.safetensors"));
        assert!(stays_inside("sub/model.safetensors"));
        for bad in [
            "",
            "../x.safetensors",
            "/etc/passwd",
            "a/../../x",
            "./x",
            "a/./b/..",
        ] {
            assert!(!stays_inside(bad), "{bad:?}");
        }
    }

    #[test]
    fn missing_folder_is_an_error() {
        let e = resolve(Some("./definitely/not/here/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found"), "{e}");
    }
}
