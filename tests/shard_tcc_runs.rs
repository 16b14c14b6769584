//! Ended branches and completed activities that checkpoints moved out of memory into sorted runs
//! on disk, on the simulated disk: every late or repeated step answers as it did while they were
//! in memory (a repeat, or the same refusal), nothing moves money twice, a transaction mixing a
//! repeat with a new step writes and applies only the new one, an account request cannot take a
//! completed activity's number, memory and the checkpoint no longer grow with the activities,
//! all of it again after a reopen; a failed read of a run refuses the steps and changes nothing;
//! reads made stale by a checkpoint that replaced the runs are made again, and still answer.

use tradeshard_shard::{
    account_request_key, ActivityState, Balance, BranchAction, BranchPlan, CancelReason, Currency, Decision,
    FoundActivity, Refusal, Shard, Step, StepAnswer, StepOutcome, TradeError,
};
use tradeshard_shard::{AccountCommand, AccountOp};
use tradeshard_tests::{call, rolling_shard_config, run, upkeep_on_request};
use tradeshard_wal::disk::{Fault, SimDisk};

type SimShard = Shard<SimDisk>;

async fn open(disk: &SimDisk) -> Result<SimShard, TradeError> {
    Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_on_request(false, None)).await
}

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

async fn send(shard: &SimShard, steps: Vec<Step>) -> Result<Vec<StepAnswer>, TradeError> {
    call(|reply| shard.transact(steps, reply)).await
}

fn repeat(outcome: StepOutcome) -> StepAnswer {
    StepAnswer { outcome, repeat: true }
}

/// Activity `n` of the test: user 1 pays user 2 `1 + n % 3` in one shard; every fourth is
/// cancelled. Beside it, activity `F-n` whose credit branch was cancelled before any Try.
struct Activity {
    n: u64,
}

impl Activity {
    fn id(&self) -> u128 {
        account_request_key(1, &format!("T-{}", self.n))
    }

    fn fenced_id(&self) -> u128 {
        account_request_key(1, &format!("F-{}", self.n))
    }

    fn amount(&self) -> u64 {
        1 + self.n % 3
    }

    fn decision(&self) -> Decision {
        match self.n % 4 {
            3 => Decision::Cancel(CancelReason::TryRefused),
            _ => Decision::Commit,
        }
    }

    fn branches(&self) -> Vec<BranchPlan> {
        let (currency, amount) = (cny(), self.amount());
        vec![
            BranchPlan { shard: 0, branch: 0, action: BranchAction::Freeze { user_id: 1, currency, amount } },
            BranchPlan { shard: 0, branch: 1, action: BranchAction::Credit { user_id: 2, currency, amount } },
        ]
    }

    fn begin(&self) -> Vec<Step> {
        let activity = self.id();
        let mut steps = vec![Step::Begin { activity, deadline_ms: u64::MAX, branches: self.branches() }];
        steps.extend(self.branches().iter().map(|plan| Step::Try {
            activity,
            branch: plan.branch,
            action: plan.action,
        }));
        steps
    }

    fn decide(&self) -> Vec<Step> {
        let (activity, decision) = (self.id(), self.decision());
        let mut steps = vec![Step::Decide { activity, decision }];
        steps.extend(self.branches().iter().map(|plan| match decision {
            Decision::Commit => Step::Confirm { activity, branch: plan.branch },
            Decision::Cancel(_) => Step::Cancel { activity, branch: plan.branch, action: plan.action },
        }));
        steps
    }

    fn fence(&self) -> Step {
        Step::Cancel { activity: self.fenced_id(), branch: 1, action: self.branches()[1].action }
    }

    async fn run(&self, shard: &SimShard) {
        send(shard, self.begin()).await.unwrap();
        send(shard, self.decide()).await.unwrap();
        send(shard, vec![Step::Complete { activity: self.id() }]).await.unwrap();
        send(shard, vec![self.fence()]).await.unwrap();
    }
}

fn balances(shard: &SimShard) -> (Balance, Balance) {
    (shard.balance(1, cny()), shard.balance(2, cny()))
}

