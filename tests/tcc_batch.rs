//! Activities driven together (`run_activities`), between two shards on simulated disks: each
//! activity of a batch ends as it would alone, in fewer records (every step of many
//! activities shares records); a refusal in a shared record falls on its own activity only;
//! the ones that leave the batch's path (a Begin repeated or refused for another reason than
//! funds, a decision refused because the activity was decided otherwise meanwhile) are set
//! aside, to be driven alone, and end right.

use std::cell::Cell;
use std::rc::Rc;

use tradeshard_shard::{
    account_request_key, run_activities, run_activity, AccountCommand, AccountOp, BatchDriven, BranchAction,
    BranchCall, BranchPlan, CancelReason, Currency, Decision, Driven, ManyAnswers, PlannedActivity, Refusal, Shard,
    Step, StepAnswer, StepSender, TradeError,
};
use tradeshard_tests::{call, campaign_shard_config, run, ShardPair};
use tradeshard_wal::disk::SimDisk;

const PAYERS: u64 = 40;
const FUNDING: u64 = 1_000;

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

/// Payers 1..=40 in shard 0, payees 101..=140 in shard 1.
fn shard_of(user: u64) -> u32 {
    u32::from(user > 100)
}

async fn pair() -> ShardPair {
    let mut shards = Vec::new();
    for id in 0..2 {
        shards.push(Rc::new(Shard::open(SimDisk::new(), campaign_shard_config(id), 1 << 16).await.unwrap()));
    }
    let pair =
        ShardPair { shards: [shards[0].clone(), shards[1].clone()], budget: Cell::new(usize::MAX), key_window: None };
    for payer in 1..=PAYERS {
        let command = AccountCommand::new(AccountOp::Deposit, payer, "CNY", FUNDING, "fund").unwrap();
        call(|reply| pair.shards[0].post(command, reply)).await.unwrap();
    }
    pair
}

fn transfer(from: u64, to: u64, amount: u64, request_no: &str) -> PlannedActivity {
    let (currency, activity) = (cny(), account_request_key(from, request_no));
    let branches = vec![
        BranchPlan {
            shard: shard_of(from),
            branch: 0,
            action: BranchAction::Freeze { user_id: from, currency, amount },
        },
        BranchPlan { shard: shard_of(to), branch: 1, action: BranchAction::Credit { user_id: to, currency, amount } },
    ];
    PlannedActivity { home: shard_of(from), activity, deadline_ms: u64::MAX, branches }
}

fn records(pair: &ShardPair) -> u64 {
    pair.shards.iter().map(|shard| shard.stats().log_end).sum()
}

/// Drives alone what the batch set aside, as the engine does.
async fn alone<S: StepSender>(sender: &S, plan: &PlannedActivity) -> Result<Driven, S::Error> {
    run_activity(sender, plan.home, plan.activity, plan.deadline_ms, plan.branches.clone()).await
}

fn committed() -> BatchDriven {
    BatchDriven::Driven(Driven { decision: Decision::Commit, completed: true, begun_before: false })
}

/// Every payer's and payee's balance, nothing frozen or reserved, nothing in transit or
/// unfinished: `moved[k]` went from payer `1 + k` to payee `101 + k`.
fn check_books(pair: &ShardPair, moved: &[u64]) {
    for (k, amount) in moved.iter().enumerate() {
        let (payer, payee) = (1 + k as u64, 101 + k as u64);
        let (paid, got) = (pair.shards[0].balance(payer, cny()), pair.shards[1].balance(payee, cny()));
        assert_eq!((paid.available, paid.frozen, paid.incoming), (FUNDING - amount, 0, 0), "payer {payer}");
        assert_eq!((got.available, got.frozen, got.incoming), (*amount, 0, 0), "payee {payee}");
    }
    let in_transit: i128 = pair.shards.iter().flat_map(|shard| shard.in_transit().into_values()).sum();
    let unfinished: usize = pair.shards.iter().map(|shard| shard.unfinished_activities().len()).sum();
    assert_eq!((in_transit, unfinished), (0, 0), "no money in transit, no activity unfinished");
}

