//! The first MTP pass after a verified step, planned on the host for every runner that drafts.
//!
//! The MTP entry at position `p` combines the target's final hidden state at `p` with the token at
//! `p + 1`, and the MTP layer's KV must hold an entry for every position the target computed. So
//! the pass covers all newly verified positions of every sequence of the batch. A prefill chunk's
//! last position waits for the next chunk's first token: its hidden row is kept per sequence
//! (`pending`, in whatever form the runner keeps rows) and joins the next chunk's segment. A
//! sampling sequence's segment ends with the token just chosen after its verified prefix, and its
//! last row's logits propose the first draft token. Rejected draft positions are never covered.

use std::collections::HashMap;

use model::SeqInput;
use scheduler::SchedulerOutput;

use super::{DraftSeq, RunnerError};

/// One sequence's share of the MTP pass.
pub(crate) struct DraftSegment {
    pub tokens: Vec<u32>,
    pub start_pos: usize,
    /// Index into the batch (for the block table).
    pub seq: usize,
    /// Whether its last row starts a draft chain.
    pub drafts: bool,
}

/// Where a run of the pass's rows gets its hidden input.
pub(crate) enum HiddenRun<P> {
    /// Rows `start..start + len` of the verified step.
    Verified { start: usize, len: usize },
    /// One row kept from an earlier step.
    Pending(P),
}

/// A draft chain's start: the row of the pass whose output feeds the next draft step.
pub(crate) struct ChainStart {
    pub id: u64,
    /// Row of the MTP pass.
    pub row: usize,
    /// Its position.
    pub pos: usize,
    /// Index into the batch.
    pub seq: usize,
}

pub(crate) struct DraftPlan<P> {
    pub segments: Vec<DraftSegment>,
    /// The hidden inputs of the pass's rows, in row order.
    pub hidden: Vec<HiddenRun<P>>,
    /// Verified rows to keep for the next chunk: (sequence id, position, verified row).
    pub keep: Vec<(u64, usize, usize)>,
    /// Per entry of the drafting sequences: its logits row in the pass.
    pub logit_rows: Vec<usize>,
    /// One per drafting segment, in pass order.
    pub chains: Vec<ChainStart>,
    /// Rows taken out of `pending` that the pass does not use (stale after a preemption, or of a
    /// sequence that finished): a runner that pools its rows gets them back here.
    pub released: Vec<P>,
}

impl<P> DraftPlan<P> {
    /// The pass's sequences, with the block tables of `batch` (the batch it was planned for).
    pub fn inputs<'a>(&'a self, batch: &'a SchedulerOutput) -> Vec<SeqInput<'a>> {
        self.segments
            .iter()
            .map(|seg| SeqInput {
                tokens: &seg.tokens,
                start_pos: seg.start_pos,
                block_table: &batch.seqs[seg.seq].block_table,
                sample: seg.drafts,
            })
            .collect()
    }
}

