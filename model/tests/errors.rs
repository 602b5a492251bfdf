//! Bad checkpoints and bad input give one clear error naming the culprit, never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, to_f32, B};
use model::{Glm4Moe, LoadOptions, SeqInput};

fn opts() -> LoadOptions {
    LoadOptions {
        progress: false,
        ..Default::default()
    }
}

/// Copies a fixture to a temp dir and lets the test edit it.
fn edited(name: &str, tag: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("glmfleet-model-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    edit(&dst);
    dst
}

fn load_err(dir: &Path) -> String {
    match Glm4Moe::<B>::load(dir, &Default::default(), &opts()) {
        Ok(_) => panic!("expected an error for {}", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites model.safetensors through a closure over (name -> (dtype, shape, bytes)).
fn rewrite_tensors(
    dir: &Path,
    f: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    f(&mut v);
    let views: Vec<(String, safetensors::tensor::TensorView)> = v
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn missing_folder() {
    let e = load_err(Path::new("/nonexistent/glm"));
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let d = edited("tiny-b", "missing", |d| {
        rewrite_tensors(d, |v| {
            v.retain(|(n, ..)| n != "model.layers.1.mlp.experts.3.up_proj.weight")
        })
    });
    let e = load_err(&d);
    assert!(
        e.contains("model.layers.1.mlp.experts.3.up_proj.weight") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn misshaped_tensor_is_named() {
    let d = edited("tiny-b", "shape", |d| {
        rewrite_tensors(d, |v| {
            let t = v
                .iter_mut()
                .find(|(n, ..)| n == "model.norm.weight")
                .unwrap();
            t.2 = vec![t.2[0] / 2];
            t.3.truncate(t.3.len() / 2);
        })
    });
    let e = load_err(&d);
    assert!(
        e.contains("model.norm.weight") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let d = edited("tiny-b", "extra", |d| {
        rewrite_tensors(d, |v| {
            v.push((
                "model.layers.0.mystery.weight".into(),
                safetensors::Dtype::F32,
                vec![1],
                vec![0; 4],
            ))
        })
    });
    let e = load_err(&d);
    assert!(e.contains("model.layers.0.mystery.weight"), "{e}");
}

#[test]
fn unknown_dtype_is_named() {
    let d = edited("tiny-b", "dtype", |d| {
        rewrite_tensors(d, |v| {
            let t = v
                .iter_mut()
                .find(|(n, ..)| n == "model.norm.weight")
                .unwrap();
            t.1 = safetensors::Dtype::I16;
        })
    });
    let e = load_err(&d);
    assert!(
        e.contains("model.norm.weight") && e.contains("dtype"),
        "{e}"
    );
}

#[test]
fn corrupt_safetensors_header() {
    let d = edited("tiny-b", "corrupt", |d| {
        let mut b = std::fs::read(d.join("model.safetensors")).unwrap();
        b[0] = 0xFF;
        b[1] = 0xFF;
        b[2] = 0xFF;
        std::fs::write(d.join("model.safetensors"), b).unwrap();
    });
    let e = load_err(&d);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn bad_config_is_named() {
    let d = edited("tiny-b", "config", |d| {
        let p = d.join("config.json");
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 99");
        std::fs::write(p, s).unwrap();
    });
    let e = load_err(&d);
    assert!(e.contains("num_experts_per_tok"), "{e}");
}

#[test]
fn shard_index_cannot_escape_folder() {
    let d = edited("tiny-b", "escape", |d| {
        std::fs::rename(
            d.join("model.safetensors"),
            d.join("model-00001-of-00001.safetensors"),
        )
        .unwrap();
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"model.norm.weight":"../../etc/passwd"}}"#,
        )
        .unwrap();
    });
    let e = load_err(&d);
    assert!(e.contains("escapes"), "{e}");
}

#[test]
fn sharded_checkpoint_loads() {
    // split tiny-b into two shards with an index
    let d = edited("tiny-b", "shards", |d| {
        let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        let (a, b) = names.split_at(names.len() / 2);
        let mut map = serde_json::Map::new();
        for (i, part) in [a, b].iter().enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", i + 1);
            let views: Vec<_> = part
                .iter()
                .map(|n| (n.clone(), st.tensor(n).unwrap()))
                .collect();
            safetensors::serialize_to_file(views, None, &d.join(&file)).unwrap();
            for n in part.iter() {
                map.insert(n.clone(), serde_json::Value::String(file.clone()));
            }
        }
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        let idx = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(d.join("model.safetensors.index.json"), idx.to_string()).unwrap();
    });
    Glm4Moe::<B>::load(&d, &Default::default(), &opts()).unwrap();
}

#[test]
fn bad_input_is_an_error() {
    let m = Glm4Moe::<B>::load(&fixture("tiny-b"), &Default::default(), &opts()).unwrap();
    let mut kv = m.new_kv_cache(4, 16).unwrap();
    let table = [0u32, 1];
    let bad_table = [7u32];
    let cases: [(&[u32], &[u32], &str); 4] = [
        (&[9999], &table, "outside the vocabulary"),
        (&[], &table, "no tokens"),
        (&[1; 40], &table, "does not cover"),
        (&[1], &bad_table, "out of range"),
    ];
    for (tokens, block_table, want) in cases {
        let e = m.forward(
            &[SeqInput {
                tokens,
                start_pos: 0,
                block_table,
                sample: true,
            }],
            &mut kv,
        );
        let msg = e.err().unwrap().to_string();
        assert!(msg.contains(want), "{want}: {msg}");
    }
}

#[test]
fn dummy_weights_from_config_alone() {
    // the full code path with random weights, FP8 included, from config.json only
    for name in ["tiny-a", "tiny-b-fp8", "tiny-b-fp8-block"] {
        let cfg = model::Glm4MoeConfig::from_dir(&fixture(name)).unwrap();
        let m = Glm4Moe::<B>::dummy(cfg, &Default::default(), 1, &opts()).unwrap();
        let mut kv = m.new_kv_cache(2, 16).unwrap();
        let out = m
            .forward(
                &[SeqInput {
                    tokens: &[1, 2, 3],
                    start_pos: 0,
                    block_table: &[0, 1],
                    sample: true,
                }],
                &mut kv,
            )
            .unwrap();
        let v = to_f32(out.logits.unwrap());
        assert_eq!(v.len(), m.config.vocab_size);
        assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite logits");
        let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!(std > 1e-3 && std < 1e3, "{name}: logits scale {std}");
    }
}
