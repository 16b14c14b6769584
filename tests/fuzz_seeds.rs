//! The seed corpus of the fuzz targets, `fuzz/seeds/<target>/`: real encodings made by this
//! build's encoders (frames, segment headers, records, a manifest, a segment file, a record
//! stream, a checkpoint, a record of the table of trades, a run of order keys), from which the
//! fuzzers start instead of from nothing.
//!
//! This test checks that the committed seeds are what the encoders make today, so that a
//! format change cannot leave the fuzzers starting from bytes of an old format. Refresh them
//! with `TRADESHARD_WRITE_FUZZ_SEEDS=1 cargo test -p tradeshard-tests --test suite fuzz_seeds::`.

use std::path::PathBuf;

use tradeshard_engine::{Manifest, FORMAT_VERSION};
use tradeshard_shard::{
    AccountOp, BranchAction, BranchPlan, ClaimOutcome, ClaimSettled, ClaimsKnown, Currency, Decision, Funding,
    JournalRecord, MessageBody, MessageOp, MessageRecord, OffsetCommit, OrderClaim, RecordKind, Step, TccRecord,
    TradeId, TradeRecord,
};
use tradeshard_tests::{new_trade, run};
use tradeshard_wal::disk::SimDisk;
use tradeshard_wal::testing::{file_name, push_record, seal_frame, SealParams, SegmentHeader, FRAME_HEADER_BYTES};
use tradeshard_wal::{Compression, Preallocation, Wal, WalConfig};

