//! Any bytes as a Kafka request frame (without its length prefix), as `tradeshard serve`
//! reads them off a connection, and as the record batches of a Produce request: the decoders
//! answer a request (messages) or an error, never a panic nor an allocation that ends the
//! process (the server's allocator is the one installed here).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_server::{decode_request, ReserveNothingForLarge};

#[global_allocator]
static ALLOCATOR: ReserveNothingForLarge = ReserveNothingForLarge(std::alloc::System);

fuzz_target!(|bytes: &[u8]| {
    let _ = decode_request(bytes::Bytes::copy_from_slice(bytes));
    let _ = tradeshard_server::fuzzing::produce_records(bytes::Bytes::copy_from_slice(bytes));
});
