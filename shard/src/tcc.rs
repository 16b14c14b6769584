//! The steps of flexible (TCC) transactions and the record that makes several of them durable
//! at once in one shard (a system record, kind 20: a local transaction).
//!
//! A business activity is recorded in its initiator's shard (`Begin`, `Decide`, `Complete`);
//! each branch is a participant's reservation in the shard of the account it touches (`Try`,
//! `Confirm`, `Cancel`). One record holds 1..=17 steps and is applied whole or not at all (it
//! is one log record), so the initiator's own first Try is durable with the activity's begin,
//! and its Confirm or Cancel with the decision. Layout in `docs/FORMAT.md`. Decoding checks
//! every byte and never panics.

use crate::bytes::Reader;
use crate::currency::Currency;
use crate::record::RECORD_VERSION;
use crate::trade::AMOUNT_MAX;

/// The kind of a [`TccRecord`].
pub const KIND_TCC: u8 = 20;
/// Most branches in one activity.
pub const BRANCHES_MAX: usize = 8;
/// Most steps in one record: an activity's begin with a Try of each of its branches.
pub const STEPS_MAX: usize = 2 * BRANCHES_MAX + 1;
const FIXED_BYTES: usize = 16;
/// Bytes of an encoded [`BranchAction`].
pub(crate) const ACTION_BYTES: usize = 20;

/// What a branch reserves at its Try and uses at its Confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BranchAction {
    /// Try moves `amount` from the user's available balance to frozen; Confirm takes it from
    /// frozen into the activity's hands; Cancel gives it back to available.
    Freeze { user_id: u64, currency: Currency, amount: u64 },
    /// Try reserves room for `amount` under the balance limit; Confirm puts it from the
    /// activity's hands into the user's available balance; Cancel releases the room.
    Credit { user_id: u64, currency: Currency, amount: u64 },
    /// A service of the embedder's: the manager calls the participant registered under
    /// `participant` with the activity, the branch and `reference` (the embedder's own key of
    /// what the branch reserves). It has no step in any shard.
    External { participant: u16, reference: u64 },
}

impl BranchAction {
    /// The account the branch moves money in (user, currency) and the amount; `None` for an
    /// embedder's branch.
    pub fn account(&self) -> Option<(u64, Currency, u64)> {
        match *self {
            BranchAction::Freeze { user_id, currency, amount } | BranchAction::Credit { user_id, currency, amount } => {
                Some((user_id, currency, amount))
            }
            BranchAction::External { .. } => None,
        }
    }
}

/// The shard of an embedder's branch in its [`BranchPlan`]: none.
pub const NO_SHARD: u32 = u32::MAX;

/// A branch of an activity as its initiator records it: where it runs and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchPlan {
    /// The physical shard of the branch's account ([`NO_SHARD`] for an embedder's branch).
    pub shard: u32,
    pub branch: u16,
    pub action: BranchAction,
}

/// An activity's branch plans as its entry holds them: up to two (a transfer's) inside the
/// entry, more on the heap. An activity of two branches then costs no allocation to make, to
/// copy into a check's scratch view or to drop, and its first branch (which the entry may
/// keep, `ActivityEntry::keeps_branch`) is read from the entry's own cache lines rather than
/// through a pointer to another.
#[derive(Clone)]
pub struct BranchPlans(Plans);

#[derive(Clone)]
enum Plans {
    /// `len` (1 or 2) plans; a slot past `len` repeats the first.
    Inline {
        len: u8,
        plans: [BranchPlan; 2],
    },
    Heap(Vec<BranchPlan>),
}

// The plans of a transfer fit in two of the entry's cache lines with the rest of it.
const _: () = assert!(std::mem::size_of::<BranchPlans>() <= 72);

impl std::ops::Deref for BranchPlans {
    type Target = [BranchPlan];
    fn deref(&self) -> &[BranchPlan] {
        match &self.0 {
            Plans::Inline { len, plans } => &plans[..usize::from(*len)],
            Plans::Heap(plans) => plans,
        }
    }
}

impl From<&[BranchPlan]> for BranchPlans {
    fn from(plans: &[BranchPlan]) -> BranchPlans {
        BranchPlans(match *plans {
            [one] => Plans::Inline { len: 1, plans: [one, one] },
            [first, second] => Plans::Inline { len: 2, plans: [first, second] },
            _ => Plans::Heap(plans.to_vec()),
        })
    }
}

impl From<Vec<BranchPlan>> for BranchPlans {
    fn from(plans: Vec<BranchPlan>) -> BranchPlans {
        match plans.len() {
            1 | 2 => BranchPlans::from(&plans[..]),
            _ => BranchPlans(Plans::Heap(plans)),
        }
    }
}

impl PartialEq for BranchPlans {
    fn eq(&self, other: &BranchPlans) -> bool {
        **self == **other
    }
}

impl Eq for BranchPlans {}

impl std::fmt::Debug for BranchPlans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Why an activity was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CancelReason {
    /// A branch's Try was refused (too little available, a balance past its limit, a branch
    /// cancelled before its Try arrived).
    TryRefused,
    /// The activity stayed undecided past its timeout (its initiator stopped).
    Timeout,
}

