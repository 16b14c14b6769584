//! Random transactions and deposits sent many at a time, so that the checks read balances
//! that writes in flight leave and steps wait behind one another on their branches, leave
//! books that a replay of the log alone makes again: every balance, the money in
//! activities' hands, every activity and those not completed.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Deposit { user: u64, amount: u64 },
    Steps(Vec<Step>),
}

enum Answer {
    Posted(tradeshard_shard::reply::ReplyFuture<Result<tradeshard_shard::AccountReceipt, TradeError>>),
    Steps(tradeshard_shard::reply::ReplyFuture<Result<Vec<StepAnswer>, TradeError>>),
}

const USERS: u64 = 3;
const ACTIVITIES: u128 = 5;

fn action() -> impl Strategy<Value = BranchAction> {
    (1..=USERS, 1u64..300, any::<bool>()).prop_map(|(user_id, amount, credit)| match credit {
        true => BranchAction::Credit { user_id, currency: cny(), amount },
        false => freeze(user_id, amount),
    })
}

/// The action an activity's plan names most of the time, so that its first branch's steps
/// often match the plan (the entry then keeps the branch) and sometimes do not.
fn planned(activity: u128) -> BranchAction {
    let user_id = 1 + activity as u64 % USERS;
    match activity % 2 {
        0 => freeze(user_id, 40 * activity as u64),
        _ => BranchAction::Credit { user_id, currency: cny(), amount: 40 * activity as u64 },
    }
}

/// An action for `activity`: its planned one two times in three.
fn action_of(activity: u128) -> impl Strategy<Value = BranchAction> {
    prop_oneof![2 => Just(planned(activity)), 1 => action()]
}

fn step() -> impl Strategy<Value = Step> {
    let activity = 1..=ACTIVITIES;
    let with_action = || activity.clone().prop_flat_map(|activity| (Just(activity), action_of(activity)));
    // Mostly the first branch, which an activity's entry may keep.
    let branch = || prop_oneof![2 => Just(0u16), 1 => 0u16..3];
    prop_oneof![
        3 => (with_action(), branch()).prop_map(|((activity, action), branch)| Step::Try { activity, branch, action }),
        3 => (activity.clone(), branch()).prop_map(|(activity, branch)| Step::Confirm { activity, branch }),
        2 => (with_action(), branch()).prop_map(|((activity, action), branch)| Step::Cancel { activity, branch, action }),
        2 => with_action().prop_map(|(activity, action)| {
            let plan = BranchPlan { shard: 0, branch: 0, action };
            Step::Begin { activity, deadline_ms: 1_000, branches: vec![plan] }
        }),
        2 => (activity.clone(), any::<bool>()).prop_map(|(activity, commit)| {
            let decision = if commit { Decision::Commit } else { Decision::Cancel(CancelReason::TryRefused) };
            Step::Decide { activity, decision }
        }),
        2 => activity.prop_map(|activity| Step::Complete { activity }),
    ]
}

/// A transaction as the activity manager sends to the initiator's shard: the Begin with the
/// first branch's Try, the decision with its Confirm or Cancel, the completion.
fn protocol_steps() -> impl Strategy<Value = Vec<Step>> {
    (1..=ACTIVITIES, 0..4u8).prop_map(|(activity, which)| {
        let action = planned(activity);
        let plan = BranchPlan { shard: 0, branch: 0, action };
        match which {
            0 => vec![
                Step::Begin { activity, deadline_ms: 1_000, branches: vec![plan] },
                Step::Try { activity, branch: 0, action },
            ],
            1 => vec![Step::Decide { activity, decision: Decision::Commit }, Step::Confirm { activity, branch: 0 }],
            2 => {
                let decision = Decision::Cancel(CancelReason::TryRefused);
                vec![Step::Decide { activity, decision }, Step::Cancel { activity, branch: 0, action }]
            }
            _ => vec![Step::Complete { activity }],
        }
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1..=USERS, 1u64..500).prop_map(|(user, amount)| Op::Deposit { user, amount }),
        4 => prop::collection::vec(step(), 1..4).prop_map(Op::Steps),
        3 => protocol_steps().prop_map(Op::Steps),
    ]
}

/// What the books read as: every balance, the money in activities' hands, every activity
/// with the state of the first branch its entry keeps, and the branches held on their own
/// (the committer installs the entries the check computed, where a replay runs the rules:
/// both keep each branch in the same place).
type Books = (Vec<Balance>, Vec<(Currency, i128)>, Vec<Option<(ActivityState, Option<BranchState>)>>, u64);

fn books(shard: &SimShard) -> Books {
    let balances = (1..=USERS).map(|user| shard.balance(user, cny())).collect();
    let in_transit = shard.in_transit().into_iter().collect();
    let activities =
        (1..=ACTIVITIES).map(|id| shard.activity(id).map(|entry| (entry.state, entry.first_state))).collect();
    (balances, in_transit, activities, shard.stats().branches)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_books_live_are_the_books_replayed(groups in prop::collection::vec(prop::collection::vec(op(), 1..8), 1..8)) {
        run(async {
            let disk = SimDisk::new();
            let upkeep = upkeep_on_request(false, None);
            let (live, branches) = {
                let shard = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
                let mut deposits = 0;
                for group in &groups {
                    // A group's operations are all in flight at once.
                    let mut answers = Vec::new();
                    for op in group.clone() {
                        match op {
                            Op::Deposit { user, amount } => {
                                deposits += 1;
                                let request = format!("d{deposits}");
                                let command = AccountCommand::new(AccountOp::Deposit, user, "CNY", amount, &request).unwrap();
                                let (reply, posted) = tradeshard_shard::reply::channel();
                                shard.post(command, reply);
                                answers.push(Answer::Posted(posted));
                            }
                            Op::Steps(steps) => {
                                let (reply, answered) = tradeshard_shard::reply::channel();
                                shard.transact(steps, reply);
                                answers.push(Answer::Steps(answered));
                            }
                        }
                    }
                    for answer in answers {
                        // Refusals are part of the run: only that every one is answered counts.
                        match answer {
                            Answer::Posted(posted) => drop(posted.await.expect("answered")),
                            Answer::Steps(answered) => drop(answered.await.expect("answered")),
                        }
                    }
                }
                // Branches are seen through what they do to balances and in-transit money (a
                // step to read one would change it).
                (books(&shard), shard.unfinished_activities())
            };
            let replayed = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
            assert!(replayed.stats().opened.checkpoint.is_none(), "the books come from the log alone");
            assert_eq!(books(&replayed), live);
            assert_eq!(replayed.unfinished_activities(), branches);
        });
    }
}