/// Plans the pass after `batch` was verified (`verified_rows` rows computed), for the sequences
/// that draft (`seqs`, whose logits rows come back in that order). Takes the carried rows out of
/// `pending` (stale ones are dropped); the rows to carry next are in [`DraftPlan::keep`].
pub(crate) fn plan_draft<P>(
    batch: &SchedulerOutput,
    seqs: &[DraftSeq],
    pending: &mut HashMap<u64, (usize, P)>,
    verified_rows: usize,
) -> Result<DraftPlan<P>, RunnerError> {
    let total: usize = batch.seqs.iter().map(|s| s.token_ids.len()).sum();
    if verified_rows != total {
        return Err(RunnerError::Execution(format!(
            "draft: the verified step computed {verified_rows} tokens, this batch has {total}"
        )));
    }
    let wanted: HashMap<u64, &DraftSeq> = seqs.iter().map(|d| (d.id, d)).collect();
    let mut plan = DraftPlan {
        segments: Vec::new(),
        hidden: Vec::new(),
        keep: Vec::new(),
        logit_rows: Vec::with_capacity(seqs.len()),
        chains: Vec::new(),
        released: Vec::new(),
    };
    let mut row = 0;
    let mut pass_rows = 0;
    for (i, s) in batch.seqs.iter().enumerate() {
        let n = s.token_ids.len();
        let r0 = row;
        row += n;
        let carried = match pending.remove(&s.id) {
            Some((pos, p)) if pos + 1 == s.start_pos => Some((pos, p)),
            Some((_, stale)) => {
                plan.released.push(stale);
                None
            }
            None => None,
        };
        let (valid, next) = if !s.sample {
            (n, None)
        } else if let Some(d) = wanted.get(&s.id) {
            (d.num_verified.clamp(1, n), Some(d.next_token))
        } else {
            // Finished this step: nothing more to draft.
            plan.released.extend(carried.map(|(_, p)| p));
            continue;
        };
        let mut tokens = Vec::with_capacity(valid + 1);
        let mut start_pos = s.start_pos;
        if let Some((pos, p)) = carried {
            tokens.push(s.token_ids[0]);
            plan.hidden.push(HiddenRun::Pending(p));
            start_pos = pos;
        }
        tokens.extend_from_slice(&s.token_ids[1..valid]);
        let own = match next {
            Some(t) => {
                tokens.push(t);
                valid
            }
            None => {
                plan.keep
                    .push((s.id, s.start_pos + valid - 1, r0 + valid - 1));
                valid - 1
            }
        };
        if own > 0 {
            plan.hidden.push(HiddenRun::Verified {
                start: r0,
                len: own,
            });
        }
        if tokens.is_empty() {
            continue;
        }
        pass_rows += tokens.len();
        if next.is_some() {
            plan.chains.push(ChainStart {
                id: s.id,
                row: pass_rows - 1,
                pos: start_pos + tokens.len() - 1,
                seq: i,
            });
        }
        plan.segments.push(DraftSegment {
            tokens,
            start_pos,
            seq: i,
            drafts: next.is_some(),
        });
    }
    for d in seqs {
        let Some(c) = plan.chains.iter().find(|c| c.id == d.id) else {
            return Err(RunnerError::Execution(format!(
                "draft: sequence {} is not a sampling sequence of the batch",
                d.id
            )));
        };
        plan.logit_rows.push(c.row);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use scheduler::ScheduledSeq;

    use super::*;

    fn seq(id: u64, tokens: &[u32], start: usize, sample: bool) -> ScheduledSeq {
        ScheduledSeq {
            id,
            token_ids: tokens.to_vec(),
            start_pos: start,
            block_table: vec![0, 1, 2, 3],
            sample,
            num_draft_tokens: 0,
        }
    }

    fn batch(seqs: Vec<ScheduledSeq>) -> SchedulerOutput {
        SchedulerOutput {
            num_batched_tokens: seqs.iter().map(|s| s.token_ids.len()).sum(),
            seqs,
            preempted: vec![],
        }
    }

    fn runs(plan: &DraftPlan<&'static str>) -> Vec<String> {
        plan.hidden
            .iter()
            .map(|h| match h {
                HiddenRun::Verified { start, len } => format!("v{start}+{len}"),
                HiddenRun::Pending(p) => p.to_string(),
            })
            .collect()
    }

    #[test]
    fn chunks_carry_their_last_row_and_samplers_start_chains() {
        // Seq 1: a prefill chunk (positions 4..8) whose previous chunk's last row is pending.
        // Seq 2: a decode step with two drafts, the first accepted.
        let mut pending = HashMap::from([(1, (3, "p1")), (9, (0, "stale"))]);
        let b = batch(vec![
            seq(1, &[10, 11, 12, 13], 4, false),
            seq(2, &[20, 21, 22], 30, true),
        ]);
        let d = DraftSeq {
            id: 2,
            num_verified: 2,
            next_token: 99,
        };
        let plan = plan_draft(&b, &[d], &mut pending, 7).unwrap();
        // Seq 1: positions 3..7 (its carried row and three of its own; row 3 waits).
        assert_eq!(plan.segments[0].tokens, vec![10, 11, 12, 13]);
        assert_eq!(plan.segments[0].start_pos, 3);
        assert!(!plan.segments[0].drafts);
        assert_eq!(plan.keep, vec![(1, 7, 3)]);
        // Seq 2: the accepted prefix (positions 30, 31) and the chosen token after it.
        assert_eq!(plan.segments[1].tokens, vec![21, 99]);
        assert_eq!(plan.segments[1].start_pos, 30);
        assert_eq!(runs(&plan), ["p1", "v0+3", "v4+2"]);
        let rows: usize = plan.segments.iter().map(|s| s.tokens.len()).sum();
        assert_eq!(rows, 6);
        assert_eq!(plan.logit_rows, vec![5]);
        let c = &plan.chains[0];
        assert_eq!((c.id, c.row, c.pos, c.seq), (2, 5, 31, 1));
        // Seq 1's carried row was taken out and used; seq 9 (not in the batch) keeps its row.
        assert!(!pending.contains_key(&1));
        assert!(pending.contains_key(&9));
        assert!(plan.released.is_empty());
    }

    #[test]
    fn a_stale_pending_row_is_dropped_and_finished_seqs_skipped() {
        let mut pending = HashMap::from([(1, (2, "old")), (2, (5, "p2"))]);
        // Seq 1 resumes at 8 (not 3): its pending row no longer fits. Seq 2 samples but is not
        // drafting (finished): nothing of it enters the pass.
        let b = batch(vec![seq(1, &[1, 2], 8, false), seq(2, &[5], 6, true)]);
        let plan = plan_draft(&b, &[], &mut pending, 3).unwrap();
        assert_eq!(plan.segments.len(), 1);
        assert_eq!(plan.segments[0].tokens, vec![2]);
        assert_eq!(plan.segments[0].start_pos, 8);
        assert_eq!(runs(&plan), ["v0+1"]);
        assert_eq!(plan.keep, vec![(1, 9, 1)]);
        assert!(pending.is_empty());
        // Both rows taken out come back: seq 1's is stale, seq 2 finished.
        assert_eq!(plan.released, vec!["old", "p2"]);
    }

    #[test]
    fn mismatches_are_errors() {
        let b = batch(vec![seq(1, &[1, 2], 0, true)]);
        let mut pending: HashMap<u64, (usize, &str)> = HashMap::new();
        assert!(plan_draft(&b, &[], &mut pending, 3).is_err());
        let stranger = DraftSeq {
            id: 7,
            num_verified: 1,
            next_token: 1,
        };
        assert!(plan_draft(&b, &[stranger], &mut pending, 2).is_err());
    }
}
