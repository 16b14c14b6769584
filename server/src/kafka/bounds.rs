//! Counts in a producer's record batches checked against the bytes that carry them, before
//! the codec reads them.
//!
//! `kafka-protocol` reserves room for a batch's records and a record's headers from the
//! counts on the wire; the headers' room is a hash table that is written as it is made, so
//! an 80-byte record claiming two billion headers would make the decoder fill gigabytes.
//! This walk reads only the lengths and counts of format v2 (the batch's record count, each
//! record's length and header count) and refuses a count that more records or headers than
//! the remaining bytes could hold. It decodes nothing else; the codec does.

/// Bytes of a batch's header, and where its record count lies.
const BATCH_HEADER_BYTES: usize = 61;
const RECORD_COUNT_AT: usize = 57;
/// Fewest bytes a record takes (length, attributes, two deltas, key and value lengths,
/// header count), and a header (its key's and its value's lengths).
const RECORD_BYTES_MIN: usize = 7;
const HEADER_BYTES_MIN: usize = 2;

/// Whether every count in `bytes` (record batches of format v2) fits the bytes that follow it.
pub(crate) fn counts_fit(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + BATCH_HEADER_BYTES) else { return false };
        let length = i32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let Ok(length) = usize::try_from(length) else { return false };
        let end = at + 12 + length;
        if end > bytes.len() || end < at + BATCH_HEADER_BYTES {
            return false;
        }
        let count = i32::from_be_bytes(header[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].try_into().expect("4 bytes"));
        let Ok(count) = usize::try_from(count) else { return false };
        let mut record = at + BATCH_HEADER_BYTES;
        if count > (end - record) / RECORD_BYTES_MIN {
            return false;
        }
        for _ in 0..count {
            match record_fits(&bytes[..end], record) {
                Some(next) => record = next,
                None => return false,
            }
        }
        at = end;
    }
    true
}

/// The end of the record at `at` if its lengths and header count fit inside it.
fn record_fits(bytes: &[u8], mut at: usize) -> Option<usize> {
    let length = usize::try_from(varint32(bytes, &mut at)?).ok()?;
    let end = at.checked_add(length).filter(|end| *end <= bytes.len())?;
    let record = &bytes[..end];
    at += 1; // attributes
    varint64(record, &mut at)?; // timestamp delta
    varint32(record, &mut at)?; // offset delta
    for _ in 0..2 {
        // key, then value: a length (-1 for null) and its bytes
        let len = varint32(record, &mut at)?;
        if len > 0 {
            at = at.checked_add(len as usize).filter(|a| *a <= end)?;
        }
    }
    let headers = usize::try_from(varint32(record, &mut at)?).ok()?;
    (headers <= end.saturating_sub(at) / HEADER_BYTES_MIN).then_some(end)
}

/// A zigzag varint of a 32-bit field at `at`, moving past it, read as the codec reads it
/// (at most five bytes, the bits past 32 dropped); one whose fifth byte says more follows is
/// refused, since the codec would stop there and read the rest as other fields.
fn varint32(bytes: &[u8], at: &mut usize) -> Option<i32> {
    let mut value = 0u32;
    for i in 0..5 {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u32::from(byte & 0x7f).wrapping_shl(7 * i);
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i32 ^ -((value & 1) as i32));
        }
    }
    None
}

/// A zigzag varint of a 64-bit field (at most ten bytes), likewise.
fn varint64(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f).wrapping_shl(7 * i);
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};

    use super::super::records::record;
    use super::*;

    /// A record with a key and `headers` headers, then one with a value only.
    fn batch(headers: usize) -> Vec<u8> {
        let headers = (0..headers).map(|i| (i.to_string().into(), Some(Bytes::from_static(b"v")))).collect();
        let records = [
            record(0, 0, Bytes::from_static(b"k"), Bytes::new(), headers),
            record(1, 0, Bytes::new(), Bytes::from_static(b"value"), Default::default()),
        ];
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut out, records.iter(), &options).unwrap();
        out.to_vec()
    }

    #[test]
    fn what_the_encoder_makes_fits() {
        for headers in [0, 1, 16] {
            let bytes = batch(headers);
            assert!(counts_fit(&bytes), "{headers} headers");
            assert!(counts_fit(&[bytes.clone(), bytes].concat()), "two batches");
        }
    }

    #[test]
    fn a_count_beyond_its_bytes_does_not() {
        let mut bytes = batch(0);
        let fitting = bytes.clone();
        bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(!counts_fit(&bytes), "record count");
        // The first record's header count is its last byte: make it 2^31 - 1 in a varint,
        // which needs the record's length to grow by four bytes and the batch's too.
        let mut bytes = fitting.clone();
        let first = BATCH_HEADER_BYTES;
        let mut at = first;
        let length = varint32(&bytes, &mut at).unwrap() as usize;
        let header_count_at = at + length - 1;
        assert_eq!(bytes[header_count_at], 0, "no headers");
        bytes.splice(header_count_at..header_count_at + 1, [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        bytes[first] = ((length + 4) * 2) as u8; // zigzag length, one byte while short
        let batch_length = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) + 4;
        bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
        assert!(!counts_fit(&bytes), "header count");
        assert!(!counts_fit(&fitting[..fitting.len() - 1]), "a batch cut short");
        // An offset delta of six bytes: the codec reads five and would take the sixth for the
        // key's length, so the walk refuses it rather than read otherwise than the codec.
        let mut bytes = fitting.clone();
        let mut at = first;
        varint32(&bytes, &mut at).unwrap();
        let offset_delta_at = at + 1 + 1; // attributes, a one-byte timestamp delta
        bytes.splice(offset_delta_at..offset_delta_at + 1, [0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
        bytes[first] = ((length + 5) * 2) as u8;
        let batch_length = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) + 5;
        bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
        assert!(!counts_fit(&bytes), "a varint longer than the codec reads");
        assert!(counts_fit(&[]), "no batch at all");
    }
}
