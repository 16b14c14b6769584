//! The integration tests and campaigns, one module per file (`TESTING.md` says what each
//! covers), built as one test binary: `cargo test -p tradeshard-tests --test suite <module>::`
//! runs one file's tests. `engine_lifecycle` counts the process's descriptors and is a binary of
//! its own.

mod engine_accounts;
mod engine_activities;
mod engine_api;
mod engine_cache;
mod engine_cold_trades;
mod engine_consumer;
mod engine_crash;
mod engine_full_disk;
mod engine_messages;
mod engine_model;
mod engine_money_model;
mod engine_open_errors;
mod engine_retention;
mod engine_retries;
mod engine_settlement;
mod engine_trade_payments;
mod engine_transfer_batch;
mod engine_transfers;
mod fuzz_seeds;
mod messages_crash;
mod order_claims_crash;
mod shard_accounts_crash;
mod shard_checkpoints;
mod shard_claim_confirmation;
mod shard_claim_doubts;
mod shard_cold_trades;
mod shard_crash;
mod shard_events;
mod shard_faults;
mod shard_key_runs;
mod shard_key_window;
mod shard_message_order;
mod shard_refund_runs;
mod shard_replay_checks;
mod shard_request_runs;
mod shard_tcc;
mod shard_tcc_runs;
mod shard_trade_cache;
mod tcc_batch;
mod tcc_crash;
mod trade_payments_crash;
mod wal_corruption;
mod wal_crash;
mod wal_faults;
mod wal_recycle;
mod wal_roundtrip;
