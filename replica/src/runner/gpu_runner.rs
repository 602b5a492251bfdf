//! The GPU runner (feature `gpu`): the model crate's CUDA engine ([`model::gpu::GpuModel`]) as the
//! [`DeviceEngine`] of a [`DeviceRunner`].

use model::gpu::GpuModel;
use model::sample::DeviceSampling;
use model::step::{HiddenRow, KeepFrom, StepOutput};
use model::SeqInput;

use super::device_runner::{DeviceEngine, DeviceRunner};

pub type GpuRunner = DeviceRunner<GpuModel>;

impl DeviceEngine for GpuModel {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn set_valid_vocab(&mut self, n: usize) {
        GpuModel::set_valid_vocab(self, n)
    }
    fn step(
        &mut self,
        seqs: &[SeqInput<'_>],
        sampling: Option<&[DeviceSampling]>,
    ) -> model::Result<StepOutput> {
        GpuModel::step(self, seqs, sampling)
    }
    fn last_logits(&mut self, rows: &[usize]) -> model::Result<Vec<f32>> {
        GpuModel::last_logits(self, rows)
    }
    fn recycle(&mut self, data: Vec<f32>) {
        GpuModel::recycle_host(self, data)
    }
    fn truncates_on_device(&self) -> bool {
        GpuModel::truncates_on_device(self)
    }
    fn has_mtp(&self) -> bool {
        GpuModel::has_mtp(self)
    }
    fn mtp_slots(&self) -> usize {
        GpuModel::mtp_slots(self)
    }
    fn verify_step(
        &mut self,
        seqs: &[SeqInput<'_>],
        logit_rows: &[usize],
        greedy: bool,
    ) -> model::Result<StepOutput> {
        GpuModel::verify_step(self, seqs, logit_rows, greedy)
    }
    fn mtp_step(
        &mut self,
        seqs: &[SeqInput<'_>],
        hidden: &[HiddenRow],
        logit_rows: &[usize],
        greedy: bool,
    ) -> model::Result<StepOutput> {
        GpuModel::mtp_step(self, seqs, hidden, logit_rows, greedy)
    }
    fn keep_rows(&mut self, from: KeepFrom, rows: &[(usize, usize)]) -> model::Result<()> {
        GpuModel::keep_rows(self, from, rows)
    }
}
