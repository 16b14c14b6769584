//! Requests made by a task on the executor that owns their shard (`EngineHandle::spawn_on`)
//! run there at once, with no hand-off (`engine/src/local.rs`): they answer exactly as the same
//! requests from any other thread, a request for another executor's shard still goes to that
//! executor, and requests in place and handed over mix on one shard with nothing lost or moved
//! twice.

use std::sync::mpsc;
use std::time::Duration;

use tradeshard_engine::{Engine, EngineHandle, Error, Refusal, TransferReceipt};
use tradeshard_tests::{available, engine_options, money_cny};

/// Runs `work` as a task of `executor` and waits for what it answers.
fn on_executor<T: Send + 'static, Fut: std::future::Future<Output = T> + 'static>(
    h: &EngineHandle,
    executor: usize,
    work: impl FnOnce(EngineHandle) -> Fut + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = h.clone();
    futures_lite::future::block_on(h.spawn_on(executor, move || async move {
        let _ = tx.send(work(handle).await);
    }))
    .unwrap();
    rx.recv_timeout(Duration::from_secs(60)).expect("the task answers")
}

fn in_place(h: &EngineHandle) -> u64 {
    h.stats_blocking().unwrap().requests_in_place
}

/// `count` users of `shard`.
fn users_of(h: &EngineHandle, shard: u32, count: usize) -> Vec<u64> {
    (1..).filter(|user| h.routing().physical_of_user(*user) == shard).take(count).collect()
}

#[test]
fn requests_on_the_owning_executor_run_there_and_answer_as_from_any_thread() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let routing = h.routing();
    let (a, b) = match users_of(&h, 0, 2)[..] {
        [a, b] => (a, b),
        _ => unreachable!(),
    };
    let other = users_of(&h, 1, 1)[0];
    let (home, away) = (routing.executor_of_physical(0), routing.executor_of_physical(1));
    assert_ne!(home, away, "two shards on two executors");
    for user in [a, b, other] {
        h.deposit_blocking(user, "CNY", 1_000, "fund").unwrap();
    }
    assert_eq!(in_place(&h), 0, "requests from a plain thread are handed over");

    let (first, repeat, conflict) = on_executor(&h, home, move |h| async move {
        let first = h.transfer(a, b, "CNY", 300, "T-1").await;
        let repeat = h.transfer(a, b, "CNY", 300, "T-1").await;
        let conflict = h.transfer(a, b, "CNY", 301, "T-1").await;
        (first, repeat, conflict)
    });
    let first = first.unwrap();
    assert_eq!(
        first,
        TransferReceipt {
            activity: first.activity,
            from_user: a,
            to_user: b,
            currency: first.currency,
            amount: 300,
            local: true,
            replayed: false
        }
    );
    assert_eq!(repeat.unwrap(), TransferReceipt { replayed: true, ..first }, "a repeat answers the first answer");
    match conflict {
        Err(Error::Refused(Refusal::AccountRequestConflict { op: "transfer", amount: 300, .. })) => {}
        other => panic!("the same number for another amount must conflict: {other:?}"),
    }
    assert_eq!((available(&h, a), available(&h, b)), (700, 1_300), "moved once");
    assert_eq!(in_place(&h), 3, "the three requests ran on the executor that made them");

    // From the same executor, a request for the other executor's shard is handed over.
    let deposited = on_executor(&h, home, move |h| async move { h.deposit(other, "CNY", 5, "D-1").await });
    assert!(!deposited.unwrap().replayed);
    assert_eq!(available(&h, other), 1_005);
    assert_eq!(in_place(&h), 3, "a request for another executor's shard is not run in place");
    engine.close().unwrap();
}

