//! Activities with the embedder's own participants, through `EngineHandle::run_activity`: a
//! participant's Try refused cancels every branch (the account's money comes back, the
//! participant is told to cancel); a Confirm that fails is sent again by recovery until it
//! succeeds, and the activity completes, without waiting behind activities whose participant
//! stopped answering; account branches must balance; an unknown
//! participant and bad input are refused with no trace.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tradeshard_engine::{
    ActivityState, BranchAction, BranchCall, CancelReason, Currency, Decision, Engine, EngineHandle, Error, InputError,
    Options, Participant, ParticipantFuture, Participants,
};
use tradeshard_tests::engine_options;

/// A participant keeping TCC's contract in memory: it records every call; refuses a Try
/// whose reference is odd, a Try after its Cancel (the fence), fails the first
/// `confirm_failures` Confirms, and every Confirm of a reference from 1,000 on.
#[derive(Default)]
struct Coupons {
    calls: Mutex<Vec<(BranchCall, u128, u64)>>,
    cancelled: Mutex<Vec<u128>>,
    confirm_failures: Mutex<u32>,
    /// From when it is set, a Confirm of a reference from 1,000 on never answers.
    hang: std::sync::atomic::AtomicBool,
}

struct Shared(Arc<Coupons>);

impl Participant for Shared {
    fn call(&self, call: BranchCall, activity: u128, _branch: u16, reference: u64) -> ParticipantFuture<'_> {
        Box::pin(async move {
            let coupons = &self.0;
            coupons.calls.lock().unwrap().push((call, activity, reference));
            match call {
                BranchCall::Try if reference % 2 == 1 => Err("coupon already used".to_string()),
                BranchCall::Try if coupons.cancelled.lock().unwrap().contains(&activity) => Err("fenced".into()),
                BranchCall::Try => Ok(()),
                BranchCall::Cancel => {
                    coupons.cancelled.lock().unwrap().push(activity);
                    Ok(())
                }
                BranchCall::Confirm if reference >= 1_000 && coupons.hang.load(std::sync::atomic::Ordering::SeqCst) => {
                    std::future::pending().await
                }
                BranchCall::Confirm if reference >= 1_000 => Err("this coupon's service is down".into()),
                BranchCall::Confirm => {
                    let mut failures = coupons.confirm_failures.lock().unwrap();
                    match *failures {
                        0 => Ok(()),
                        _ => {
                            *failures -= 1;
                            Err("coupon service unavailable".into())
                        }
                    }
                }
            }
        })
    }
}

fn open(dir: &std::path::Path, coupons: &Arc<Coupons>) -> Engine {
    open_recovering_every(dir, coupons, Duration::from_millis(20))
}

/// An engine with `coupons` as participant 7, whose activity recovery runs every `interval`.
fn open_recovering_every(dir: &std::path::Path, coupons: &Arc<Coupons>, interval: Duration) -> Engine {
    let options = Options {
        participants: Participants::default().with(7, Shared(coupons.clone())),
        activity_recovery_interval: interval,
        ..engine_options(dir, 2, 2)
    };
    Engine::open(options).unwrap()
}

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

/// Users 1 and one of another shard, 1,000 CNY each.
fn two_users(h: &EngineHandle) -> (u64, u64) {
    let routing = h.routing();
    let shard = |user| routing.physical_of_user(user);
    let other = (2..100).find(|user| shard(*user) != shard(1)).unwrap();
    h.deposit_blocking(1, "CNY", 1_000, "fund").unwrap();
    h.deposit_blocking(other, "CNY", 1_000, "fund").unwrap();
    (1, other)
}

fn calls(coupons: &Coupons, activity: u128) -> Vec<BranchCall> {
    coupons.calls.lock().unwrap().iter().filter(|(_, a, _)| *a == activity).map(|(call, _, _)| *call).collect()
}

#[test]
fn a_participant_refusing_its_try_cancels_every_branch() {
    let dir = tempfile::tempdir().unwrap();
    let coupons = Arc::new(Coupons::default());
    // Every activity here ends in its caller's request, and the lists of calls below are
    // exact: a recovery pass between an answer and the durable Complete of its activity would
    // send the decision to the participant a second time. No pass after the one at open comes
    // within 10 s.
    let engine = open_recovering_every(dir.path(), &coupons, Duration::from_secs(10));
    let h = engine.handle();
    let (a, b) = two_users(&h);
    let pay = |reference| {
        vec![
            BranchAction::Freeze { user_id: a, currency: cny(), amount: 300 },
            BranchAction::Credit { user_id: b, currency: cny(), amount: 300 },
            BranchAction::External { participant: 7, reference },
        ]
    };
    let refused = h.run_activity_blocking(a, "buy-1", &pay(41)).unwrap();
    assert_eq!((refused.decision, refused.completed), (Decision::Cancel(CancelReason::TryRefused), true));
    assert_eq!(calls(&coupons, refused.activity), vec![BranchCall::Try, BranchCall::Cancel]);
    assert_eq!(h.balance_blocking(a, "CNY").unwrap().available, 1_000, "the payer's money came back");
    assert_eq!(h.balance_blocking(b, "CNY").unwrap().incoming, 0, "the payee's room was released");
    let again = h.run_activity_blocking(a, "buy-1", &pay(41)).unwrap();
    assert_eq!((again.decision, again.replayed), (refused.decision, true), "a retry answers the decision");

    let bought = h.run_activity_blocking(a, "buy-2", &pay(42)).unwrap();
    assert_eq!((bought.decision, bought.completed, bought.replayed), (Decision::Commit, true, false));
    assert_eq!(calls(&coupons, bought.activity), vec![BranchCall::Try, BranchCall::Confirm]);
    assert_eq!(h.balance_blocking(a, "CNY").unwrap().available, 700);
    assert_eq!(h.balance_blocking(b, "CNY").unwrap().available, 1_300);
    assert_eq!(h.money_in_transit_blocking().unwrap().values().sum::<i128>(), 0);
    engine.close().unwrap();
}

