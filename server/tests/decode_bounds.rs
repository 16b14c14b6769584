//! The request decoder against hostile frames: counts on the wire far beyond the frame.

use bytes::{BufMut, Bytes, BytesMut};
use tradeshard_server::{decode_request, ReserveNothingForLarge};

#[global_allocator]
static ALLOCATOR: ReserveNothingForLarge = ReserveNothingForLarge(std::alloc::System);

fn frame(api_key: i16, version: i16, body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(api_key);
    out.put_i16(version);
    out.put_i32(7); // correlation id
    out.put_i16(-1); // client id: null
    out.put_slice(body);
    out.freeze()
}

#[test]
fn a_huge_array_count_is_refused_not_allocated() {
    // Metadata v1: the topics array's count, i32::MAX, then nothing.
    assert!(decode_request(frame(3, 1, &i32::MAX.to_be_bytes())).is_err());
    // Fetch v4: replica, max wait, min bytes, max bytes, isolation, then a topics count.
    let mut body = BytesMut::new();
    body.put_i32(-1);
    body.put_i32(500);
    body.put_i32(1);
    body.put_i32(1 << 20);
    body.put_i8(0);
    body.put_i32(i32::MAX);
    assert!(decode_request(frame(1, 4, &body)).is_err());
}

#[test]
fn a_huge_compact_count_is_refused_not_allocated() {
    // Metadata v9 (flexible): a compact topics array of u32::MAX - 1 elements, then nothing.
    let mut out = BytesMut::new();
    out.put_i16(3);
    out.put_i16(9);
    out.put_i32(7);
    out.put_i16(-1); // client id (a nullable string even in flexible headers)
    out.put_u8(0); // header tagged fields
    out.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // varint u32::MAX
    assert!(decode_request(out.freeze()).is_err());
}

#[test]
fn unknown_keys_and_versions_are_told_apart() {
    use tradeshard_server::RequestError;
    assert_eq!(decode_request(frame(999, 0, &[])).unwrap_err(), RequestError::UnknownApiKey(999));
    assert!(matches!(
        decode_request(frame(18, 99, &[])).unwrap_err(),
        RequestError::UnsupportedVersion { api_key: 18, version: 99, correlation_id: 7 }
    ));
    assert!(matches!(decode_request(Bytes::from_static(&[0, 3])).unwrap_err(), RequestError::Short(2)));
}

#[test]
fn the_fuzz_seeds_are_requests_the_server_answers() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/kafka_request");
    let mut count = 0;
    for entry in std::fs::read_dir(&seeds).unwrap() {
        let path = entry.unwrap().path();
        let bytes = Bytes::from(std::fs::read(&path).unwrap());
        // Each seed is a request frame, or the record batches of a Produce request.
        let decoded = match path.file_name().unwrap().to_str().unwrap().starts_with("record_batch") {
            true => tradeshard_server::fuzzing::produce_records(bytes).map(|_| ()),
            false => decode_request(bytes).map(|_| ()).map_err(|e| e.to_string()),
        };
        assert!(decoded.is_ok(), "{} does not decode: {decoded:?}", path.display());
        count += 1;
    }
    assert!(count >= 6, "{count} seeds");
}