#[test]
fn requests_in_place_and_handed_over_mix_on_one_shard_with_money_conserved() {
    const TASKS: u64 = 32;
    const EACH: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let users = users_of(&h, 0, 8);
    for user in &users {
        h.deposit_blocking(*user, "CNY", 10_000, "fund").unwrap();
    }
    let home = h.routing().executor_of_physical(0);
    let moved_in_place = {
        let (payers, h2) = (users.clone(), h.clone());
        // The plain thread's transfers among the same users run while the tasks' do.
        let handed = std::thread::spawn(move || {
            let users = payers;
            let mut moved = 0;
            for n in 0..TASKS * EACH / 4 {
                let (from, to) = (users[n as usize % 8], users[(n as usize + 3) % 8]);
                if h2.transfer_blocking(from, to, "CNY", 7, &format!("P-{n}")).is_ok() {
                    moved += 1;
                }
            }
            moved
        });
        let users = users.clone();
        let moved = on_executor(&h, home, move |h| async move {
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    let (h, users) = (h.clone(), users.clone());
                    glommio::spawn_local(async move {
                        let mut answers = Vec::new();
                        for n in 0..EACH {
                            let (from, to) = (users[(task + n) as usize % 8], users[(task + 2 * n + 1) as usize % 8]);
                            if from != to {
                                let number = format!("E-{task}-{n}");
                                answers.push((number.clone(), h.transfer(from, to, "CNY", 11, &number).await));
                            }
                        }
                        answers
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for task in tasks {
                answers.extend(task.await);
            }
            answers
        });
        assert!(handed.join().unwrap() > 0);
        moved
    };
    for (number, answer) in &moved_in_place {
        let receipt = answer.as_ref().unwrap_or_else(|e| panic!("{number}: {e}"));
        assert!(receipt.local && !receipt.replayed, "{number}: a first request, within the shard");
    }
    assert_eq!(in_place(&h), moved_in_place.len() as u64);
    assert_eq!(money_cny(&h), 8 * 10_000, "balances add up to the deposits");
    // A retry of each from the plain thread finds the first answer.
    for (number, answer) in moved_in_place.iter().take(20) {
        let first = answer.as_ref().unwrap();
        let again = h.transfer_blocking(first.from_user, first.to_user, "CNY", 11, number).unwrap();
        assert_eq!(again, TransferReceipt { replayed: true, ..*first }, "{number}");
    }
    let balances: u64 = users.iter().map(|user| available(&h, *user)).sum();
    assert_eq!(balances, 8 * 10_000);
    engine.close().unwrap();
}

/// A task looping on requests answered in place at once (a refusal, a read) still lets its
/// executor flush and apply the writes of other threads: here it loops until it reads a deposit
/// another thread made to the same shard, which it can see only if the executor went on.
#[test]
fn a_task_looping_on_answers_given_in_place_lets_its_executor_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let user = users_of(&h, 0, 1)[0];
    h.deposit_blocking(user, "CNY", 100, "fund").unwrap();
    let home = h.routing().executor_of_physical(0);
    let (looping_tx, looping_rx) = mpsc::channel();
    let task_handle = h.clone();
    let looping = std::thread::spawn(move || {
        on_executor(&task_handle, home, move |h| async move {
            let _ = looping_tx.send(());
            for refusals in 0..1_000_000u64 {
                match h.withdraw(user, "CNY", 1_000_000, "too-much").await {
                    Err(Error::Refused(Refusal::InsufficientFunds { .. })) => {}
                    other => return Err(format!("a withdrawal of too much answered {other:?}")),
                }
                if h.balance(user, "CNY").await.map_err(|e| e.to_string())?.available == 150 {
                    return Ok(refusals + 1);
                }
            }
            Err("the deposit never became durable while the task looped".to_string())
        })
    });
    looping_rx.recv().unwrap();
    h.deposit_blocking(user, "CNY", 50, "late").unwrap();
    let refusals = looping.join().unwrap().unwrap();
    assert!(refusals > 0);
    assert!(in_place(&h) >= 2 * refusals - 1, "the loop's requests ran in place");
    engine.close().unwrap();
}