#[test]
fn a_failing_confirm_is_sent_again_by_recovery_until_the_activity_completes() {
    let dir = tempfile::tempdir().unwrap();
    let coupons = Arc::new(Coupons { confirm_failures: Mutex::new(3), ..Coupons::default() });
    let engine = open(dir.path(), &coupons);
    let h = engine.handle();
    let (a, b) = two_users(&h);
    let actions = [
        BranchAction::Freeze { user_id: a, currency: cny(), amount: 100 },
        BranchAction::Credit { user_id: b, currency: cny(), amount: 100 },
        BranchAction::External { participant: 7, reference: 8 },
    ];
    // An activity whose participant never confirms stays in doubt, and does not hold up the
    // recovery of the others.
    let stuck = [
        BranchAction::Freeze { user_id: a, currency: cny(), amount: 1 },
        BranchAction::Credit { user_id: b, currency: cny(), amount: 1 },
        BranchAction::External { participant: 7, reference: 1_000 },
    ];
    // Recovery meets activities in the order of their ids: this one comes first.
    let buy_id = tradeshard_shard::account_request_key(a, "buy");
    let stuck_no = (0..).map(|n| format!("stuck-{n}")).find(|no| tradeshard_shard::account_request_key(a, no) < buy_id);
    let stuck = h.run_activity_blocking(a, &stuck_no.unwrap(), &stuck).unwrap();
    assert_eq!((stuck.decision, stuck.completed), (Decision::Commit, false));
    let outcome = h.run_activity_blocking(a, "buy", &actions).unwrap();
    assert_eq!((outcome.decision, outcome.completed), (Decision::Commit, false), "the decision stands");
    let started = Instant::now();
    while h.activities_in_doubt_blocking().unwrap().len() > 1 {
        assert!(started.elapsed() < Duration::from_secs(10), "recovery did not complete the activity");
        std::thread::sleep(Duration::from_millis(10));
    }
    let confirms = calls(&coupons, outcome.activity).iter().filter(|call| **call == BranchCall::Confirm).count();
    assert!(confirms >= 4, "three failed Confirms and one that succeeded: {confirms}");
    let in_doubt = h.activities_in_doubt_blocking().unwrap();
    assert_eq!(in_doubt.iter().map(|(_, id, _)| *id).collect::<Vec<_>>(), vec![stuck.activity]);
    assert_eq!(h.balance_blocking(b, "CNY").unwrap().available, 1_101, "both credits confirmed");
    let again = h.run_activity_blocking(a, "buy", &actions).unwrap();
    assert_eq!((again.decision, again.completed, again.replayed), (Decision::Commit, true, true));
    engine.close().unwrap();
}