#[test]
fn each_activity_of_a_batch_ends_as_alone_in_fewer_records_and_the_odd_ones_are_set_aside() {
    run(async {
        let pair = pair().await;
        let mut batch: Vec<PlannedActivity> =
            (0..PAYERS).map(|k| transfer(1 + k, 101 + k, 10 + k, &format!("t{k}"))).collect();
        let before = records(&pair);
        let driven = run_activities(&pair, &batch).await;
        assert!(driven.iter().all(|d| *d == committed()), "{driven:?}");
        // Alone, five records each (Begin with the payer's Try, the payee's Try, the decision
        // with the payer's Confirm, the payee's Confirm, completion); together, every kind
        // shares records: eight Begins or decisions to one, seventeen of the rest.
        let written = records(&pair) - before;
        assert!(written <= PAYERS / 2, "{written} records for {PAYERS} activities");
        let mut moved: Vec<u64> = (0..PAYERS).map(|k| 10 + k).collect();
        check_books(&pair, &moved);

        // Sent again, with one too large for its payer and a repeat of one of them: the
        // repeats set aside (their Begins repeat), the one too large refused for funds, its
        // refusal falling on it alone, nothing written; alone, each repeat answers its first
        // answer and moves nothing more.
        batch.push(transfer(1, 101, FUNDING, "too-much"));
        batch.push(batch[3].clone());
        let before = records(&pair);
        let driven = run_activities(&pair, &batch).await;
        for (k, driven) in driven.iter().enumerate() {
            match k == PAYERS as usize {
                true => assert!(
                    matches!(driven, BatchDriven::Refused(Refusal::InsufficientFunds { user_id: 1, .. })),
                    "{driven:?}"
                ),
                false => assert_eq!(*driven, BatchDriven::Alone { begun: false }, "activity {k}"),
            }
        }
        assert_eq!(records(&pair), before, "a batch of repeats and refusals writes nothing");
        for plan in &batch[..PAYERS as usize] {
            let again = alone(&pair, plan).await.unwrap();
            assert_eq!((again.decision, again.begun_before), (Decision::Commit, true));
        }
        assert!(alone(&pair, &batch[PAYERS as usize]).await.is_err(), "too little available");
        check_books(&pair, &moved);

        // One of a new batch decided otherwise while its Tries run (recovery cancelled it past
        // its deadline): the decisions it shared a record with are refused with it and set
        // aside; alone, it carries out its cancel and the others their commit.
        let batch: Vec<PlannedActivity> =
            (0..PAYERS).map(|k| transfer(1 + k, 101 + k, 1 + k % 5, &format!("u{k}"))).collect();
        let cancelled = batch[17].activity;
        let racing = Hooked { pair: &pair, hook: DecidingFirst { activity: cancelled, done: Cell::new(false) } };
        let driven = run_activities(&racing, &batch).await;
        assert!(racing.hook.done.get(), "the racing decision was made");
        assert_eq!(driven[17], BatchDriven::Alone { begun: true });
        let aside = driven.iter().filter(|d| **d == BatchDriven::Alone { begun: true }).count();
        assert!(aside > 1 && aside < PAYERS as usize, "the refused record's other activities: {aside}");
        for (k, (plan, driven)) in batch.iter().zip(&driven).enumerate() {
            let decision = match driven {
                BatchDriven::Driven(driven) => driven.decision,
                BatchDriven::Alone { .. } => alone(&pair, plan).await.unwrap().decision,
                BatchDriven::Refused(refusal) => panic!("activity {k} refused: {refusal}"),
            };
            match k {
                17 => assert_eq!(decision, Decision::Cancel(CancelReason::Timeout)),
                _ => {
                    assert_eq!(decision, Decision::Commit, "activity {k}");
                    moved[k] += 1 + k as u64 % 5;
                }
            }
        }
        check_books(&pair, &moved);

        // Two of a new batch find their payee's branch fenced (a Cancel came first): their
        // Tries are refused, and their cancels share records with the others' commits, in
        // the payers' shard and in the payees'.
        let batch: Vec<PlannedActivity> = (0..PAYERS).map(|k| transfer(1 + k, 101 + k, 2, &format!("v{k}"))).collect();
        for k in [5, 30] {
            let fence = Step::Cancel { activity: batch[k].activity, branch: 1, action: batch[k].branches[1].action };
            call(|reply| pair.shards[1].transact(vec![fence], reply)).await.unwrap();
        }
        let before = records(&pair);
        let driven = run_activities(&pair, &batch).await;
        for (k, driven) in driven.iter().enumerate() {
            let BatchDriven::Driven(driven) = driven else { panic!("activity {k} set aside: {driven:?}") };
            match k {
                5 | 30 => assert_eq!(driven.decision, Decision::Cancel(CancelReason::TryRefused)),
                _ => {
                    assert_eq!(driven.decision, Decision::Commit, "activity {k}");
                    moved[k] += 2;
                }
            }
        }
        // The two refused Tries' shared records were sent again one activity to a record.
        let written = records(&pair) - before;
        assert!(written <= 2 * PAYERS + PAYERS / 2, "{written} records for {PAYERS} activities");
        check_books(&pair, &moved);

        // One new activity twice in a batch, its two Begins in one record: begun once,
        // driven by the batch; the other set aside, and alone it finds it begun.
        let mut batch: Vec<PlannedActivity> = (0..4).map(|k| transfer(1 + k, 101 + k, 3, &format!("w{k}"))).collect();
        batch.push(batch[2].clone());
        let driven = run_activities(&pair, &batch).await;
        assert!(driven[..4].iter().all(|d| *d == committed()), "{driven:?}");
        assert_eq!(driven[4], BatchDriven::Alone { begun: false });
        let again = alone(&pair, &batch[4]).await.unwrap();
        assert_eq!((again.decision, again.begun_before), (Decision::Commit, true));
        (0..4).for_each(|k| moved[k] += 3);
        check_books(&pair, &moved);
    });
}

