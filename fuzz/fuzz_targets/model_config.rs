//! `config.json` parsing (`model::Glm4MoeConfig::from_json`): arbitrary text is either a config
//! that passed `validate`, whose derived sizes (weights, KV blocks) compute without overflow,
//! or a `ModelError`; never a panic.
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
            // The sizes the loader and the KV cache derive (plain arithmetic: overflow panics
            // in these debug-assertion builds).
            let layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers;
            let _kv_block = cfg.kv_bytes_per_token_per_layer(4) * layers * 256;
            let _embed = cfg.vocab_size * cfg.hidden_size * 2;
            let _q = cfg.num_attention_heads * cfg.head_dim * cfg.hidden_size;
            let _experts = (cfg.n_routed_experts + cfg.n_shared_experts)
                * cfg.moe_intermediate_size
                * cfg.hidden_size
                * 3;
            let _dense = cfg.intermediate_size * cfg.hidden_size * 3;
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
