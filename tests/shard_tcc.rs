//! The rules of flexible-transaction steps in one shard, through `Shard::transact`: a branch's
//! Try, Confirm and Cancel with their fences and repeats; an activity's Begin, Decide and
//! Complete; a local transaction applied whole or refused whole; a step sent while another on
//! the same activity is in flight waits for it (a Try behind its activity's decision too); all
//! of it found again after reopens from the log and from a checkpoint; books made under many
//! transactions in flight made again by a replay.

use tradeshard_shard::{
    AccountCommand, AccountOp, ActivityState, Balance, BranchAction, BranchPlan, BranchState, CancelReason, Currency,
    Decision, Refusal, Shard, Step, StepAnswer, StepOutcome, TradeError,
};
use tradeshard_tests::{call, run, small_config, upkeep_on_request};
use tradeshard_wal::disk::SimDisk;

type SimShard = Shard<SimDisk>;

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

fn freeze(user_id: u64, amount: u64) -> BranchAction {
    BranchAction::Freeze { user_id, currency: cny(), amount }
}

async fn send(shard: &SimShard, steps: Vec<Step>) -> Result<Vec<StepAnswer>, TradeError> {
    call(|reply| shard.transact(steps, reply)).await
}

fn fresh(outcome: StepOutcome) -> StepAnswer {
    StepAnswer { outcome, repeat: false }
}

fn repeat(outcome: StepOutcome) -> StepAnswer {
    StepAnswer { outcome, repeat: true }
}

async fn deposit(shard: &SimShard, user: u64, amount: u64, request_no: &str) {
    let command = AccountCommand::new(AccountOp::Deposit, user, "CNY", amount, request_no).unwrap();
    call(|reply| shard.post(command, reply)).await.unwrap();
}

#[test]
fn the_first_record_of_a_log_counts_as_in_flight_until_it_is_applied() {
    fn credit(user_id: u64, amount: u64) -> BranchAction {
        BranchAction::Credit { user_id, currency: cny(), amount }
    }
    run(async {
        // A deposit that is the log's first record (seq 0), then a withdrawal of all of it in
        // the same group: checked against what the deposit in flight leaves.
        let shard = Shard::open(SimDisk::new(), small_config(), 0).await.unwrap();
        let (deposited, deposit_answer) = tradeshard_shard::reply::channel();
        let command = AccountCommand::new(AccountOp::Deposit, 1, "CNY", 100, "first").unwrap();
        shard.post(command, deposited);
        let (withdrawn, withdraw_answer) = tradeshard_shard::reply::channel();
        let command = AccountCommand::new(AccountOp::Withdraw, 1, "CNY", 100, "second").unwrap();
        shard.post(command, withdrawn);
        assert!(deposit_answer.await.unwrap().is_ok());
        match withdraw_answer.await.unwrap() {
            Ok(receipt) => assert_eq!(receipt.amount, 100),
            other => panic!("a withdrawal of what a deposit in flight brings: {other:?}"),
        }
        assert_eq!(shard.balance(1, cny()), Balance::default());

        // A Try that is the log's first record, then another Try of the branch in the same
        // group: it waits for the first, then finds the branch tried with another action.
        let shard = Shard::open(SimDisk::new(), small_config(), 0).await.unwrap();
        let (tried, try_answer) = tradeshard_shard::reply::channel();
        shard.transact(vec![Step::Try { activity: 9, branch: 0, action: credit(2, 1) }], tried);
        let (tried_again, again_answer) = tradeshard_shard::reply::channel();
        shard.transact(vec![Step::Try { activity: 9, branch: 0, action: credit(2, 2) }], tried_again);
        assert_eq!(try_answer.await.unwrap().unwrap(), vec![fresh(StepOutcome::Branch(BranchState::Tried))]);
        match again_answer.await.unwrap() {
            Err(TradeError::Refused(Refusal::StepConflict { .. })) => {}
            other => panic!("a branch tried with another action while the first was in flight: {other:?}"),
        }
    });
}