/// Every step of every activity sent again answers as it did while in memory, and moves
/// nothing; an account request under an activity's number is refused naming the transfer.
async fn late_steps_answer_as_before(shard: &SimShard, count: u64) {
    let before = balances(shard);
    for n in 0..count {
        let activity = Activity { n };
        let (id, decision) = (activity.id(), activity.decision());
        let completed = ActivityState::Completed(decision);
        match (decision, send(shard, activity.begin()).await) {
            (Decision::Commit, Ok(answers)) => {
                let tried = repeat(StepOutcome::Branch(tradeshard_shard::BranchState::Tried));
                assert_eq!(answers, vec![repeat(StepOutcome::Begun(completed)), tried, tried], "activity {n}");
            }
            (Decision::Cancel(_), Err(TradeError::Refused(Refusal::BranchCancelled { activity, .. }))) => {
                assert_eq!(activity, id)
            }
            other => panic!("activity {n}'s begin again: {other:?}"),
        }
        let answers = send(shard, activity.decide()).await.unwrap();
        assert_eq!(answers[0], repeat(StepOutcome::Completed(decision)), "activity {n}'s decision again");
        assert!(answers.iter().all(|answer| answer.repeat), "activity {n}'s outcomes again: {answers:?}");
        let other = match decision {
            Decision::Commit => Decision::Cancel(CancelReason::Timeout),
            Decision::Cancel(_) => Decision::Commit,
        };
        match send(shard, vec![Step::Decide { activity: id, decision: other }]).await {
            Err(TradeError::Refused(Refusal::DecidedOtherwise { decision: first, .. })) => assert_eq!(first, decision),
            other => panic!("activity {n} decided otherwise: {other:?}"),
        }
        let again = send(shard, vec![Step::Complete { activity: id }]).await.unwrap();
        assert_eq!(again, vec![repeat(StepOutcome::Completed(decision))]);
        let mut other_branches = activity.branches();
        other_branches.truncate(1);
        let conflict = Step::Begin { activity: id, deadline_ms: u64::MAX, branches: other_branches };
        assert!(matches!(send(shard, vec![conflict]).await, Err(TradeError::Refused(Refusal::StepConflict { .. }))));
        // The fenced branch: a late Try is refused, the Cancel repeats.
        let late = Step::Try { activity: activity.fenced_id(), branch: 1, action: activity.branches()[1].action };
        assert!(matches!(send(shard, vec![late]).await, Err(TradeError::Refused(Refusal::BranchCancelled { .. }))));
        let fenced = repeat(StepOutcome::Branch(tradeshard_shard::BranchState::Fenced));
        assert_eq!(send(shard, vec![activity.fence()]).await.unwrap(), vec![fenced]);
        let request = AccountCommand::new(AccountOp::Deposit, 1, "CNY", 5, &format!("T-{n}")).unwrap();
        match call(|reply| shard.post(request, reply)).await {
            Err(TradeError::Refused(Refusal::AccountRequestConflict { op: "transfer", amount, .. })) => {
                assert_eq!(amount, activity.amount())
            }
            other => panic!("a deposit under activity {n}'s number: {other:?}"),
        }
        let found = call(|reply| shard.find_activity(id, reply)).await.unwrap().expect("found");
        assert_eq!(found.state(), completed);
        assert!(found.has_branches(&activity.branches()));
    }
    assert_eq!(balances(shard), before, "the late steps moved nothing");
}

#[test]
fn ended_flexible_transactions_in_runs_answer_late_steps_before_and_after_a_reopen() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let deposit = AccountCommand::new(AccountOp::Deposit, 1, "CNY", 1_000, "D").unwrap();
        call(|reply| shard.post(deposit, reply)).await.unwrap();
        for n in 0..120 {
            Activity { n }.run(&shard).await;
            if (n + 1) % 30 == 0 {
                // Each completed activity keeps its payer's branch: held on their own are
                // the payees' and the fenced branches, two an activity, not three.
                let stats = shard.stats();
                assert_eq!((stats.branches, stats.activities), (60, 30), "after activity {n}");
                shard.checkpoint().await.unwrap();
            }
        }
        let stats = shard.stats();
        assert_eq!((stats.branches, stats.activities), (0, 0), "every ended entry left memory");
        let names = disk.list_names();
        assert!(
            names.iter().any(|name| name.starts_with("branches-"))
                && names.iter().any(|n| n.starts_with("activities-"))
        );
        let entries = shard.stats().checkpoints.key_run_entries_written;
        assert_eq!(entries, 1 + 120 * 3, "the deposit; per activity its entry, its payee's branch and a fenced branch");
        let reads = shard.stats().checkpoints.key_run_reads;
        late_steps_answer_as_before(&shard, 120).await;
        assert!(shard.stats().checkpoints.key_run_reads > reads + 120, "the late steps read the runs");
        assert_eq!(shard.activity(Activity { n: 0 }.id()), None, "memory holds no completed activity");

        // A repeat beside a new step: the new one is written and applied, the repeat answered.
        let new = Activity { n: 500 };
        let mut mixed = vec![Step::Complete { activity: Activity { n: 1 }.id() }];
        mixed.extend(new.begin());
        let answers = send(&shard, mixed).await.unwrap();
        assert_eq!(answers[0], repeat(StepOutcome::Completed(Decision::Commit)));
        assert_eq!(answers[1], StepAnswer { outcome: StepOutcome::Begun(ActivityState::Open), repeat: false });
        let held = shard.activity(new.id()).expect("the new activity is held");
        assert_eq!(held.state, ActivityState::Open);
        send(&shard, new.decide()).await.unwrap();
        send(&shard, vec![Step::Complete { activity: new.id() }]).await.unwrap();
        let moved = balances(&shard);

        // The checkpoint holds the balances, not the activities: as large as one of a shard
        // with the same two accounts that made a single activity.
        shard.checkpoint().await.unwrap();
        shard.checkpoint().await.unwrap();
        let with_activities = shard.stats().checkpoints.bytes;
        let plain = SimDisk::new();
        let other = open(&plain).await.unwrap();
        let deposit = AccountCommand::new(AccountOp::Deposit, 1, "CNY", 9, "D").unwrap();
        call(|reply| other.post(deposit, reply)).await.unwrap();
        Activity { n: 0 }.run(&other).await;
        other.checkpoint().await.unwrap();
        other.checkpoint().await.unwrap();
        assert_eq!(with_activities, other.stats().checkpoints.bytes, "ended entries are not in the checkpoint");
        other.close().await.unwrap();
        shard.close().await.unwrap();

        // After a reopen (from the checkpoint, the log after it replayed) the same.
        let shard = open(&disk).await.unwrap();
        assert_eq!(balances(&shard), moved);
        late_steps_answer_as_before(&shard, 120).await;
        let found = call(|reply| shard.find_activity(new.id(), reply)).await.unwrap();
        assert!(matches!(found, Some(FoundActivity::Ended(ended)) if ended.decision == Decision::Commit));
        assert_eq!(call(|reply| shard.find_activity(account_request_key(1, "never"), reply)).await.unwrap(), None);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_failed_read_of_a_run_refuses_the_steps_and_changes_nothing() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let deposit = AccountCommand::new(AccountOp::Deposit, 1, "CNY", 100, "D").unwrap();
        call(|reply| shard.post(deposit, reply)).await.unwrap();
        let activity = Activity { n: 3 };
        activity.run(&shard).await;
        shard.checkpoint().await.unwrap();
        let before = balances(&shard);
        // The late Try's next operation is its read of the runs of branches.
        disk.fail_op(disk.ops() + 1, Fault::Eio);
        let late = Step::Try { activity: activity.fenced_id(), branch: 1, action: activity.branches()[1].action };
        let failed = send(&shard, vec![late.clone()]).await;
        assert!(matches!(failed, Err(TradeError::Log(_))), "the read's failure is the answer: {failed:?}");
        assert_eq!(balances(&shard), before, "nothing moved");
        assert_eq!(shard.stats().branches, 0, "nothing recorded");
        let again = send(&shard, vec![late]).await;
        assert!(matches!(again, Err(TradeError::Refused(Refusal::BranchCancelled { .. }))), "{again:?}");
        shard.close().await.unwrap();
    });
}

