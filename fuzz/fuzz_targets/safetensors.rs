//! Checkpoint tensor files (`model::checkpoint::TensorStore`): arbitrary bytes written as
//! `model.safetensors` (raw, or as a header framed with its correct length so the fuzzer reaches
//! the JSON and offset checks), optionally with a `model.safetensors.index.json` naming shards.
//! Huge sizes, overlapping or out-of-range offsets and unknown dtypes must be errors; every
//! tensor a store lists must be readable within the file; never a panic or a huge allocation.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use model::checkpoint::{dtype_histogram, to_f32, TensorStore};

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("glmfleet-fuzz-st-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = dir();
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let _ = std::fs::remove_file(&index);
    let file = match mode % 3 {
        // raw bytes
        0 => rest.to_vec(),
        // HEADER_JSON \0 DATA, framed with the header's true length
        1 => {
            let nul = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let mut f = (nul as u64).to_le_bytes().to_vec();
            f.extend_from_slice(&rest[..nul]);
            f.extend_from_slice(rest.get(nul + 1..).unwrap_or_default());
            f
        }
        // INDEX_JSON \0 SHARD_BYTES: the shard is written as model.safetensors
        _ => {
            let nul = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            std::fs::write(&index, &rest[..nul]).expect("write index");
            rest.get(nul + 1..).unwrap_or_default().to_vec()
        }
    };
    std::fs::write(&single, &file).expect("write shard");
    let Ok(store) = TensorStore::open(dir) else {
        return;
    };
    let names: Vec<String> = store.names().map(str::to_owned).collect();
    let mut total = 0usize;
    for name in &names {
        assert!(store.contains(name));
        let t = store.get(name).expect("a listed tensor is readable");
        assert!(t.bytes.len() <= file.len(), "tensor larger than its file");
        total += t.bytes.len();
        if let Ok(values) = to_f32(&t) {
            assert!(values.len() <= t.bytes.len());
        }
    }
    assert!(total as u64 <= store.total_bytes() || names.is_empty());
    let _ = dtype_histogram(&store);
    assert!(store.get("\u{0}no such tensor").is_err());
});
