//! A replay that sets its ended entries aside (inserted at the end, or early and often)
//! against the books as the write path left them, applying each record as it was accepted:
//! the same entries, kept in the same places.

use proptest::prelude::*;
use tradeshard_wal::testing::appended_at;

use crate::accounts::{AccountKey, Balance};
use crate::index::{ShardIndex, StagedKeys};
use crate::replay::{apply_staged, replay_batch, Deferred, Replayed};
use crate::system_record::LogRecord;
use crate::tcc::{BranchAction, BranchPlan, CancelReason, Decision, Step, TccRecord};
use crate::tcc_book::ActivityState;
use crate::tcc_rules::{apply_step, MoneyView};
use crate::Currency;

const ACTIVITIES: u128 = 10;
const USERS: u64 = 3;

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

/// Branch `branch` of activity `activity`: 0 freezes a payer's money, 1 credits a payee.
fn plan(activity: u128, branch: u16) -> BranchPlan {
    let user = |offset: u128| 1 + ((activity + offset) % u128::from(USERS)) as u64;
    let action = match branch {
        0 => BranchAction::Freeze { user_id: user(0), currency: cny(), amount: 10 },
        _ => BranchAction::Credit { user_id: user(1), currency: cny(), amount: 10 },
    };
    BranchPlan { shard: 0, branch, action }
}

fn step() -> impl Strategy<Value = Step> {
    (0..ACTIVITIES, 0u16..2, 0u8..7).prop_map(|(activity, branch, kind)| match kind {
        0 => Step::Begin { activity, deadline_ms: 100, branches: vec![plan(activity, 0), plan(activity, 1)] },
        1 => Step::Try { activity, branch, action: plan(activity, branch).action },
        2 => Step::Confirm { activity, branch },
        3 => Step::Cancel { activity, branch, action: plan(activity, branch).action },
        4 => Step::Decide { activity, decision: Decision::Commit },
        5 => Step::Decide { activity, decision: Decision::Cancel(CancelReason::TryRefused) },
        _ => Step::Complete { activity },
    })
}

/// Books with every user funded, as a checkpoint would restore them.
fn funded() -> ShardIndex {
    let mut index = ShardIndex::default();
    index.lay_out_trades(3);
    for user_id in 1..=USERS {
        let key = AccountKey { user_id, currency: cny() };
        index.accounts_mut().set_balance(key, Balance { available: 1_000, frozen: 0, incoming: 0 });
    }
    index
}

/// The steps the write path would have recorded, one a record, applied to `written`: refusals
/// and repeats are left out (no record names an entry that has ended), and so is a Try of an
/// activity already decided, which the write path refuses.
fn written(steps: &[Step], written: &mut ShardIndex) -> Vec<Replayed> {
    let mut records = Vec::new();
    for step in steps {
        if let Step::Try { activity, .. } = step {
            let decided = written.tcc().activity(*activity).is_some_and(|entry| entry.state != ActivityState::Open);
            if decided {
                continue;
            }
        }
        let at_ms = 1 + records.len() as u64;
        match apply_step(&mut written.books(), step, at_ms) {
            Ok(answer) if !answer.repeat => {
                let record = LogRecord::Tcc(TccRecord { at_ms, steps: vec![step.clone()] });
                records.push((appended_at(records.len() as u64), record, None));
            }
            _ => {}
        }
    }
    records
}

fn replayed(records: &[Replayed], batch: usize, limit: usize) -> ShardIndex {
    let mut index = funded();
    let mut deferred = Deferred::default();
    let mut staged = StagedKeys::with_limit(limit);
    for chunk in records.chunks(batch) {
        let mut batch = chunk.to_vec();
        replay_batch(&mut index, &mut deferred, &mut staged, 0, &mut batch).expect("an accepted record replays");
    }
    apply_staged(&mut index, &mut staged).expect("the entries set aside go in");
    index
}

proptest! {
    #[test]
    fn a_replay_with_its_ended_entries_set_aside_answers_as_the_books_the_write_path_left(
        steps in proptest::collection::vec(step(), 0..160),
        batch in 1usize..40,
        limit in prop_oneof![1usize..6, Just(usize::MAX)],
    ) {
        let mut live = funded();
        let records = written(&steps, &mut live);
        let mut replay = replayed(&records, batch, limit);
        for activity in 0..ACTIVITIES {
            prop_assert_eq!(replay.tcc().activity(activity), live.tcc().activity(activity), "activity {}", activity);
            for branch in 0..2 {
                // Where the branch is kept, and what it answers.
                let held = |index: &ShardIndex| {
                    (index.tcc().branch_on_its_own(activity, branch), index.tcc().branch(activity, branch))
                };
                prop_assert_eq!(held(&replay), held(&live), "activity {} branch {}", activity, branch);
            }
        }
        for user_id in 1..=USERS {
            let key = AccountKey { user_id, currency: cny() };
            prop_assert_eq!(replay.books().balance(key), live.books().balance(key));
        }
        prop_assert_eq!(replay.tcc().in_transit(), live.tcc().in_transit());
    }
}