/// Late steps whose reads of the runs race with checkpoints that install new runs (each read
/// then found stale and made again) all answer, as repeats, and move nothing.
#[test]
fn late_steps_answer_while_checkpoints_replace_the_runs_they_read() {
    run(async {
        let disk = SimDisk::new();
        // No run blocks kept in memory: every read of the runs goes to the slow disk below.
        let upkeep = tradeshard_shard::Upkeep { run_cache_bytes: 0, ..upkeep_on_request(false, None) };
        let shard = Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep).await.unwrap();
        let shard = std::rc::Rc::new(shard);
        let deposit = AccountCommand::new(AccountOp::Deposit, 1, "CNY", 10_000, "D").unwrap();
        call(|reply| shard.post(deposit, reply)).await.unwrap();
        for n in 0..40 {
            Activity { n }.run(&shard).await;
        }
        shard.checkpoint().await.unwrap();
        // Reads complete after 0 to 3 yields, so that a checkpoint installs its runs while
        // some are in flight.
        disk.slow_reads(7);
        let mut stale_reads_made_again = 0;
        for round in 0..20u64 {
            // Something for the checkpoint to move: an activity ended since the last one.
            Activity { n: 1_000 + round }.run(&shard).await;
            let before = balances(&shard);
            let reads = shard.stats().checkpoints.key_run_reads;
            let late: Vec<_> = (0..40)
                .map(|n| {
                    let shard = shard.clone();
                    glommio::spawn_local(async move { send(&shard, Activity { n }.decide()).await }).detach()
                })
                .collect();
            let checkpoint = shard.checkpoint();
            let answers = glommio::timer::timeout(std::time::Duration::from_secs(10), async {
                checkpoint.await.unwrap();
                let mut answers = Vec::new();
                for task in late {
                    answers.push(task.await.expect("the task ran"));
                }
                Ok(answers)
            })
            .await
            .unwrap_or_else(|_| panic!("round {round}: late steps left unanswered"));
            for (n, answer) in answers.into_iter().enumerate() {
                let answer = answer.unwrap_or_else(|e| panic!("round {round}, activity {n}: {e:?}"));
                assert!(answer.iter().all(|step| step.repeat), "round {round}, activity {n}: {answer:?}");
            }
            assert_eq!(balances(&shard), before, "round {round}: the late steps moved nothing");
            // Three keys an activity: more reads than that were reads made again.
            stale_reads_made_again += (shard.stats().checkpoints.key_run_reads - reads).saturating_sub(40 * 3);
        }
        assert!(stale_reads_made_again > 0, "no read of the runs was made stale by a checkpoint");
        std::rc::Rc::into_inner(shard).expect("the tasks ended").close().await.unwrap();
    });
}