#[test]
fn branches_keep_their_fences_and_answer_repeats_with_the_first_answer() {
    run(async {
        let shard = Shard::open(SimDisk::new(), small_config(), 0).await.unwrap();
        deposit(&shard, 1, 1_000, "d").await;
        let (a, b) = (1u128, 2u128);
        // Try freezes; Confirm takes the frozen money into the activity's hands.
        let tried = send(&shard, vec![Step::Try { activity: a, branch: 0, action: freeze(1, 300) }]).await.unwrap();
        assert_eq!(tried, vec![fresh(StepOutcome::Branch(BranchState::Tried))]);
        assert_eq!(shard.balance(1, cny()), Balance { available: 700, frozen: 300, incoming: 0 });
        let again = send(&shard, vec![Step::Try { activity: a, branch: 0, action: freeze(1, 300) }]).await.unwrap();
        assert_eq!(again, vec![repeat(StepOutcome::Branch(BranchState::Tried))]);
        match send(&shard, vec![Step::Try { activity: a, branch: 0, action: freeze(1, 301) }]).await {
            Err(TradeError::Refused(Refusal::StepConflict { .. })) => {}
            other => panic!("a branch tried with another action: {other:?}"),
        }
        let confirmed = send(&shard, vec![Step::Confirm { activity: a, branch: 0 }]).await.unwrap();
        assert_eq!(confirmed, vec![fresh(StepOutcome::Branch(BranchState::Confirmed))]);
        assert_eq!(shard.balance(1, cny()), Balance { available: 700, frozen: 0, incoming: 0 });
        assert_eq!(shard.in_transit()[&cny()], 300, "the activity holds the confirmed money");
        let again = send(&shard, vec![Step::Confirm { activity: a, branch: 0 }]).await.unwrap();
        assert_eq!(again, vec![repeat(StepOutcome::Branch(BranchState::Confirmed))]);
        match send(&shard, vec![Step::Cancel { activity: a, branch: 0, action: freeze(1, 300) }]).await {
            Err(TradeError::Refused(Refusal::BranchConfirmed { activity: 1, branch: 0 })) => {}
            other => panic!("Cancel after Confirm: {other:?}"),
        }
        // Cancel before any Try: an empty rollback, and the Try that comes late is refused.
        let fenced = send(&shard, vec![Step::Cancel { activity: b, branch: 3, action: freeze(1, 50) }]).await.unwrap();
        assert_eq!(fenced, vec![fresh(StepOutcome::Branch(BranchState::Fenced))]);
        match send(&shard, vec![Step::Try { activity: b, branch: 3, action: freeze(1, 50) }]).await {
            Err(TradeError::Refused(Refusal::BranchCancelled { activity: 2, branch: 3 })) => {}
            other => panic!("a Try after its Cancel: {other:?}"),
        }
        match send(&shard, vec![Step::Confirm { activity: b, branch: 3 }]).await {
            Err(TradeError::Refused(Refusal::BranchCancelled { .. })) => {}
            other => panic!("Confirm after Cancel: {other:?}"),
        }
        match send(&shard, vec![Step::Confirm { activity: b, branch: 4 }]).await {
            Err(TradeError::Refused(Refusal::BranchNotTried { .. })) => {}
            other => panic!("Confirm without a Try: {other:?}"),
        }
        // Cancel after a Try gives the money back.
        send(&shard, vec![Step::Try { activity: b, branch: 5, action: freeze(1, 200) }]).await.unwrap();
        let cancelled =
            send(&shard, vec![Step::Cancel { activity: b, branch: 5, action: freeze(1, 200) }]).await.unwrap();
        assert_eq!(cancelled, vec![fresh(StepOutcome::Branch(BranchState::Cancelled))]);
        assert_eq!(shard.balance(1, cny()).available, 700);
        // A Try past what is available is refused and leaves no trace.
        match send(&shard, vec![Step::Try { activity: b, branch: 6, action: freeze(1, 701) }]).await {
            Err(TradeError::Refused(Refusal::InsufficientFunds { available: 700, requested: 701, .. })) => {}
            other => panic!("an overdraft Try: {other:?}"),
        }
        let later = send(&shard, vec![Step::Try { activity: b, branch: 6, action: freeze(1, 700) }]).await.unwrap();
        assert_eq!(later, vec![fresh(StepOutcome::Branch(BranchState::Tried))], "the refused Try left no trace");
    });
}