type Seed = (&'static str, String, Vec<u8>);

/// A trade's records: created, paid, partly refunded twice.
fn trade_records() -> Vec<Vec<u8>> {
    let id = TradeId::new(3, 41);
    let trade = new_trade(7, 1, 5000).validate().unwrap();
    let created = TradeRecord::created(id, &trade, 1_700_000_000_000);
    let id2 = TradeId::new(3, 42);
    let change = |kind: RecordKind, amount: u64, at: u64| TradeRecord {
        kind,
        amount,
        at_ms: at,
        created: None,
        refund_no: (kind == RecordKind::Refunded).then(|| format!("R-{at}")),
        ..created.clone()
    };
    vec![
        created.encode(),
        change(RecordKind::Paid, 5000, 1_700_000_000_100).encode(),
        change(RecordKind::Refunded, 1000, 1_700_000_000_200).encode(),
        change(RecordKind::Refunded, 4000, 1_700_000_000_300).encode(),
        OffsetCommit { group: "settlement".into(), offset: 2, at_ms: 1_700_000_000_400 }.encode(),
        JournalRecord {
            op: AccountOp::Transfer { to_user: 8 },
            user_id: 7,
            currency: Currency::parse("CNY").unwrap(),
            amount: 250,
            at_ms: 1_700_000_000_500,
            request_no: "T-1".into(),
        }
        .encode(),
        tcc_record().encode(),
        message_record(MessageOp::Publish).encode(),
        message_record(MessageOp::Nack).encode(),
        // A second trade, paid from the buyer's balance and settled to a merchant of shard 1.
        TradeRecord { trade_id: id2, ..created.clone() }.encode(),
        TradeRecord { trade_id: id2, funding: Funding::Balance, ..change(RecordKind::Paid, 5000, 1_700_000_000_700) }
            .encode(),
        TradeRecord {
            trade_id: id2,
            funding: Funding::Settles { merchant_shard: 1, credit: 5000 },
            ..change(RecordKind::Settled, 5000, 1_700_000_000_800)
        }
        .encode(),
        // An order number claimed for a buyer of another shard, the claim's confirmation, and
        // a buyer shard's note of the claims it knows durable.
        OrderClaim { key: 1 << 90, body: 3, buyer_id: 8, merchant_id: 9, at_ms: 1_700_000_000_900 }.encode(),
        ClaimSettled { key: 1 << 90, outcome: ClaimOutcome::Confirmed(TradeId::new(2, 5)), at_ms: 1_700_000_001_000 }
            .encode(),
        ClaimsKnown { below_counter: 43, at_ms: 1_700_000_001_100 }.encode(),
    ]
}

/// A message published by an idempotent producer, or a group's nack of it.
fn message_record(op: MessageOp) -> MessageRecord {
    let mut record = MessageRecord::new(op, 1_700_000_000_600);
    record.body = Some(MessageBody {
        topic: "orders".into(),
        key: b"user-7".to_vec(),
        headers: vec![("trace".into(), b"t-1".to_vec())],
        payload: b"{\"paid\":250}".to_vec(),
    });
    match op {
        MessageOp::Nack => {
            (record.reference, record.group, record.attempt) = (Some(9), "billing".into(), 1);
            record.due_ms = Some(1_700_000_010_600);
        }
        _ => record.producer = Some((0xfeed, 1)),
    }
    record
}

/// A transfer's first local transaction: its begin with the payer's Try, then a decision.
fn tcc_record() -> TccRecord {
    let currency = Currency::parse("CNY").unwrap();
    let freeze = BranchAction::Freeze { user_id: 7, currency, amount: 250 };
    let credit = BranchAction::Credit { user_id: 8, currency, amount: 250 };
    let external = BranchAction::External { participant: 3, reference: 99 };
    let branches = vec![
        BranchPlan { shard: 0, branch: 0, action: freeze },
        BranchPlan { shard: 1, branch: 1, action: credit },
        BranchPlan { shard: u32::MAX, branch: 2, action: external },
    ];
    let activity = 1 << 100;
    TccRecord {
        at_ms: 1_700_000_000_600,
        steps: vec![
            Step::Begin { activity, deadline_ms: 1_700_000_010_600, branches },
            Step::Try { activity, branch: 0, action: freeze },
            Step::Decide { activity, decision: Decision::Commit },
            Step::Confirm { activity, branch: 0 },
            Step::Cancel { activity, branch: 1, action: credit },
            Step::Complete { activity },
        ],
    }
}

fn frame(records: &[Vec<u8>], compression: Compression) -> Vec<u8> {
    let mut raw = Vec::new();
    for record in records {
        push_record(&mut raw, record);
    }
    let (mut stored, mut pieces) = (Vec::new(), Vec::new());
    let params = SealParams { first_seq: 10, synced_seq: 9, prev_checksum: 0x1234, compression, piece_raw_bytes: 4096 };
    let header = seal_frame(&raw, records.len() as u32, params, &mut stored, &mut pieces);
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(&stored);
    bytes
}

/// The first segment of a log holding `records`, without its unused zeros.
fn segment_file(records: &[Vec<u8>]) -> Vec<u8> {
    let config = WalConfig {
        segment_bytes: 1 << 20,
        frame_payload_bytes_max: 64 << 10,
        record_bytes_max: 16 << 10,
        preallocation: Preallocation::Reserved,
        ..WalConfig::default()
    };
    let disk = SimDisk::new();
    run(async {
        let (wal, _) = Wal::open(disk.clone(), config, |_, _| {}).await.unwrap();
        for record in records {
            wal.append(record).await.unwrap();
        }
        wal.close().await.unwrap();
    });
    let mut bytes = disk.read_file(&file_name(0)).unwrap();
    let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
    bytes.truncate(used.div_ceil(4096) * 4096);
    // The header as made at a fixed time, so that the seed does not change with the clock.
    let mut header = SegmentHeader::decode(&bytes[..64]).unwrap();
    header.created_ms = 1;
    bytes[..64].copy_from_slice(&header.encode());
    bytes
}

fn seeds() -> Vec<Seed> {
    let records = trade_records();
    let mut seeds: Vec<Seed> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        seeds.push(("record", format!("record-{i}"), record.clone()));
    }
    seeds.push(("frame_decode", "frame-plain".into(), frame(&records, Compression::None)));
    seeds.push(("frame_decode", "frame-lz4".into(), frame(&[vec![b'x'; 600], vec![b'y'; 300]], Compression::Lz4)));
    // A frame's first piece starts right after the frame's header.
    let pieces = [
        ("piece-plain", frame(&records, Compression::None)),
        ("piece-lz4", frame(&[vec![b'x'; 600]], Compression::Lz4)),
    ];
    for (name, bytes) in pieces {
        seeds.push(("piece_decode", name.into(), bytes[FRAME_HEADER_BYTES..].to_vec()));
    }
    for (name, header) in [
        ("first", SegmentHeader { shard_id: 0, base_seq: 0, chain_seed: 0, created_ms: 0 }),
        ("later", SegmentHeader { shard_id: 7, base_seq: 1 << 20, chain_seed: 0xDEAD_BEEF, created_ms: 1 }),
    ] {
        seeds.push(("segment_header", format!("header-{name}"), header.encode().to_vec()));
    }
    let manifest = Manifest { format_version: FORMAT_VERSION, logical_shards: 1024, physical_shards: 4, created_ms: 1 };
    seeds.push(("manifest", "manifest".into(), manifest.encode().into_bytes()));
    let mut image = vec![0u8];
    image.extend(segment_file(&records));
    seeds.push(("recovery", "one-segment".into(), image));
    let mut stream = Vec::new();
    for record in &records {
        stream.extend_from_slice(&(record.len() as u16).to_le_bytes());
        stream.extend_from_slice(record);
    }
    seeds.push(("shard_recovery", "one-trade".into(), stream));
    seeds.push(("checkpoint", "every-kind".into(), tradeshard_shard::sample_checkpoint()));
    seeds.push(("trade_record", "refunded".into(), tradeshard_shard::sample_trade_record()));
    seeds.push(("trade_record", "inline-part".into(), tradeshard_shard::inline_sample_trade_record()));
    seeds.push(("frozen_block", "one-block".into(), tradeshard_shard::sample_frozen_block()));
    seeds.push(("run_file", "three-entries".into(), tradeshard_shard::sample_run_file(1, 24)));
    seeds.push(("run_file", "three-wide-entries".into(), tradeshard_shard::sample_run_file(1, 56)));
    seeds
}

#[test]
fn the_committed_fuzz_seeds_are_what_the_encoders_make() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let write = std::env::var_os("TRADESHARD_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = root.join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; refresh the seeds", path.display()));
        assert!(committed == bytes, "{} differs from what the encoders make; refresh the seeds", path.display());
    }
}
