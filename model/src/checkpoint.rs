//! A checkpoint folder's tensors, memory-mapped: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Nothing is copied until a tensor is asked for, and every failure
//! (a missing shard, a corrupt header, a tensor out of the file's bounds) names the file or tensor.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::error::{ModelError, Result};

/// One tensor as stored: dtype, shape and raw little-endian bytes (borrowed from the mmap).
pub struct RawTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// All tensors of a checkpoint, by name.
pub struct TensorStore {
    shards: Vec<Shard>,
    /// name -> shard index
    index: BTreeMap<String, usize>,
}

impl TensorStore {
    /// Opens `dir/model.safetensors.index.json` (sharded) or `dir/model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFolder(dir.to_path_buf()));
        }
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
                    path: index_path.clone(),
                    message: e.to_string(),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Safetensors {
                    path: index_path.clone(),
                    message: "no `weight_map` object".into(),
                })?;
            let mut names: Vec<String> = map
                .values()
                .map(|f| {
                    f.as_str()
                        .map(String::from)
                        .ok_or_else(|| ModelError::Safetensors {
                            path: index_path.clone(),
                            message: format!("weight_map value {f} is not a file name"),
                        })
                })
                .collect::<Result<_>>()?;
            names.sort();
            names.dedup();
            names
                .into_iter()
                .map(|n| safe_join(dir, &n))
                .collect::<Result<_>>()?
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(ModelError::Safetensors {
                    path: single,
                    message: "no model.safetensors or model.safetensors.index.json in the folder"
                        .into(),
                });
            }
            vec![single]
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut index = BTreeMap::new();
        for path in files {
            let shard = Shard::open(&path)?;
            let si = shards.len();
            for name in shard.metadata.tensors().keys() {
                if index.insert(name.clone(), si).is_some() {
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` appears in more than one shard"),
                    });
                }
            }
            shards.push(shard);
        }
        Ok(Self { shards, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Result<RawTensor<'_>> {
        let (key, &si) = self
            .index
            .get_key_value(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let shard = &self.shards[si];
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let (start, end) = info.data_offsets;
        let bytes = shard
            .mmap
            .get(shard.data_start + start..shard.data_start + end)
            .ok_or_else(|| ModelError::Safetensors {
                path: shard.path.clone(),
                message: format!("tensor `{name}` lies outside the file"),
            })?;
        Ok(RawTensor {
            name: key,
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes,
        })
    }

    /// Total bytes of tensor data across shards (for progress reporting).
    pub fn total_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| (s.mmap.len() - s.data_start) as u64)
            .sum()
    }
}

/// A shard name from an index file may not leave the checkpoint folder.
fn safe_join(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    let ok = p
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !ok || name.is_empty() {
        return Err(ModelError::Safetensors {
            path: dir.join("model.safetensors.index.json"),
            message: format!("shard name `{name}` escapes the model folder"),
        });
    }
    Ok(dir.join(p))
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the checkpoint is opened read-only; a concurrent writer truncating it is outside
        // what any loader can defend against (the same contract as transformers/safetensors).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (n, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                path: path.to_path_buf(),
                message: format!("{e:?}"),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            data_start: 8 + n,
            mmap,
            metadata,
        })
    }
}

/// Element conversions from stored dtypes to f32 on the host.
pub fn to_f32(t: &RawTensor<'_>) -> Result<Vec<f32>> {
    let b = t.bytes;
    Ok(match t.dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F8_E4M3 => b.iter().map(|&x| crate::fp8::e4m3_to_f32(x)).collect(),
        other => {
            return Err(ModelError::Dtype {
                name: t.name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// Checks a tensor's shape, naming it on mismatch.
pub fn expect_shape(t: &RawTensor<'_>, expected: &[usize]) -> Result<()> {
    if t.shape != expected {
        return Err(ModelError::Shape {
            name: t.name.to_string(),
            got: t.shape.clone(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

/// Counts how many tensors of each dtype a store holds (diagnostics, `glmfleet` load summary).
pub fn dtype_histogram(store: &TensorStore) -> HashMap<String, usize> {
    let mut h = HashMap::new();
    for n in store.names() {
        if let Ok(t) = store.get(n) {
            *h.entry(format!("{:?}", t.dtype)).or_insert(0) += 1;
        }
    }
    h
}
