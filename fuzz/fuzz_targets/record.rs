//! Any bytes through the log record decoder (trade records and system records): no panic, and
//! whatever decodes encodes to bytes that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_shard::LogRecord;

fuzz_target!(|bytes: &[u8]| {
    let Ok(record) = LogRecord::decode(bytes) else { return };
    let encoded = match &record {
        LogRecord::Trade(trade) => trade.encode(),
        LogRecord::Offset(commit) => commit.encode(),
        LogRecord::Claim(claim) => claim.encode(),
        LogRecord::ClaimSettled(settled) => settled.encode(),
        LogRecord::Journal(journal) => journal.encode(),
        LogRecord::Tcc(tcc) => tcc.encode(),
        LogRecord::Message(message) => message.encode(),
        LogRecord::ClaimsKnown(mark) => mark.encode(),
    };
    assert_eq!(LogRecord::decode(&encoded).expect("an encoded record decodes"), record);
});