#[test]
fn an_activity_is_decided_once_and_a_local_transaction_applies_whole_or_not_at_all() {
    run(async {
        let shard = Shard::open(SimDisk::new(), small_config(), 0).await.unwrap();
        deposit(&shard, 1, 100, "d").await;
        let activity = 9u128;
        let plan = BranchPlan { shard: 0, branch: 0, action: freeze(1, 80) };
        let begin = Step::Begin { activity, deadline_ms: 5, branches: vec![plan] };
        // The second step is refused (too little available): nothing of the first is recorded.
        let over = Step::Try { activity, branch: 0, action: freeze(1, 101) };
        assert!(send(&shard, vec![begin.clone(), over]).await.is_err());
        assert_eq!(shard.activity(activity), None, "a refused local transaction leaves no trace");
        let tried = Step::Try { activity, branch: 0, action: plan.action };
        let answers = send(&shard, vec![begin.clone(), tried]).await.unwrap();
        assert_eq!(
            answers,
            vec![fresh(StepOutcome::Begun(ActivityState::Open)), fresh(StepOutcome::Branch(BranchState::Tried))]
        );
        match send(&shard, vec![Step::Complete { activity }]).await {
            Err(TradeError::Refused(Refusal::StepConflict { .. })) => {}
            other => panic!("completion before a decision: {other:?}"),
        }
        let cancel = Decision::Cancel(CancelReason::Timeout);
        let decided = send(&shard, vec![Step::Decide { activity, decision: cancel }]).await.unwrap();
        assert_eq!(decided, vec![fresh(StepOutcome::Decided(cancel))]);
        // The other decision, with a Confirm sent along: refused whole, naming the decision.
        let confirm = Step::Confirm { activity, branch: 0 };
        match send(&shard, vec![Step::Decide { activity, decision: Decision::Commit }, confirm]).await {
            Err(TradeError::Refused(Refusal::DecidedOtherwise { decision, .. })) => assert_eq!(decision, cancel),
            other => panic!("a second decision: {other:?}"),
        }
        assert_eq!(shard.balance(1, cny()).frozen, 80, "the Confirm sent with it was not applied");
        // A cancel for another reason is the same decision: a repeat, naming the first reason.
        let refused = Decision::Cancel(CancelReason::TryRefused);
        let again = send(&shard, vec![Step::Decide { activity, decision: refused }]).await.unwrap();
        assert_eq!(again, vec![repeat(StepOutcome::Decided(cancel))]);
        let steps = vec![Step::Cancel { activity, branch: 0, action: plan.action }, Step::Complete { activity }];
        send(&shard, steps).await.unwrap();
        assert_eq!(shard.activity(activity).unwrap().state, ActivityState::Completed(cancel));
        assert!(shard.unfinished_activities().is_empty());
        assert_eq!(shard.balance(1, cny()), Balance { available: 100, frozen: 0, incoming: 0 });
        // One number is one request: an activity cannot take an account request's number.
        let key = tradeshard_shard::account_request_key(1, "d");
        let taken = Step::Begin { activity: key, deadline_ms: 5, branches: vec![plan] };
        assert!(matches!(send(&shard, vec![taken]).await, Err(TradeError::Refused(Refusal::StepConflict { .. }))));
    });
}

