//! Power loss under a shard: trades created, paid and settled on the simulated disk, a crash
//! at a random operation (unsynced writes lost, kept or torn), reopen, and a check that every
//! acknowledged change is there exactly once, nothing is in a state it was never sent to, and
//! trade ids are never issued twice. A failure names its seed (`TRADESHARD_SIM_SEED=<seed>`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tradeshard_shard::{Command, Move, Shard, TradeId, TradeStatus};
use tradeshard_tests::{call, new_trade, run_campaign, sim_disk_for_seed};
use tradeshard_wal::disk::SplitMix64;
use tradeshard_wal::{Preallocation, WalConfig};

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 256 << 10,
        frame_payload_bytes_max: 16 << 10,
        record_bytes_max: 4 << 10,
        preallocation: Preallocation::Zeroed,
        ..WalConfig::default()
    }
}

/// The acknowledged state of each trade, and every state each trade was ever sent to.
#[derive(Default)]
struct Model {
    acked: HashMap<TradeId, TradeStatus>,
    sent: HashMap<TradeId, Vec<TradeStatus>>,
}

async fn run_seed(seed: u64) -> Result<usize, String> {
    let mut rng = SplitMix64::new(seed);
    let disk = sim_disk_for_seed(seed);
    let model = Rc::new(RefCell::new(Model::default()));
    let mut order = 0u64;
    let mut checked = 0;
    for incarnation in 0..3 {
        let shard = Rc::new(Shard::open(disk.clone(), config(), 1 << 16).await.map_err(|e| format!("open: {e}"))?);
        // Every acknowledged change is there; nothing is in a state it was never sent to.
        let ids: Vec<(TradeId, TradeStatus)> = model.borrow().acked.iter().map(|(id, s)| (*id, *s)).collect();
        for (id, acked) in ids {
            let trade = call(|done| shard.get(id, done)).await.map_err(|e| format!("acknowledged {id} lost: {e}"))?;
            // It may be in its acknowledged state or one sent after it, never one before it.
            let sent = model.borrow().sent[&id].clone();
            let from = sent.iter().rposition(|s| *s == acked).unwrap_or(0);
            if !sent[from..].contains(&trade.status) {
                return Err(format!("{id} is {:?}: acknowledged {acked:?}, sent {sent:?}", trade.status));
            }
            model.borrow_mut().acked.insert(id, trade.status);
            checked += 1;
        }
        disk.crash_at_op(disk.ops() + 1 + rng.below(150));
        let mut tasks = Vec::new();
        for _ in 0..1 + rng.below(6) {
            let (shard, model) = (shard.clone(), model.clone());
            let (buyer, first_order, steps) = (1 + rng.below(50), order, 1 + rng.below(12));
            order += 100;
            tasks.push(glommio::spawn_local(async move {
                for step in 0..steps {
                    let trade = new_trade(buyer, first_order + step, 100).validate().unwrap();
                    let command = Command::Create { trade, logical_shard: (buyer % 16) as u32 };
                    let Ok(receipt) = call(|done| shard.submit(command, done)).await else { return };
                    {
                        let mut model = model.borrow_mut();
                        if model.acked.insert(receipt.id, receipt.status).is_some() {
                            panic!("trade id {} issued twice", receipt.id);
                        }
                        model.sent.insert(receipt.id, vec![TradeStatus::Created]);
                    }
                    for (to, status) in [(Move::Pay, TradeStatus::Paid), (Move::Settle, TradeStatus::Settled)] {
                        model.borrow_mut().sent.get_mut(&receipt.id).unwrap().push(status);
                        let command = Command::Move { id: receipt.id, to };
                        match call(|done| shard.submit(command, done)).await {
                            Ok(changed) => {
                                model.borrow_mut().acked.insert(receipt.id, changed.status);
                            }
                            Err(_) => return,
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        drop(shard);
        disk.crash(rng.next_u64());
        let _ = incarnation;
    }
    Ok(checked)
}

#[test]
fn acknowledged_trade_changes_survive_power_loss_exactly_once() {
    let (count, checked) = run_campaign(300, run_seed);
    println!("shard crash campaign: {count} seeds, {checked} acknowledged trades checked after crashes");
    assert!(count < 100 || checked > 1000, "the campaign must check trades: {checked}");
}