/// One activity twice in a batch, too large for its payer: the copy alone in its record is
/// refused for funds at once, the other, in a record refused whole, is sent again alone after
/// the payer was funded meanwhile, and begins. The refused copy is set aside, not answered as
/// refused: alone it finds the activity begun and answers its commit, and the money moves
/// once.
#[test]
fn a_copy_refused_for_funds_while_the_other_begins_is_set_aside() {
    run(async {
        let pair = pair().await;
        let large = transfer(1, 101, FUNDING + 500, "large");
        let mut batch = vec![large.clone()];
        // Seven more Begins fill the first record (eight to a record); the last copy is alone.
        batch.extend((0..7).map(|k| transfer(2 + k, 102 + k, 5, &format!("x{k}"))));
        batch.push(large.clone());
        let funding = Hooked { pair: &pair, hook: FundingBetween { begins_sent: Cell::new(0) } };
        let driven = run_activities(&funding, &batch).await;
        assert_eq!(funding.hook.begins_sent.get(), 2, "the Begins went together, then the refused record's alone");
        assert_eq!(driven[0], committed(), "the copy sent again after the funding began");
        assert_eq!(driven[8], BatchDriven::Alone { begun: false }, "the copy refused first is set aside");
        let again = alone(&pair, &batch[8]).await.unwrap();
        assert_eq!((again.decision, again.begun_before), (Decision::Commit, true));
        let (paid, got) = (pair.shards[0].balance(1, cny()), pair.shards[1].balance(101, cny()));
        assert_eq!((paid.available, paid.frozen), (2 * FUNDING - large_amount(&large), 0), "moved once");
        assert_eq!(got.available, large_amount(&large));
    });
}

fn large_amount(plan: &PlannedActivity) -> u64 {
    plan.branches[0].action.account().expect("an account's branch").2
}

/// What a test's sender does with a hand-off of many transactions, in place of the pair.
trait OnSendMany {
    async fn send_many(
        &self,
        pair: &ShardPair,
        shard: u32,
        transactions: Vec<Vec<Step>>,
    ) -> Result<ManyAnswers<TradeError>, TradeError>;
}

/// Carries steps as the pair does, but hands each hand-off of many transactions to `hook`.
struct Hooked<'a, H> {
    pair: &'a ShardPair,
    hook: H,
}

impl<H: OnSendMany> StepSender for Hooked<'_, H> {
    type Error = TradeError;

    async fn send(&self, shard: u32, steps: Vec<Step>) -> Result<Vec<StepAnswer>, TradeError> {
        self.pair.send(shard, steps).await
    }

    async fn post(&self, shard: u32, steps: Vec<Step>) {
        self.pair.post(shard, steps).await
    }

    async fn send_many(&self, shard: u32, transactions: Vec<Vec<Step>>) -> Result<ManyAnswers<TradeError>, TradeError> {
        self.hook.send_many(self.pair, shard, transactions).await
    }

    async fn call(
        &self,
        participant: u16,
        call: BranchCall,
        activity: u128,
        branch: u16,
        reference: u64,
    ) -> Result<(), TradeError> {
        self.pair.call(participant, call, activity, branch, reference).await
    }
}

/// Funds payer 1 with `FUNDING` more before the second hand-off of Begins (the batch's Begins
/// sent again alone).
struct FundingBetween {
    begins_sent: Cell<usize>,
}

impl OnSendMany for FundingBetween {
    async fn send_many(
        &self,
        pair: &ShardPair,
        shard: u32,
        transactions: Vec<Vec<Step>>,
    ) -> Result<ManyAnswers<TradeError>, TradeError> {
        if transactions.iter().flatten().any(|step| matches!(step, Step::Begin { .. })) {
            self.begins_sent.set(self.begins_sent.get() + 1);
            if self.begins_sent.get() == 2 {
                let command = AccountCommand::new(AccountOp::Deposit, 1, "CNY", FUNDING, "more").unwrap();
                call(|reply| pair.shards[0].post(command, reply)).await?;
            }
        }
        pair.send_many(shard, transactions).await
    }
}