#[test]
fn a_step_waits_for_one_in_flight_on_its_branch_and_everything_survives_reopens() {
    run(async {
        let disk = SimDisk::new();
        let upkeep = upkeep_on_request(false, None);
        {
            let shard = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
            deposit(&shard, 1, 500, "d").await;
            // Sent back to back: the Confirm is checked once the Try is durable.
            let (try_reply, tried) = tradeshard_shard::reply::channel();
            shard.transact(vec![Step::Try { activity: 3, branch: 0, action: freeze(1, 120) }], try_reply);
            let (confirm_reply, confirmed) = tradeshard_shard::reply::channel();
            shard.transact(vec![Step::Confirm { activity: 3, branch: 0 }], confirm_reply);
            assert!(tried.await.unwrap().is_ok());
            let confirmed = confirmed.await.unwrap().unwrap();
            assert_eq!(confirmed, vec![fresh(StepOutcome::Branch(BranchState::Confirmed))]);
            let fence = Step::Cancel { activity: 4, branch: 1, action: freeze(1, 9) };
            send(&shard, vec![fence]).await.unwrap();
            let plan = BranchPlan { shard: 0, branch: 0, action: freeze(1, 10) };
            send(&shard, vec![Step::Begin { activity: 5, deadline_ms: 77, branches: vec![plan] }]).await.unwrap();
        }
        for checkpoint in [false, true] {
            let shard = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
            assert_eq!(shard.stats().opened.checkpoint.is_some(), checkpoint);
            assert_eq!(shard.balance(1, cny()), Balance { available: 380, frozen: 0, incoming: 0 });
            assert_eq!(shard.in_transit()[&cny()], 120);
            let again = send(&shard, vec![Step::Confirm { activity: 3, branch: 0 }]).await.unwrap();
            assert_eq!(again, vec![repeat(StepOutcome::Branch(BranchState::Confirmed))]);
            let late = send(&shard, vec![Step::Try { activity: 4, branch: 1, action: freeze(1, 9) }]).await;
            assert!(matches!(late, Err(TradeError::Refused(Refusal::BranchCancelled { .. }))));
            let open = shard.unfinished_activities();
            assert_eq!(open.len(), 1);
            assert_eq!((open[0].0, open[0].1.deadline_ms, open[0].1.state), (5, 77, ActivityState::Open));
            shard.checkpoint().await.unwrap();
        }
    });
}

