//! A buyer shard's trades whose claim in another shard is in doubt (`shard/src/doubts.rs`):
//! a trade written while its claim was not known durable is found again by the next open
//! until the shard learns its claim is durable, across a crash, across a checkpoint and past
//! `ClaimsKnown` records written for later trades; once known, it is not found again.

use tradeshard_shard::reply::{channel, Reply};
use tradeshard_shard::{
    order_key, ClaimState, NewTrade, OrderLookup, Receipt, Shard, TradeError, TradeId, UserRouting,
};
use tradeshard_tests::{call, campaign_shard_config, run, upkeep_on_request};
use tradeshard_wal::disk::SimDisk;

/// The buyer is shard 1; every order number below has its home in shard 0.
const ROUTING: UserRouting = UserRouting { logical_shards: 2, physical_shards: 2 };
const BUYER_LOGICAL: u32 = 1;

fn order(n: u64) -> NewTrade {
    let order_no = (0..)
        .map(|salt| format!("D-{n}-{salt}"))
        .find(|no| ROUTING.physical_of_order_key(order_key(5, no)) == 0)
        .expect("some salt");
    NewTrade {
        buyer_id: 40 + n,
        merchant_id: 5,
        merchant_order_no: order_no,
        amount: 10,
        currency: "CNY".into(),
        memo: String::new(),
    }
}

async fn open(disk: &SimDisk) -> Shard<SimDisk> {
    let shard = Shard::open_with(disk.clone(), campaign_shard_config(1), 0, upkeep_on_request(false, None))
        .await
        .expect("the buyer shard opens");
    shard.set_routing(ROUTING);
    shard
}

type ClaimDurable = Reply<Result<Option<TradeId>, TradeError>>;

/// Sends the create of order `n` with its claim pending: the claim's answer is the caller's to
/// give. Returns the trade's id once it is durable, the reply still to give, and the create's
/// answer to come.
async fn create_in_doubt(
    buyer: &Shard<SimDisk>,
    n: u64,
) -> (TradeId, ClaimDurable, tradeshard_shard::ReplyFuture<Result<Receipt, TradeError>>) {
    let trade = order(n).validate().unwrap();
    let key = order_key(trade.merchant_id, &trade.merchant_order_no);
    let (durable, pending) = channel();
    let (reply, answer) = channel();
    buyer.create_claimed(trade, BUYER_LOGICAL, ClaimState::Pending(pending), reply, Box::new(|_| {}));
    loop {
        if let OrderLookup::Trade(id) = call(|done| buyer.find_order(key, done)).await.unwrap() {
            return (id, durable, answer);
        }
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
}

async fn in_doubt(buyer: &Shard<SimDisk>) -> Vec<TradeId> {
    call(|done| buyer.take_trades_in_doubt(done)).await.unwrap()
}

#[test]
fn a_trade_stays_in_doubt_until_its_claim_is_known_across_crashes_checkpoints_and_later_marks() {
    run(async {
        let disk = SimDisk::new();
        let buyer = open(&disk).await;
        assert!(in_doubt(&buyer).await.is_empty(), "a new shard has nothing in doubt");
        // The first trade's claim never answers; the second's does, so its shard writes a
        // mark for what it knows: it must not cover the first.
        let (first, _never, first_answer) = create_in_doubt(&buyer, 1).await;
        let (second, known, second_answer) = create_in_doubt(&buyer, 2).await;
        known.send(Ok(None));
        assert_eq!(second_answer.await.unwrap().unwrap().id, second, "answered once both are durable");
        assert_eq!(buyer.trades_in_doubt(), 1);
        buyer.checkpoint().await.unwrap();
        let (third, known, third_answer) = create_in_doubt(&buyer, 3).await;
        known.send(Ok(None));
        third_answer.await.unwrap().unwrap();
        drop((buyer, first_answer));
        disk.crash(7);

        let buyer = open(&disk).await;
        let found = in_doubt(&buyer).await;
        assert!(found.contains(&first), "the trade whose claim never answered: {found:?}");
        // The open cannot tell which trades above the lowest doubt were known: the second (in
        // the checkpoint) and the third (replayed, its home elsewhere) are claimed again too.
        let mut sorted = found.clone();
        sorted.sort();
        assert_eq!(sorted, vec![first, second, third]);
        assert_eq!(buyer.trades_in_doubt(), found.len());
        assert!(in_doubt(&buyer).await.is_empty(), "taken once");
        // The engine claims them again and says so: nothing is in doubt after the next open.
        buyer.claims_known(&found);
        assert_eq!(buyer.trades_in_doubt(), 0);
        buyer.close().await.unwrap();
        let buyer = open(&disk).await;
        assert_eq!(in_doubt(&buyer).await, Vec::<TradeId>::new());
        buyer.close().await.unwrap();
    });
}

#[test]
fn a_failed_claim_fails_the_create_and_leaves_its_trade_in_doubt() {
    run(async {
        let disk = SimDisk::new();
        let buyer = open(&disk).await;
        let (id, failed, answer) = create_in_doubt(&buyer, 1).await;
        failed.send(Err(TradeError::Log(tradeshard_shard::LogError::Closed)));
        assert!(answer.await.unwrap().is_err(), "the claim's error is the create's");
        assert_eq!(buyer.trades_in_doubt(), 1);
        buyer.checkpoint().await.unwrap();
        buyer.close().await.unwrap();
        let buyer = open(&disk).await;
        assert_eq!(in_doubt(&buyer).await, vec![id], "in doubt until its claim is made again");
        buyer.close().await.unwrap();
    });
}
