//! Transfers between users through the public handle of an engine on the real disk, a batch of
//! 1,024 at a time (`transfer_many`) from a client executor: across shards (an activity each,
//! driven together: four hand-offs to each shard a batch) and within one shard (a journal
//! record each). The payers are funded once, for more batches than criterion runs; each
//! iteration is one batch of fresh request numbers, every transfer answered and committed.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};
use tradeshard_benches::open_engine;
use tradeshard_engine::{EngineHandle, TransferRequest};

const BATCH: usize = 1_024;
/// Users in each shard: a batch's payers are all different users.
const USERS_PER_SHARD: usize = 2 * BATCH;
const FUNDING: u64 = 1 << 40;

/// Runs `work` on a client executor of this thread.
fn on_client<T>(work: impl std::future::Future<Output = T> + 'static) -> T {
    LocalExecutorBuilder::new(Placement::Unbound).make().expect("client executor").run(work)
}

/// The first users of each shard, by shard.
fn users_by_shard(handle: &EngineHandle) -> Vec<Vec<u64>> {
    let routing = handle.routing();
    let mut by_shard = vec![Vec::new(); routing.physical_shards as usize];
    for user in 1.. {
        let users = &mut by_shard[routing.physical_of_user(user) as usize];
        if users.len() < USERS_PER_SHARD {
            users.push(user);
        }
        if by_shard.iter().all(|users| users.len() == USERS_PER_SHARD) {
            return by_shard;
        }
    }
    unreachable!("users of every shard are found")
}

fn fund(handle: &EngineHandle, users: &[u64]) {
    let (handle, users) = (handle.clone(), users.to_vec());
    on_client(async move {
        let deposits: Vec<_> = users
            .into_iter()
            .map(|user| {
                let handle = handle.clone();
                glommio::spawn_local(async move { handle.deposit(user, "CNY", FUNDING, "funding").await })
            })
            .collect();
        for deposit in deposits {
            deposit.await.expect("funded");
        }
    });
}

/// `iters` batches of transfers from `payers[i]` to `payees[i]`, each with fresh request numbers.
fn batches(handle: &EngineHandle, payers: &[u64], payees: &[u64], iters: u64, next: &mut u64) -> Duration {
    let (handle, payers, payees) = (handle.clone(), payers.to_vec(), payees.to_vec());
    let first = *next;
    *next += iters;
    on_client(async move {
        let start = Instant::now();
        for batch in first..first + iters {
            let numbers: Vec<String> = (0..BATCH).map(|at| format!("b{batch}-{at}")).collect();
            let requests: Vec<TransferRequest> = (0..BATCH)
                .map(|at| TransferRequest {
                    from_user: payers[at],
                    to_user: payees[at],
                    currency: "CNY",
                    amount: 1,
                    request_no: &numbers[at],
                })
                .collect();
            let answers = handle.transfer_many(&requests).await.expect("a batch within the bound");
            assert!(answers.iter().all(|answer| answer.is_ok()), "every transfer commits");
        }
        start.elapsed()
    })
}

fn transfers(c: &mut Criterion) {
    let (_dir, engine) = open_engine(256 << 20);
    let handle = engine.handle();
    let by_shard = users_by_shard(&handle);
    assert!(by_shard.len() >= 2, "transfers across shards need two shards");
    for users in &by_shard {
        fund(&handle, users);
    }
    // Across: half the payers in each of the first two shards, paying a user of the other.
    let half = BATCH / 2;
    let (zero, one) = (&by_shard[0], &by_shard[1]);
    let across_payers: Vec<u64> = zero[..half].iter().chain(&one[..half]).copied().collect();
    let across_payees: Vec<u64> = one[half..BATCH].iter().chain(&zero[half..BATCH]).copied().collect();
    // Within: the same payers, paying users of their own shard.
    let within_payees: Vec<u64> = zero[BATCH..BATCH + half].iter().chain(&one[BATCH..BATCH + half]).copied().collect();
    let mut group = c.benchmark_group("engine_transfer");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut next = 0;
    for (name, payees) in [("across_shards_batch_1024", &across_payees), ("within_a_shard_batch_1024", &within_payees)]
    {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| batches(&handle, &across_payers, payees, iters, &mut next))
        });
    }
    group.finish();
    drop(handle);
    engine.close().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = transfers
}
criterion_main!(benches);