impl CancelReason {
    fn code(self) -> u8 {
        match self {
            CancelReason::TryRefused => 1,
            CancelReason::Timeout => 2,
        }
    }

    fn of(code: u8) -> Option<CancelReason> {
        match code {
            1 => Some(CancelReason::TryRefused),
            2 => Some(CancelReason::Timeout),
            _ => None,
        }
    }
}

/// An activity's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Decision {
    Commit,
    Cancel(CancelReason),
}

impl Decision {
    /// Two bytes: the kind (1 commit, 2 cancel) and the cancel's reason (0 for a commit).
    pub(crate) fn code(self) -> [u8; 2] {
        match self {
            Decision::Commit => [1, 0],
            Decision::Cancel(reason) => [2, reason.code()],
        }
    }

    pub(crate) fn of(code: [u8; 2]) -> Result<Decision, &'static str> {
        match code {
            [1, 0] => Ok(Decision::Commit),
            [2, reason] => Ok(Decision::Cancel(CancelReason::of(reason).ok_or("a cancel of no known reason")?)),
            _ => Err("a decision of an unknown kind"),
        }
    }
}

/// One step of a flexible transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Records an activity in its initiator's shard, with its branches and its deadline.
    Begin {
        activity: u128,
        deadline_ms: u64,
        branches: Vec<BranchPlan>,
    },
    Try {
        activity: u128,
        branch: u16,
        action: BranchAction,
    },
    Confirm {
        activity: u128,
        branch: u16,
    },
    /// Carries the branch's action, so that a Cancel arriving before its Try records what it
    /// fences off.
    Cancel {
        activity: u128,
        branch: u16,
        action: BranchAction,
    },
    Decide {
        activity: u128,
        decision: Decision,
    },
    Complete {
        activity: u128,
    },
}

impl Step {
    /// The activity the step belongs to.
    pub fn activity(&self) -> u128 {
        match *self {
            Step::Begin { activity, .. }
            | Step::Try { activity, .. }
            | Step::Confirm { activity, .. }
            | Step::Cancel { activity, .. }
            | Step::Decide { activity, .. }
            | Step::Complete { activity } => activity,
        }
    }
}

/// Several steps made durable together, in one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TccRecord {
    pub at_ms: u64,
    /// 1..=17 steps, applied in order.
    pub steps: Vec<Step>,
}

/// Appends an activity's branches: their count, then each one's shard, number and action.
pub(crate) fn push_plans(out: &mut Vec<u8>, branches: &[BranchPlan]) {
    out.push(branches.len() as u8);
    for plan in branches {
        out.extend_from_slice(&plan.shard.to_le_bytes());
        out.extend_from_slice(&plan.branch.to_le_bytes());
        push_action(out, &plan.action);
    }
}

/// Appends an action's [`ACTION_BYTES`]: kind (1 freeze, 2 credit), currency, user, amount;
/// or kind 3 (an embedder's), three zero bytes, participant, reference.
pub(crate) fn push_action(out: &mut Vec<u8>, action: &BranchAction) {
    let (kind, currency, first, second) = match *action {
        BranchAction::Freeze { user_id, currency, amount } => (1, currency.bytes(), user_id, amount),
        BranchAction::Credit { user_id, currency, amount } => (2, currency.bytes(), user_id, amount),
        BranchAction::External { participant, reference } => (3, [0; 3], u64::from(participant), reference),
    };
    out.push(kind);
    out.extend_from_slice(&currency);
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&second.to_le_bytes());
}