/// Recovery drives the activities in doubt side by side: two whose participant stopped
/// answering (each call waits out `participant_timeout`) come before another in recovery's
/// order, and that one is still completed within about one timeout, not two.
#[test]
fn a_participant_that_never_answers_does_not_hold_up_the_recovery_of_other_activities() {
    let dir = tempfile::tempdir().unwrap();
    let coupons = Arc::new(Coupons { confirm_failures: Mutex::new(u32::MAX), ..Coupons::default() });
    let timeout = Duration::from_secs(2);
    let options = Options {
        participants: Participants::default().with(7, Shared(coupons.clone())),
        activity_recovery_interval: Duration::from_millis(20),
        participant_timeout: timeout,
        ..engine_options(dir.path(), 2, 2)
    };
    let engine = Engine::open(options).unwrap();
    let h = engine.handle();
    let (a, b) = two_users(&h);
    let actions = |reference| {
        [
            BranchAction::Freeze { user_id: a, currency: cny(), amount: 1 },
            BranchAction::Credit { user_id: b, currency: cny(), amount: 1 },
            BranchAction::External { participant: 7, reference },
        ]
    };
    let buy_id = tradeshard_shard::account_request_key(a, "buy");
    let earlier =
        (0..).map(|n| format!("stuck-{n}")).filter(|no| tradeshard_shard::account_request_key(a, no) < buy_id);
    for no in earlier.take(2) {
        let stuck = h.run_activity_blocking(a, &no, &actions(1_000)).unwrap();
        assert_eq!((stuck.decision, stuck.completed), (Decision::Commit, false));
    }
    // Its Confirms fail until the other two's participant falls silent; then they succeed.
    let outcome = h.run_activity_blocking(a, "buy", &actions(8)).unwrap();
    assert_eq!((outcome.decision, outcome.completed), (Decision::Commit, false));
    *coupons.confirm_failures.lock().unwrap() = 0;
    coupons.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    while h.activities_in_doubt_blocking().unwrap().iter().any(|(_, id, _)| *id == outcome.activity) {
        // A pass under way may wait out one timeout before the next drives it: about one
        // timeout in all. One activity at a time, the two ahead of it would hold the next pass
        // for two timeouts before it is driven, so the bound lies just under two; what is left
        // of the second timeout is room for a slow host.
        let bound = timeout * 2 - Duration::from_millis(250);
        assert!(started.elapsed() < bound, "recovery waited on the silent participant first");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(h.activities_in_doubt_blocking().unwrap().len(), 2, "the two whose participant is silent");
    engine.close().unwrap();
}

type ErrorCheck = fn(&Error) -> bool;

#[test]
fn unbalanced_branches_unknown_participants_and_bad_input_are_refused_with_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let coupons = Arc::new(Coupons::default());
    let engine = open(dir.path(), &coupons);
    let h = engine.handle();
    let (a, b) = two_users(&h);
    let freeze = BranchAction::Freeze { user_id: a, currency: cny(), amount: 100 };
    let credit = |amount| BranchAction::Credit { user_id: b, currency: cny(), amount };
    let cases: Vec<(Vec<BranchAction>, &str, ErrorCheck)> = vec![
        (vec![freeze, credit(99)], "x", |e| matches!(e, Error::Invalid(InputError::UnbalancedActivity { .. }))),
        (vec![freeze], "x", |e| matches!(e, Error::Invalid(InputError::UnbalancedActivity { .. }))),
        (vec![BranchAction::External { participant: 9, reference: 0 }], "x", |e| {
            matches!(e, Error::Invalid(InputError::UnknownParticipant { participant: 9 }))
        }),
        (vec![], "x", |e| matches!(e, Error::Invalid(InputError::BadSteps { count: 0, .. }))),
        (vec![freeze; 9], "x", |e| matches!(e, Error::Invalid(InputError::BadSteps { count: 9, .. }))),
        (vec![freeze, credit(100)], "", |e| matches!(e, Error::Invalid(InputError::BadRequestNo { .. }))),
    ];
    for (n, (actions, request_no, expected)) in cases.into_iter().enumerate() {
        match h.run_activity_blocking(a, request_no, &actions) {
            Err(error) if expected(&error) => {}
            other => panic!("case {n}: {other:?}"),
        }
    }
    assert!(h.stats_blocking().unwrap().shards.iter().all(|shard| shard.activities == 0), "nothing recorded");
    assert!(coupons.calls.lock().unwrap().is_empty(), "no participant called");
    engine.close().unwrap();
}

/// A read-only open (`Options::read_only`, what `tradeshard inspect` opens with) leaves an
/// activity in doubt as it found it: listed with its decision, its participant not called;
/// the next open that may write carries it on.
#[test]
fn a_read_only_open_shows_an_activity_in_doubt_and_does_not_drive_it() {
    let dir = tempfile::tempdir().unwrap();
    let coupons = Arc::new(Coupons::default());
    let engine = open(dir.path(), &coupons);
    let h = engine.handle();
    let (a, _) = two_users(&h);
    // The participant's Confirm fails for a reference from 1,000 on: the activity stays
    // decided and not completed.
    // Its one branch is the participant's, so that recovery's first step is to call it.
    let actions = [BranchAction::External { participant: 7, reference: 1_000 }];
    let outcome = h.run_activity_blocking(a, "stuck", &actions).unwrap();
    assert_eq!((outcome.decision, outcome.completed), (Decision::Commit, false));
    engine.close().unwrap();
    let calls_before = calls(&coupons, outcome.activity).len();

    let options = Options {
        read_only: true,
        participants: Participants::default().with(7, Shared(coupons.clone())),
        activity_recovery_interval: Duration::from_millis(20),
        ..engine_options(dir.path(), 2, 2)
    };
    let engine = Engine::open(options).unwrap();
    let h = engine.handle();
    std::thread::sleep(Duration::from_millis(200));
    let in_doubt = h.activities_in_doubt_blocking().unwrap();
    assert_eq!(in_doubt.iter().map(|(_, id, _)| *id).collect::<Vec<_>>(), vec![outcome.activity]);
    assert_eq!(calls(&coupons, outcome.activity).len(), calls_before, "no participant was called");
    assert_eq!(in_doubt[0].2.state, ActivityState::Decided(Decision::Commit), "as found: decided, not completed");
    engine.close().unwrap();

    // An open that may write drives it again (this participant's Confirm keeps failing).
    let engine = open(dir.path(), &coupons);
    let started = Instant::now();
    while calls(&coupons, outcome.activity).len() == calls_before {
        assert!(started.elapsed() < Duration::from_secs(10), "recovery did not call the participant");
        std::thread::sleep(Duration::from_millis(10));
    }
    engine.close().unwrap();
}