/// A transfer's payer, whose Try goes with its activity's Begin, has no entry of its own: its
/// activity's entry keeps it from the Try to the runs, through checkpoints and reopens (from
/// the checkpoint and from the log alone), answering every step as a branch of its own would.
/// A first branch fenced before its Begin keeps its own entry, and one still tried when a raw
/// completion comes is given one.
#[test]
fn a_payers_branch_lives_in_its_activitys_entry_from_its_try_to_the_runs() {
    fn credit(user_id: u64, amount: u64) -> BranchAction {
        BranchAction::Credit { user_id, currency: cny(), amount }
    }
    let plans = |payer: u64, amount: u64| {
        vec![
            BranchPlan { shard: 0, branch: 0, action: freeze(payer, amount) },
            BranchPlan { shard: 0, branch: 1, action: credit(2, amount) },
        ]
    };
    let held = |shard: &SimShard| (shard.stats().branches, shard.stats().activities);
    run(async {
        let disk = SimDisk::new();
        let upkeep = upkeep_on_request(false, None);
        let shard = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
        deposit(&shard, 1, 1_000, "d").await;
        let begin = Step::Begin { activity: 7, deadline_ms: u64::MAX, branches: plans(1, 300) };
        send(&shard, vec![begin, Step::Try { activity: 7, branch: 0, action: freeze(1, 300) }]).await.unwrap();
        assert_eq!(held(&shard), (0, 1), "the payer's branch is in its activity's entry");
        send(&shard, vec![Step::Try { activity: 7, branch: 1, action: credit(2, 300) }]).await.unwrap();
        assert_eq!(held(&shard), (1, 1), "the payee's branch has its own");
        shard.checkpoint().await.unwrap().expect("a checkpoint");
        shard.close().await.unwrap();

        let shard = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
        assert!(shard.stats().opened.checkpoint.is_some());
        assert_eq!(held(&shard), (1, 1), "restored where it was kept");
        let again = send(&shard, vec![Step::Try { activity: 7, branch: 0, action: freeze(1, 300) }]).await.unwrap();
        assert_eq!(again, vec![repeat(StepOutcome::Branch(BranchState::Tried))]);
        let decide = Step::Decide { activity: 7, decision: Decision::Commit };
        send(&shard, vec![decide, Step::Confirm { activity: 7, branch: 0 }]).await.unwrap();
        // Ended, the payer's branch stays with its activity under way, checkpoint or not.
        shard.checkpoint().await.unwrap().expect("a checkpoint");
        assert_eq!(held(&shard), (1, 1));
        assert_eq!(shard.balance(1, cny()), Balance { available: 700, frozen: 0, incoming: 0 });
        shard.close().await.unwrap();

        let shard = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
        assert_eq!(held(&shard), (1, 1));
        let again = send(&shard, vec![Step::Confirm { activity: 7, branch: 0 }]).await.unwrap();
        assert_eq!(again, vec![repeat(StepOutcome::Branch(BranchState::Confirmed))]);
        let cancel = send(&shard, vec![Step::Cancel { activity: 7, branch: 0, action: freeze(1, 300) }]).await;
        assert!(matches!(cancel, Err(TradeError::Refused(Refusal::BranchConfirmed { .. }))), "{cancel:?}");
        send(&shard, vec![Step::Confirm { activity: 7, branch: 1 }]).await.unwrap();
        send(&shard, vec![Step::Complete { activity: 7 }]).await.unwrap();
        shard.checkpoint().await.unwrap().expect("a checkpoint");
        assert_eq!(held(&shard), (0, 0), "the completed activity went to the runs with its payer");
        let again = send(&shard, vec![Step::Confirm { activity: 7, branch: 0 }]).await.unwrap();
        assert_eq!(again, vec![repeat(StepOutcome::Branch(BranchState::Confirmed))], "answered from the runs");

        // Fenced before its Begin: the fence keeps its own entry and refuses the Try.
        send(&shard, vec![Step::Cancel { activity: 8, branch: 0, action: freeze(1, 50) }]).await.unwrap();
        send(&shard, vec![Step::Begin { activity: 8, deadline_ms: u64::MAX, branches: plans(1, 50) }]).await.unwrap();
        let late = send(&shard, vec![Step::Try { activity: 8, branch: 0, action: freeze(1, 50) }]).await;
        assert!(matches!(late, Err(TradeError::Refused(Refusal::BranchCancelled { .. }))), "{late:?}");
        assert_eq!(held(&shard), (1, 1));

        // A raw completion while the first branch is still tried: the branch gets its own entry,
        // stays in memory past a checkpoint, and its Confirm still moves the money.
        let begin = Step::Begin { activity: 9, deadline_ms: u64::MAX, branches: plans(1, 10) };
        send(&shard, vec![begin, Step::Try { activity: 9, branch: 0, action: freeze(1, 10) }]).await.unwrap();
        let decide = Step::Decide { activity: 9, decision: Decision::Commit };
        send(&shard, vec![decide, Step::Complete { activity: 9 }]).await.unwrap();
        assert_eq!(held(&shard), (2, 2));
        shard.checkpoint().await.unwrap().expect("a checkpoint");
        assert_eq!(held(&shard), (1, 1), "the tried branch and the open activity stay in memory");
        let confirmed = send(&shard, vec![Step::Confirm { activity: 9, branch: 0 }]).await.unwrap();
        assert_eq!(confirmed, vec![fresh(StepOutcome::Branch(BranchState::Confirmed))]);
        assert_eq!(shard.balance(1, cny()), Balance { available: 690, frozen: 0, incoming: 0 });
        shard.close().await.unwrap();

        // The log alone makes the same books: every answer again, from a replay.
        let replayed = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
        assert_eq!(replayed.balance(1, cny()), Balance { available: 690, frozen: 0, incoming: 0 });
        for (activity, state) in [(7, BranchState::Confirmed), (9, BranchState::Confirmed)] {
            let again = send(&replayed, vec![Step::Confirm { activity, branch: 0 }]).await.unwrap();
            assert_eq!(again, vec![repeat(StepOutcome::Branch(state))]);
        }
        let late = send(&replayed, vec![Step::Try { activity: 8, branch: 0, action: freeze(1, 50) }]).await;
        assert!(matches!(late, Err(TradeError::Refused(Refusal::BranchCancelled { .. }))), "{late:?}");
    });
}

