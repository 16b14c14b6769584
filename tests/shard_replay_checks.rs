//! An open's replay checks each record against the ones before it: a log holding two trades
//! with one merchant order number, or two claims of one, cannot come from this engine's write
//! path, and the open refuses it by name (`BadRecord`, with the record's number) rather than
//! opening an index that maps the number to one of them. Written straight to the log on the
//! simulated disk, as a damaged or foreign log would hold them.

use tradeshard_shard::{
    order_key, ClaimOutcome, ClaimSettled, CreatedFields, Currency, Funding, OrderClaim, RecordKind, Shard, TradeError,
    TradeId, TradeRecord,
};
use tradeshard_tests::{rolling_shard_config, run, upkeep_on_request};
use tradeshard_wal::disk::SimDisk;
use tradeshard_wal::Wal;

const MERCHANT: u64 = 9;

fn created(counter: u64, order_no: &str) -> Vec<u8> {
    TradeRecord {
        kind: RecordKind::Created,
        trade_id: TradeId::new(0, counter),
        user_id: 7,
        merchant_id: MERCHANT,
        at_ms: 1_700_000_000_000,
        amount: 100,
        currency: Currency::parse("CNY").unwrap(),
        created: Some(CreatedFields { merchant_order_no: order_no.into(), memo: String::new() }),
        refund_no: None,
        funding: Funding::External,
    }
    .encode()
}

fn claim(order_no: &str) -> Vec<u8> {
    let key = order_key(MERCHANT, order_no);
    OrderClaim { key, body: 1, buyer_id: 7, merchant_id: MERCHANT, at_ms: 1 }.encode()
}

/// Writes `records` to a new shard's log and opens the shard over it.
async fn open_over(records: &[Vec<u8>]) -> Result<Shard<SimDisk>, TradeError> {
    let disk = SimDisk::new();
    let (wal, _) = Wal::open(disk.clone(), rolling_shard_config(), |_, _| {}).await.unwrap();
    for record in records {
        wal.append(record).await.unwrap();
    }
    wal.close().await.unwrap();
    Shard::open_with(disk, rolling_shard_config(), 0, upkeep_on_request(false, None)).await
}

fn refusal(opened: Result<Shard<SimDisk>, TradeError>) -> (u64, &'static str) {
    match opened {
        Err(TradeError::BadRecord { seq, reason }) => (seq, reason),
        Err(other) => panic!("refused for another reason: {other:?}"),
        Ok(_) => panic!("opened over a log no write path makes"),
    }
}

#[test]
fn a_log_with_two_trades_of_one_order_number_is_refused_at_the_second() {
    run(async {
        let opened = open_over(&[created(1, "A-1"), created(2, "A-2"), created(3, "A-1")]).await;
        assert_eq!(refusal(opened), (2, "order number used by two trades"));
    });
}

#[test]
fn a_log_with_a_trade_and_a_claim_of_one_order_number_is_refused() {
    run(async {
        let opened = open_over(&[claim("B-1"), created(1, "B-1")]).await;
        assert_eq!(refusal(opened), (1, "order number used by two trades"));
        let opened = open_over(&[created(1, "B-2"), claim("B-2")]).await;
        assert_eq!(refusal(opened), (1, "order number claimed twice"));
    });
}

#[test]
fn a_log_with_two_claims_of_one_order_number_is_refused_at_the_second() {
    run(async {
        let opened = open_over(&[claim("C-1"), claim("C-2"), claim("C-1")]).await;
        assert_eq!(refusal(opened), (2, "order number claimed twice"));
    });
}

fn released(order_no: &str) -> Vec<u8> {
    ClaimSettled { key: order_key(MERCHANT, order_no), outcome: ClaimOutcome::Released, at_ms: 2 }.encode()
}

#[test]
fn an_order_number_released_by_its_claim_can_be_a_trade_of_this_shard() {
    run(async {
        let shard = open_over(&[claim("E-1"), released("E-1"), created(1, "E-1")]).await.unwrap();
        assert_eq!(shard.stats().trades, 1);
        shard.close().await.unwrap();
        let opened = open_over(&[claim("E-2"), created(1, "E-2"), released("E-2")]).await;
        assert_eq!(refusal(opened), (1, "order number used by two trades"), "the claim still held it");
    });
}

#[test]
fn of_several_bad_records_the_first_in_the_log_is_reported() {
    run(async {
        // The maps' changes are applied part by part, whichever part each key lies in: either
        // order of the two faults reports the earlier.
        let (first, second) = ("F-1", "F-2");
        let opened = open_over(&[created(1, first), created(2, second), created(3, first), created(4, second)]).await;
        assert_eq!(refusal(opened), (2, "order number used by two trades"));
        let opened = open_over(&[created(1, first), created(2, second), created(3, second), created(4, first)]).await;
        assert_eq!(refusal(opened), (2, "order number used by two trades"));
        // A record refused on its own (its trade id taken) after one refused by its key.
        let opened = open_over(&[created(1, "G-1"), created(2, "G-1"), created(1, "G-2")]).await;
        assert_eq!(refusal(opened), (1, "order number used by two trades"));
    });
}

#[test]
fn a_log_of_distinct_order_numbers_opens_with_every_trade() {
    run(async {
        let shard = open_over(&[created(1, "D-1"), claim("D-2"), created(2, "D-3")]).await.unwrap();
        assert_eq!(shard.stats().trades, 2);
        shard.close().await.unwrap();
    });
}
