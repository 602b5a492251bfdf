//! What an engine that keeps its state on a device hands back from a step, and how its MTP pass
//! addresses hidden rows. Plain data, so runners and their tests use them without the GPU build.

/// What a step hands back.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutput {
    /// No sequence sampled (a prefill chunk short of its prompt's end).
    Nothing,
    /// `[rows, vocab]` f32 for the host sampler.
    Logits { data: Vec<f32>, rows: usize },
    /// One id per sampled row, drawn on the device.
    Tokens(Vec<u32>),
}

/// Where one row of an MTP pass gets its hidden input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenRow {
    /// Row `i` of the last verify step.
    Verified(usize),
    /// Slot `i` of the kept pool (the engine's `mtp_slots`).
    Kept(usize),
}

/// What the engine's `keep_rows` copies into the kept pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepFrom {
    /// Rows of the last verify step's final-normed hidden states.
    Verified,
    /// Rows of the last MTP pass's output hidden states (the input of a further draft step).
    MtpOutput,
}
