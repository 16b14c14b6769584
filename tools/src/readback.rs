//! The untimed phases of `tradeshard load`: creating the trades a read workload reads, and
//! reading back every acknowledged trade at the end (the run fails on any mismatch).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use indicatif::{ProgressBar, ProgressStyle};
use tradeshard_engine::{EngineHandle, TradeId, TradeStatus};

/// Creates `--read-trades` trades for the read workload, `--inflight` at a time, untimed.
pub async fn ingest_untimed(
    handle: &EngineHandle,
    trades: u64,
    inflight: usize,
    users: u64,
) -> anyhow::Result<Vec<TradeId>> {
    let total = trades.max(1);
    let ids = Rc::new(RefCell::new(Vec::with_capacity(total as usize)));
    let next = Rc::new(Cell::new(0u64));
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("ingest {pos}/{len} {bar:30}").expect("valid template"));
    let tasks: Vec<_> = (0..inflight.min(total as usize))
        .map(|_| {
            let (handle, ids, next, bar) = (handle.clone(), ids.clone(), next.clone(), bar.clone());
            glommio::spawn_local(async move {
                loop {
                    let n = next.get();
                    if n >= total {
                        return Ok::<_, tradeshard_engine::Error>(());
                    }
                    next.set(n + 1);
                    let trade = crate::workload::numbered_trade("R", n, 1 + n % users.max(1));
                    let id = handle.create_trade(trade).await?.id;
                    ids.borrow_mut().push(id);
                    if n % 4096 == 0 {
                        bar.set_position(n);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    bar.finish_and_clear();
    Ok(Rc::try_unwrap(ids).map_err(|_| anyhow::anyhow!("ingest tasks still running"))?.into_inner())
}

/// Reads back every acknowledged trade, `inflight` at a time.
pub async fn verify(handle: &EngineHandle, acked: &[(TradeId, TradeStatus)], inflight: usize) -> (u64, u64) {
    let last: HashMap<TradeId, TradeStatus> = acked.iter().copied().collect();
    let expected: Vec<(TradeId, TradeStatus)> = last.into_iter().collect();
    let expected = Rc::new(expected);
    let next = Rc::new(Cell::new(0usize));
    let mismatches = Rc::new(Cell::new(0u64));
    let bar = ProgressBar::new(expected.len() as u64);
    bar.set_style(ProgressStyle::with_template("verify {pos}/{len} {bar:30}").expect("valid template"));
    let tasks: Vec<_> = (0..inflight.min(expected.len()).max(1))
        .map(|_| {
            let (handle, expected, next, mismatches, bar) =
                (handle.clone(), expected.clone(), next.clone(), mismatches.clone(), bar.clone());
            glommio::spawn_local(async move {
                loop {
                    let i = next.get();
                    if i >= expected.len() {
                        break;
                    }
                    next.set(i + 1);
                    let (id, status) = expected[i];
                    match handle.get(id).await {
                        Ok(trade) if trade.status == status => {}
                        Ok(trade) => {
                            eprintln!("verify: trade {id} is {:?}, acknowledged {status:?}", trade.status);
                            mismatches.set(mismatches.get() + 1);
                        }
                        Err(error) => {
                            eprintln!("verify: trade {id}: {error}");
                            mismatches.set(mismatches.get() + 1);
                        }
                    }
                    if i % 1024 == 0 {
                        bar.set_position(i as u64);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    bar.finish_and_clear();
    (expected.len() as u64, mismatches.get())
}