/// First records a cancel of `activity` in its home shard when the batch's decisions come: as
/// recovery would, past the activity's deadline.
struct DecidingFirst {
    activity: u128,
    done: Cell<bool>,
}

impl OnSendMany for DecidingFirst {
    async fn send_many(
        &self,
        pair: &ShardPair,
        shard: u32,
        transactions: Vec<Vec<Step>>,
    ) -> Result<ManyAnswers<TradeError>, TradeError> {
        let deciding = transactions.iter().flatten().any(|step| matches!(step, Step::Decide { .. }));
        if deciding && !self.done.replace(true) {
            let cancel = Decision::Cancel(CancelReason::Timeout);
            pair.send(0, vec![Step::Decide { activity: self.activity, decision: cancel }]).await?;
        }
        pair.send_many(shard, transactions).await
    }
}

/// The first time a record of Tries holding `activity`'s goes to the payees' shard, fails that
/// record with an error that is no refusal (as a failed read of a run would), unwritten, while
/// the others of the hand-off are written.
struct FailingTry {
    activity: u128,
    failed: Cell<bool>,
}

impl OnSendMany for FailingTry {
    async fn send_many(
        &self,
        pair: &ShardPair,
        shard: u32,
        transactions: Vec<Vec<Step>>,
    ) -> Result<ManyAnswers<TradeError>, TradeError> {
        let holds = |steps: &Vec<Step>| {
            steps.iter().any(|step| matches!(step, Step::Try { activity, .. } if *activity == self.activity))
        };
        match transactions.iter().position(holds) {
            Some(at) if shard == 1 && !self.failed.replace(true) => {
                let mut others = transactions;
                others.remove(at);
                let mut answers = pair.send_many(shard, others).await?;
                answers.insert(at, Err(TradeError::BadRecord { seq: 0, reason: "a run's block did not read" }));
                Ok(answers)
            }
            _ => pair.send_many(shard, transactions).await,
        }
    }
}

/// An error that is no refusal on one record of payees' Tries shared by many activities falls
/// on its own activity only: the record's activities are sent again one to a record, and each
/// ends as its own Try answers (here all commit, the failure having passed).
#[test]
fn an_error_of_a_shared_record_of_tries_falls_on_each_activity_alone() {
    run(async {
        let pair = pair().await;
        let batch: Vec<PlannedActivity> = (0..PAYERS).map(|k| transfer(1 + k, 101 + k, 7, &format!("f{k}"))).collect();
        let failing =
            Hooked { pair: &pair, hook: FailingTry { activity: batch[9].activity, failed: Cell::new(false) } };
        let driven = run_activities(&failing, &batch).await;
        assert!(failing.hook.failed.get(), "the record failed once");
        for (k, driven) in driven.iter().enumerate() {
            assert_eq!(*driven, committed(), "activity {k}");
        }
        for k in 0..PAYERS {
            assert_eq!(pair.shards[1].balance(101 + k, cny()).available, 7, "payee {k} credited once");
        }
    });
}

/// One of a batch whose payee's branch was fenced (its Try refused), and which recovery
/// cancelled past its deadline before the batch's decisions came: the batch's cancel for
/// another reason is the same decision, a repeat, so the record it shares with the others'
/// commits is not refused; every activity is driven by the batch, and the fenced one answers
/// the cancel recorded first.
#[test]
fn a_cancel_recorded_first_for_another_reason_is_the_batchs_decision_too() {
    run(async {
        let pair = pair().await;
        let batch: Vec<PlannedActivity> = (0..8).map(|k| transfer(1 + k, 101 + k, 4, &format!("c{k}"))).collect();
        let fenced = &batch[3];
        let fence = Step::Cancel { activity: fenced.activity, branch: 1, action: fenced.branches[1].action };
        call(|reply| pair.shards[1].transact(vec![fence], reply)).await.unwrap();
        let racing = Hooked { pair: &pair, hook: DecidingFirst { activity: fenced.activity, done: Cell::new(false) } };
        let driven = run_activities(&racing, &batch).await;
        assert!(racing.hook.done.get(), "recovery's cancel came first");
        for (k, driven) in driven.iter().enumerate() {
            let BatchDriven::Driven(driven) = driven else { panic!("activity {k} set aside: {driven:?}") };
            let expected = if k == 3 { Decision::Cancel(CancelReason::Timeout) } else { Decision::Commit };
            assert_eq!(driven.decision, expected, "activity {k}");
        }
        let again = alone(&pair, fenced).await;
        assert!(again.is_err() || again.unwrap().decision == Decision::Cancel(CancelReason::Timeout));
    });
}
