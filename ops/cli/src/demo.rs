//! The embedded demo model: a tiny random GLM-4.5-architecture checkpoint with a GLM tokenizer
//! (model/demo/, built by make_demo.py), compiled into the binary so `glmfleet up` runs on a fresh machine
//! with no downloads. It is written out once to a cache folder keyed by its content hash.

use std::path::PathBuf;

const FILES: &[(&str, &[u8])] = &[
    (
        "config.json",
        include_bytes!("../../../model/demo/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../../model/demo/generation_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../../model/demo/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../../model/demo/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../../model/demo/tokenizer_config.json"),
    ),
];

/// The name users pass to mean the embedded model.
pub const DEMO: &str = "demo";

fn content_hash() -> u64 {
    // FNV-1a over names and contents: stable across builds of the same files.
    let mut h: u64 = 0xcbf29ce484222325;
    for (name, data) in FILES {
        for b in name.bytes().chain(data.iter().copied()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

fn cache_root() -> PathBuf {
    std::env::var_os("GLMFLEET_CACHE")
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|c| PathBuf::from(c).join("glmfleet").into_os_string())
        })
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/glmfleet")))
        .unwrap_or_else(|| std::env::temp_dir().join("glmfleet"))
}

/// Writes the demo checkpoint (once) and returns its folder.
pub fn materialize() -> anyhow::Result<PathBuf> {
    let dir = cache_root().join(format!("demo-{:016x}", content_hash()));
    if FILES.iter().all(|(n, d)| {
        std::fs::metadata(dir.join(n))
            .map(|m| m.len() == d.len() as u64)
            .unwrap_or(false)
    }) {
        return Ok(dir);
    }
    // write into a unique temp folder, then rename: concurrent replicas starting at once never see a
    // half-written checkpoint
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    std::fs::create_dir_all(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot create demo model folder {}: {e}", tmp.display()))?;
    for (name, data) in FILES {
        std::fs::write(tmp.join(name), data)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.join(name).display()))?;
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // another process won the race; use its copy
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dir)
}