impl TccRecord {
    pub fn encode(&self) -> Vec<u8> {
        assert!((1..=STEPS_MAX).contains(&self.steps.len()), "a checked number of steps");
        let mut out = Vec::with_capacity(FIXED_BYTES + self.steps.len() * 64);
        out.extend_from_slice(&[RECORD_VERSION, KIND_TCC, self.steps.len() as u8, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        for step in &self.steps {
            let (code, branch) = match step {
                Step::Begin { .. } => (1, None),
                Step::Try { branch, .. } => (2, Some(*branch)),
                Step::Confirm { branch, .. } => (3, Some(*branch)),
                Step::Cancel { branch, .. } => (4, Some(*branch)),
                Step::Decide { .. } => (5, None),
                Step::Complete { .. } => (6, None),
            };
            out.push(code);
            out.extend_from_slice(&step.activity().to_le_bytes());
            if let Some(branch) = branch {
                out.extend_from_slice(&branch.to_le_bytes());
            }
            match step {
                Step::Begin { deadline_ms, branches, .. } => {
                    assert!((1..=BRANCHES_MAX).contains(&branches.len()), "a checked number of branches");
                    out.extend_from_slice(&deadline_ms.to_le_bytes());
                    push_plans(&mut out, branches);
                }
                Step::Try { action, .. } | Step::Cancel { action, .. } => push_action(&mut out, action),
                Step::Decide { decision, .. } => out.extend_from_slice(&decision.code()),
                Step::Confirm { .. } | Step::Complete { .. } => {}
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<TccRecord, &'static str> {
        if bytes.len() < FIXED_BYTES || bytes[3..8] != [0; 5] {
            return Err("tcc record cut short or with reserved bytes set");
        }
        let count = bytes[2] as usize;
        if count == 0 || count > STEPS_MAX {
            return Err("tcc record with no steps or too many");
        }
        let mut reader = Reader::new(bytes, 8, "tcc record cut short");
        let at_ms = reader.u64()?;
        let mut steps = Vec::with_capacity(count);
        for _ in 0..count {
            let code = reader.u8()?;
            let activity = reader.u128()?;
            let step = match code {
                1 => Step::Begin { activity, deadline_ms: reader.u64()?, branches: reader.plans()? },
                2 => Step::Try { activity, branch: reader.u16()?, action: reader.action()? },
                3 => Step::Confirm { activity, branch: reader.u16()? },
                4 => Step::Cancel { activity, branch: reader.u16()?, action: reader.action()? },
                5 => Step::Decide { activity, decision: Decision::of([reader.u8()?, reader.u8()?])? },
                6 => Step::Complete { activity },
                _ => return Err("tcc step of an unknown kind"),
            };
            steps.push(step);
        }
        if !reader.done() {
            return Err("tcc record longer than its steps");
        }
        Ok(TccRecord { at_ms, steps })
    }
}

/// The local transaction's own fields, read off the shared cursor.
impl Reader<'_> {
    pub(crate) fn action(&mut self) -> Result<BranchAction, &'static str> {
        action_of(self.take(ACTION_BYTES)?)
    }

    /// An activity's branches, as [`push_plans`] wrote them: 1..=`BRANCHES_MAX`.
    pub(crate) fn plans(&mut self) -> Result<Vec<BranchPlan>, &'static str> {
        let n = self.u8()? as usize;
        if n == 0 || n > BRANCHES_MAX {
            return Err("an activity with no branches or too many");
        }
        (0..n).map(|_| Ok(BranchPlan { shard: self.u32()?, branch: self.u16()?, action: self.action()? })).collect()
    }
}

/// Decodes an action's [`ACTION_BYTES`].
pub(crate) fn action_of(fixed: &[u8]) -> Result<BranchAction, &'static str> {
    let field = |at: usize| u64::from_le_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
    if fixed[0] == 3 {
        let participant = u16::try_from(field(4)).map_err(|_| "tcc participant out of bounds")?;
        if fixed[1..4] != [0; 3] {
            return Err("tcc embedder's action with a currency");
        }
        return Ok(BranchAction::External { participant, reference: field(12) });
    }
    {
        let currency = Currency::from_bytes(fixed[1..4].try_into().expect("3 bytes")).ok_or("tcc action currency")?;
        let user_id = u64::from_le_bytes(fixed[4..12].try_into().expect("8 bytes"));
        let amount = u64::from_le_bytes(fixed[12..20].try_into().expect("8 bytes"));
        if user_id == 0 || amount == 0 || amount > AMOUNT_MAX {
            return Err("tcc action without its user or with an amount out of bounds");
        }
        match fixed[0] {
            1 => Ok(BranchAction::Freeze { user_id, currency, amount }),
            2 => Ok(BranchAction::Credit { user_id, currency, amount }),
            _ => Err("tcc action of an unknown kind"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system_record::LogRecord;
    use proptest::prelude::*;

    pub(crate) fn sample() -> TccRecord {
        let cny = Currency::parse("CNY").unwrap();
        let freeze = BranchAction::Freeze { user_id: 5, currency: cny, amount: 70 };
        let credit = BranchAction::Credit { user_id: 6, currency: cny, amount: 70 };
        let activity = u128::MAX - 3;
        let branches = vec![
            BranchPlan { shard: 0, branch: 0, action: freeze },
            BranchPlan { shard: 3, branch: 1, action: credit },
        ];
        TccRecord {
            at_ms: 11,
            steps: vec![
                Step::Begin { activity, deadline_ms: 99, branches },
                Step::Try { activity, branch: 0, action: freeze },
                Step::Confirm { activity, branch: 0 },
                Step::Cancel { activity, branch: 1, action: credit },
                Step::Decide { activity, decision: Decision::Cancel(CancelReason::Timeout) },
                Step::Decide { activity, decision: Decision::Commit },
                Step::Complete { activity },
            ],
        }
    }

    #[test]
    fn every_step_round_trips_in_one_system_record() {
        let bytes = sample().encode();
        assert_eq!(LogRecord::decode(&bytes), Ok(LogRecord::Tcc(sample())));
        assert!(LogRecord::is_system(&bytes));
        for cut in 0..bytes.len() {
            assert!(LogRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(LogRecord::decode(&longer).is_err());
    }

    proptest! {
        #[test]
        fn flipped_bytes_never_panic(at in 0usize..200, value in any::<u8>()) {
            let mut bytes = sample().encode();
            let at = at % bytes.len();
            bytes[at] = value;
            if let Ok(LogRecord::Tcc(record)) = LogRecord::decode(&bytes) {
                prop_assert_eq!(LogRecord::decode(&record.encode()), Ok(LogRecord::Tcc(record.clone())));
            }
        }
    }
}
