//! `config.json` parsing (`model::Glm4MoeConfig::from_json`): arbitrary text is either a config
//! that passed `validate` (so its derived sizes are usable) or a `ModelError`; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::Glm4MoeConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Glm4MoeConfig::from_json(text) {
        Ok(cfg) => {
            cfg.validate().expect("from_json returns validated configs");
            let rot = cfg.rotary_dim();
            assert!(rot >= 2 && rot % 2 == 0 && rot <= cfg.head_dim);
            assert!(cfg.num_attention_heads % cfg.num_key_value_heads == 0);
            let _ = cfg.is_moe_layer(cfg.num_hidden_layers);
            let _ = cfg.kv_bytes_per_token_per_layer(2);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