/// A Try reads its activity's decision: sent while the decision is in flight, it waits for it
/// and is refused, rather than reserve money that no decision would release.
#[test]
fn a_try_sent_behind_its_activitys_decision_in_flight_waits_and_is_refused() {
    run(async {
        let shard = Shard::open(SimDisk::new(), small_config(), 0).await.unwrap();
        deposit(&shard, 2, 88, "d").await;
        let plan = BranchPlan { shard: 0, branch: 0, action: freeze(1, 1) };
        let decision = Decision::Cancel(CancelReason::TryRefused);
        let (decide_reply, decided) = tradeshard_shard::reply::channel();
        let begin_and_decide = vec![
            Step::Begin { activity: 4, deadline_ms: 1_000, branches: vec![plan] },
            Step::Decide { activity: 4, decision },
        ];
        shard.transact(begin_and_decide, decide_reply);
        let (try_reply, tried) = tradeshard_shard::reply::channel();
        shard.transact(vec![Step::Try { activity: 4, branch: 0, action: freeze(2, 1) }], try_reply);
        assert!(decided.await.unwrap().is_ok());
        match tried.await.unwrap() {
            Err(TradeError::Refused(Refusal::StepConflict { activity: 4, .. })) => {}
            other => panic!("a Try of an activity whose cancel was in flight: {other:?}"),
        }
        assert_eq!(shard.balance(2, cny()), Balance { available: 88, frozen: 0, incoming: 0 });
        assert_eq!(shard.stats().branches, 0, "no branch reserved");
        shard.close().await.unwrap();
    });
}

/// The shard's own API checks what it is given as the engine does: what no state could
/// accept is refused with no trace, never written (a decoder would refuse it on replay) and
/// never a panic.
#[test]
fn input_no_check_would_pass_is_refused_by_the_shard_itself() {
    run(async {
        let shard = Shard::open(SimDisk::new(), small_config(), 0).await.unwrap();
        deposit(&shard, 1, 100, "d").await;
        let written = shard.stats().log_end;
        let mut to_self = AccountCommand::new(AccountOp::Deposit, 1, "CNY", 5, "x").unwrap();
        to_self.op = AccountOp::Transfer { to_user: 1 };
        let mut no_number = AccountCommand::new(AccountOp::Deposit, 1, "CNY", 5, "x").unwrap();
        no_number.request_no.clear();
        let mut zero = AccountCommand::new(AccountOp::Deposit, 1, "CNY", 5, "x").unwrap();
        zero.amount = 0;
        for command in [to_self, no_number, zero] {
            let answer = call(|reply| shard.post(command.clone(), reply)).await;
            assert!(matches!(answer, Err(TradeError::Invalid(_))), "{command:?}: {answer:?}");
        }
        let plan = BranchPlan { shard: 0, branch: 0, action: freeze(1, 10) };
        let bad_steps = [
            vec![],
            vec![Step::Begin { activity: 1, deadline_ms: 0, branches: vec![] }],
            vec![Step::Begin { activity: 1, deadline_ms: 0, branches: vec![plan; 9] }],
            vec![Step::Try { activity: 1, branch: 0, action: freeze(1, 0) }],
            vec![Step::Cancel { activity: 1, branch: 0, action: freeze(0, 5) }],
            vec![Step::Complete { activity: 1 }; 18],
        ];
        for steps in bad_steps {
            let answer = send(&shard, steps.clone()).await;
            assert!(matches!(answer, Err(TradeError::Invalid(_))), "{steps:?}: {answer:?}");
        }
        assert_eq!(shard.stats().log_end, written, "nothing refused was written");
        // An activity of eight branches all in this shard: its begin and eight Tries are one
        // local transaction.
        deposit(&shard, 2, 800, "d").await;
        let plans: Vec<BranchPlan> = (0..8u16)
            .map(|branch| {
                let action = match branch % 2 {
                    0 => freeze(2, 100),
                    _ => BranchAction::Credit { user_id: 3, currency: cny(), amount: 100 },
                };
                BranchPlan { shard: 0, branch, action }
            })
            .collect();
        let mut steps = vec![Step::Begin { activity: 9, deadline_ms: 0, branches: plans.clone() }];
        steps.extend(plans.iter().map(|plan| Step::Try { activity: 9, branch: plan.branch, action: plan.action }));
        assert_eq!(send(&shard, steps).await.unwrap().len(), 9);
    });
}

