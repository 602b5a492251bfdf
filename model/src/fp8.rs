//! FP8-E4M3 (the `float8_e4m3fn` format: no infinities, max 448) on the host: decoding for weight
//! dequantization and round-to-nearest-even encoding for dynamic activation quantization. The GPU
//! kernels do the same arithmetic in hardware; these are their reference twins.

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// Decodes one E4M3 byte. 0x7F/0xFF are NaN.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0F) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0F && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// The 127 non-negative finite E4M3 values in increasing order (index = byte value).
fn positive_table() -> &'static [f32; 127] {
    static TABLE: std::sync::OnceLock<[f32; 127]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0f32; 127];
        for (i, v) in t.iter_mut().enumerate() {
            *v = e4m3_to_f32(i as u8);
        }
        t
    })
}

/// Encodes `x` to E4M3 with round-to-nearest-even, saturating at ±448 (as `torch.float8_e4m3fn` casts
/// after clamping). NaN encodes to 0x7F.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    let t = positive_table();
    // first index with t[i] >= a
    let hi = t.partition_point(|&v| v < a);
    let code = if hi == 0 {
        0
    } else if hi >= t.len() {
        126
    } else {
        let lo = hi - 1;
        let (dl, dh) = (a - t[lo], t[hi] - a);
        if dl < dh {
            lo
        } else if dh < dl {
            hi
        } else if lo % 2 == 0 {
            lo // tie: even mantissa
        } else {
            hi
        }
    };
    sign | code as u8
}

/// Rounds to the nearest E4M3 value (as f32).
pub fn round_e4m3(x: f32) -> f32 {
    e4m3_to_f32(f32_to_e4m3(x))
}

/// Dynamic quantization of one activation row: returns the scale `s = max|x| / 448` (clamped away from
/// zero) and writes `round_e4m3(x / s)` into `out`.
pub fn quantize_row(x: &[f32], out: &mut [f32]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let s = (amax / E4M3_MAX).max(1e-12);
    for (o, v) in out.iter_mut().zip(x) {
        *o = round_e4m3(v / s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0xFE), -448.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert!(e4m3_to_f32(0x7F).is_nan());
    }

    #[test]
    fn roundtrip_every_code() {
        for b in 0u8..=255 {
            if b & 0x7F == 0x7F {
                continue;
            }
            let v = e4m3_to_f32(b);
            let back = f32_to_e4m3(v);
            // +0 and -0 both decode to 0.0; compare values
            assert_eq!(e4m3_to_f32(back), v, "code {b:#x}");
        }
    }

    #[test]
    fn rounding_and_saturation() {
        assert_eq!(round_e4m3(1000.0), 448.0);
        assert_eq!(round_e4m3(-1000.0), -448.0);
        // 1.0 and 1.125 are neighbours; 1.0625 is a tie -> even mantissa (1.0)
        assert_eq!(round_e4m3(1.0625), 1.0);
        assert_eq!(round_e4m3(1.07), 1.125);
        let mut out = [0.0; 3];
        let s = quantize_row(&[0.5, -2.0, 1.0], &mut out);
        assert!((s - 2.0 / 448.0).abs() < 1e-9);
        assert_eq!(out[1], -448.0);
    }
}
