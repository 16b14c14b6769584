//! A claim's confirmation is made in memory, with no record (`shard/src/claims.rs`): on the
//! simulated disk, a claim confirmed and then lost to power loss before a checkpoint is
//! pending again after the reopen (and the buyer's shard still names its trade, from which
//! the engine's open confirms it again); one confirmed before a checkpoint stays confirmed,
//! from the checkpoint's runs; a confirmation writes nothing to the log.

use tradeshard_shard::{order_key, ClaimOutcome, ClaimRequest, OrderLookup, Shard, TradeError, TradeId};
use tradeshard_tests::{call, claim_durably, new_trade, rolling_shard_config, run, upkeep_on_request};
use tradeshard_wal::disk::SimDisk;

async fn open(disk: &SimDisk) -> Result<Shard<SimDisk>, TradeError> {
    Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_on_request(false, None)).await
}

/// Claims the order number of `new_trade(buyer, n, 100)` in `home`; its order key.
async fn claim(home: &Shard<SimDisk>, buyer: u64, n: u64) -> u128 {
    let trade = new_trade(buyer, n, 100).validate().unwrap();
    let key = order_key(trade.merchant_id, &trade.merchant_order_no);
    let found = claim_durably(home, ClaimRequest::of(&trade, 1)).await.unwrap();
    assert_eq!(found, None, "a new claim");
    key
}

async fn lookup(home: &Shard<SimDisk>, key: u128) -> OrderLookup {
    call(|done| home.find_order(key, done)).await.unwrap()
}

#[test]
fn a_confirmation_is_kept_by_the_next_checkpoint_and_lost_to_a_crash_before_it() {
    run(async {
        let disk = SimDisk::new();
        let home = open(&disk).await.unwrap();
        let (kept, lost) = (claim(&home, 7, 1).await, claim(&home, 7, 2).await);
        assert_eq!(home.pending_claims().len(), 2);
        assert_eq!(
            lookup(&home, kept).await,
            OrderLookup::ClaimPending { buyer_id: 7 },
            "pending: its buyer names the shard to ask"
        );

        // Confirmed in memory, at once, and writing nothing.
        assert!(home.confirm_claim(kept, TradeId(11)));
        assert!(!home.confirm_claim(kept, TradeId(11)), "a repeat finds nothing pending");
        assert_eq!(lookup(&home, kept).await, OrderLookup::Claimed(TradeId(11)));
        home.checkpoint().await.unwrap();
        let log_end_after_checkpoint = home.offset_range().1;
        call(|done| home.settle_claim(lost, ClaimOutcome::Confirmed(TradeId(12)), done)).await.unwrap();
        assert_eq!(home.offset_range().1, log_end_after_checkpoint, "a confirmation writes no record");
        assert!(home.pending_claims().is_empty());

        drop(home);
        disk.crash(3);
        let home = open(&disk).await.unwrap();
        assert_eq!(
            lookup(&home, kept).await,
            OrderLookup::Claimed(TradeId(11)),
            "confirmed before the checkpoint: kept"
        );
        let pending: Vec<u128> = home.pending_claims().into_iter().map(|claim| claim.key).collect();
        assert_eq!(pending, vec![lost], "confirmed after the checkpoint: pending again");
        // The open's resolution confirms it again; a release of a confirmed claim contradicts it.
        call(|done| home.settle_claim(lost, ClaimOutcome::Confirmed(TradeId(12)), done)).await.unwrap();
        assert!(home.pending_claims().is_empty());
        let release = call(|done| home.settle_claim(lost, ClaimOutcome::Released, done)).await;
        assert!(release.is_err(), "released after its confirmation: {release:?}");
        home.close().await.unwrap();
    });
}