/// More local transactions at once than the log's queue holds (512 records here): those that
/// find it full wait in the shard for room and all land, none refused midway.
#[test]
fn transactions_that_find_the_log_queue_full_wait_for_room_and_land() {
    run(async {
        let shard = Shard::open(SimDisk::new(), small_config(), 0).await.unwrap();
        deposit(&shard, 1, 10_000, "d").await;
        let answers: Vec<_> = (0..2_000u128)
            .map(|activity| {
                let (reply, answer) = tradeshard_shard::reply::channel();
                shard.transact(vec![Step::Try { activity, branch: 0, action: freeze(1, 5) }], reply);
                answer
            })
            .collect();
        for answer in answers {
            let tried = answer.await.unwrap().unwrap();
            assert_eq!(tried, vec![fresh(StepOutcome::Branch(BranchState::Tried))]);
        }
        assert_eq!(shard.balance(1, cny()), Balance { available: 0, frozen: 10_000, incoming: 0 });
    });
}

#[test]
fn a_transaction_naming_a_settlement_in_flight_waits_for_it_and_the_reverse_is_refused() {
    run(async {
        let routing = tradeshard_shard::UserRouting { logical_shards: 2, physical_shards: 2 };
        let shard = Shard::open(SimDisk::new(), small_config(), 0).await.unwrap();
        shard.set_routing(routing);
        // A buyer of this shard (0) and a merchant of the other: settling begins the credit's
        // activity here.
        let buyer = (1..).find(|user| routing.physical_of_user(*user) == 0).unwrap();
        let merchant = (1..).find(|user| routing.physical_of_user(*user) == 1).unwrap();
        deposit(&shard, buyer, 10_000, "fund").await;
        let mut ids = Vec::new();
        for order in 0..2 {
            let trade = tradeshard_shard::NewTrade {
                buyer_id: buyer,
                merchant_id: merchant,
                merchant_order_no: format!("S-{order}"),
                amount: 1_000,
                currency: "CNY".into(),
                memo: String::new(),
            };
            let create = tradeshard_shard::Command::Create { trade: trade.validate().unwrap(), logical_shard: 0 };
            let id = call(|reply| shard.submit(create, reply)).await.unwrap().id;
            let pay = tradeshard_shard::Command::Move { id, to: tradeshard_shard::Move::PayFromBalance };
            call(|reply| shard.submit(pay, reply)).await.unwrap();
            ids.push(id);
        }
        let other = BranchPlan { shard: 0, branch: 0, action: freeze(buyer, 1) };
        let begin = |id| Step::Begin {
            activity: tradeshard_shard::settlement_activity(id),
            deadline_ms: 5,
            branches: vec![other],
        };

        // The settle is queued, then a transaction names its activity: it waits for the Settled
        // record and is then refused against the activity that record began.
        let settle = tradeshard_shard::Command::Move { id: ids[0], to: tradeshard_shard::Move::Settle };
        let (settled, answer) = tradeshard_shard::reply::channel();
        shard.submit(settle, settled);
        match send(&shard, vec![begin(ids[0])]).await {
            Err(TradeError::Refused(Refusal::StepConflict { .. })) => {}
            other => panic!("a transaction naming a settlement in flight: {other:?}"),
        }
        answer.await.unwrap().unwrap();
        let begun = shard.activity(tradeshard_shard::settlement_activity(ids[0])).unwrap();
        assert_eq!(begun.state, ActivityState::Decided(Decision::Commit), "the Settled record's activity stands");

        // The reverse: a transaction naming the activity is in flight, then the settle comes:
        // refused with nothing written (the transaction takes the id).
        let (begun, begun_answer) = tradeshard_shard::reply::channel();
        shard.transact(vec![begin(ids[1])], begun);
        let settle = tradeshard_shard::Command::Move { id: ids[1], to: tradeshard_shard::Move::Settle };
        match call(|reply| shard.submit(settle, reply)).await {
            Err(TradeError::Refused(Refusal::StepConflict { .. })) => {}
            other => panic!("a settle whose activity a transaction in flight names: {other:?}"),
        }
        begun_answer.await.unwrap().unwrap();
        shard.close().await.unwrap();
    });
}

