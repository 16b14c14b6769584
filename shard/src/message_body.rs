//! A message as its producer gives it (topic, key, headers, payload), its bounds, and its
//! bytes: written the same way in message records (`message.rs`) and in checkpoint entries
//! (`checkpoint/messages.rs`), read by one decoder that checks every bound and never panics.

use crate::bytes::Reader;
use crate::error::InputError;

/// The built-in topic of trade events.
pub const TRADES_TOPIC: &str = "trades";
/// Longest topic name, in bytes (printable ASCII).
pub const TOPIC_BYTES_MAX: usize = 64;
/// Longest message key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest payload, in bytes (a record must fit one frame of the log, 64 KiB).
pub const PAYLOAD_BYTES_MAX: usize = 32 << 10;
/// Most headers a message carries.
pub const HEADERS_MAX: usize = 16;
/// Most bytes of header names and values together.
pub const HEADER_BYTES_MAX: usize = 4096;

/// A message as its producer gave it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageBody {
    pub topic: String,
    pub key: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl MessageBody {
    /// Checks every bound: a topic of 1..=64 printable ASCII bytes other than `trades`, a key
    /// of at most 1 KiB, at most 16 headers of non-empty names and 4 KiB, a payload of at most
    /// 32 KiB.
    pub fn validate(&self) -> Result<(), InputError> {
        validate_topic(&self.topic)?;
        if self.topic == TRADES_TOPIC {
            return Err(InputError::ReservedTopic);
        }
        if self.key.len() > KEY_BYTES_MAX {
            return Err(InputError::KeyTooLong { len: self.key.len(), max: KEY_BYTES_MAX });
        }
        let header_bytes: usize = self.headers.iter().map(|(name, value)| name.len() + value.len()).sum();
        let bad_name = self.headers.iter().any(|(name, _)| name.is_empty() || name.len() > u8::MAX as usize);
        if self.headers.len() > HEADERS_MAX || header_bytes > HEADER_BYTES_MAX || bad_name {
            return Err(InputError::BadHeaders { count: self.headers.len(), bytes: header_bytes });
        }
        if self.payload.len() > PAYLOAD_BYTES_MAX {
            return Err(InputError::PayloadTooLarge { len: self.payload.len(), max: PAYLOAD_BYTES_MAX });
        }
        Ok(())
    }

    /// Bytes this body takes in memory while a shard holds it (half, scheduled, dead).
    pub(crate) fn held_bytes(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(name, value)| name.len() + value.len() + 48).sum();
        self.topic.len() + self.key.len() + self.payload.len() + headers + 96
    }
}

/// Checks a topic name: 1..=64 printable ASCII bytes.
pub fn validate_topic(topic: &str) -> Result<(), InputError> {
    if topic.is_empty() || topic.len() > TOPIC_BYTES_MAX || !topic.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InputError::BadTopic { len: topic.len() });
    }
    Ok(())
}

/// Appends a message's bytes: its topic, key, headers and payload, each with its length.
pub(crate) fn push_body(out: &mut Vec<u8>, body: &MessageBody) {
    out.push(body.topic.len() as u8);
    out.extend_from_slice(body.topic.as_bytes());
    out.extend_from_slice(&(body.key.len() as u16).to_le_bytes());
    out.extend_from_slice(&body.key);
    out.push(body.headers.len() as u8);
    for (name, value) in &body.headers {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&(body.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&body.payload);
}

/// A message's bytes read in place, every bound checked.
pub(crate) struct BodyView<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    /// The headers' bytes and how many they are.
    pub headers: &'a [u8],
    pub header_count: u8,
    pub payload: &'a [u8],
}

/// Reads what [`push_body`] wrote; never panics.
pub(crate) fn read_body<'a>(reader: &mut Reader<'a>) -> Result<BodyView<'a>, &'static str> {
    let topic_len = reader.u8()? as usize;
    let topic = std::str::from_utf8(reader.take(topic_len)?).map_err(|_| "message topic is not UTF-8")?;
    validate_topic(topic).map_err(|_| "message topic out of bounds")?;
    if topic == TRADES_TOPIC {
        return Err("a message of the topic of trade events");
    }
    let key_len = reader.u16()? as usize;
    if key_len > KEY_BYTES_MAX {
        return Err("message key too long");
    }
    let key = reader.take(key_len)?;
    let header_count = reader.u8()?;
    let headers_start = reader.at;
    let mut header_bytes = 0;
    for _ in 0..header_count {
        let name_len = reader.u8()? as usize;
        let name = reader.take(name_len)?;
        if name.is_empty() || std::str::from_utf8(name).is_err() {
            return Err("message header name empty or not UTF-8");
        }
        let value_len = reader.u16()? as usize;
        reader.take(value_len)?;
        header_bytes += name_len + value_len;
    }
    if header_count as usize > HEADERS_MAX || header_bytes > HEADER_BYTES_MAX {
        return Err("message headers out of bounds");
    }
    let headers = reader.slice(headers_start);
    let payload_len = reader.u32()? as usize;
    if payload_len > PAYLOAD_BYTES_MAX {
        return Err("message payload too large");
    }
    let payload = reader.take(payload_len)?;
    Ok(BodyView { topic, key, headers, header_count, payload })
}

impl BodyView<'_> {
    pub(crate) fn to_body(&self) -> MessageBody {
        MessageBody {
            topic: self.topic.to_string(),
            key: self.key.to_vec(),
            headers: headers_of(self.headers, self.header_count)
                .map(|(name, value)| (name.to_string(), value.to_vec()))
                .collect(),
            payload: self.payload.to_vec(),
        }
    }
}

/// The headers of checked header bytes, in order.
pub(crate) fn headers_of(bytes: &[u8], count: u8) -> impl Iterator<Item = (&str, &[u8])> {
    let mut reader = Reader::new(bytes, 0, "checked");
    (0..count).map(move |_| {
        let name_len = reader.u8().expect("checked") as usize;
        let name = std::str::from_utf8(reader.take(name_len).expect("checked")).expect("checked");
        let value_len = reader.u16().expect("checked") as usize;
        (name, reader.take(value_len).expect("checked"))
    })
}