/// A transaction that finds the log's queue full waits for the newest write in flight to be
/// durable and is checked again, whatever that write is: here deposits fill the queue, and the
/// transaction comes behind the last of them.
#[test]
fn a_transaction_finding_the_queue_full_behind_deposits_is_answered_once_they_are_durable() {
    run(async {
        let config = tradeshard_wal::WalConfig { pending_records_max: 4, ..small_config() };
        let shard = Shard::open(SimDisk::new(), config, 0).await.unwrap();
        deposit(&shard, 1, 1_000, "first").await;
        // Sent without waiting, the deposits fill the queue (the flusher has not run yet).
        let deposits: Vec<_> = (0..8)
            .map(|n| {
                let command = AccountCommand::new(AccountOp::Deposit, 2, "CNY", 10, &format!("d{n}")).unwrap();
                let (reply, answer) = tradeshard_shard::reply::channel();
                shard.post(command, reply);
                answer
            })
            .collect();
        let (reply, answer) = tradeshard_shard::reply::channel();
        shard.transact(vec![Step::Try { activity: 9, branch: 0, action: freeze(1, 100) }], reply);
        let mut refused = 0;
        for deposit in deposits {
            match deposit.await.unwrap() {
                Ok(_) => {}
                Err(TradeError::Log(tradeshard_shard::LogError::Backpressure { .. })) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!(refused > 0, "the deposits filled the queue");
        let answered =
            glommio::timer::timeout(std::time::Duration::from_secs(10), async move { Ok(answer.await) }).await;
        let tried = answered.expect("the parked transaction is answered").unwrap().unwrap();
        assert_eq!(tried, vec![fresh(StepOutcome::Branch(BranchState::Tried))]);
        assert_eq!(shard.balance(1, cny()), Balance { available: 900, frozen: 100, incoming: 0 });
        shard.close().await.unwrap();
    });
}

/// What a checkpoint leaves in memory (a branch under way, the request numbers a checkpoint
/// moved out aside) is not counted as memory held for new work (`CheckpointStats::held_bytes`,
/// what the memory trigger compares with its budget), after the checkpoint and after an open
/// that loads it.
#[test]
fn what_a_checkpoint_leaves_in_memory_is_not_counted_as_new_work_after_a_reopen() {
    run(async {
        let disk = SimDisk::new();
        let upkeep = upkeep_on_request(false, None);
        let shard = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
        deposit(&shard, 1, 1_000, "d").await;
        send(&shard, vec![Step::Try { activity: 9, branch: 0, action: freeze(1, 300) }]).await.unwrap();
        assert!(shard.stats().checkpoints.held_bytes > 0);
        shard.checkpoint().await.unwrap().expect("a checkpoint");
        assert_eq!(shard.stats().checkpoints.held_bytes, 0, "after the checkpoint");
        shard.close().await.unwrap();
        let shard = Shard::open_with(disk.clone(), small_config(), 0, upkeep).await.unwrap();
        assert_eq!(shard.stats().branches, 1, "the branch under way is held");
        assert_eq!(shard.stats().checkpoints.held_bytes, 0, "after an open that loaded the checkpoint");
        shard.close().await.unwrap();
    });
}

mod live_against_replayed;
