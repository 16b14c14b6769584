//! The checkpoint file's codec: pages, the header, entries, and the restorer that rebuilds an
//! index from them (the layout is in the module above and in `docs/FORMAT.md`).

use crate::accounts::AccountItem;
use crate::bytes::Reader;
use crate::currency::Currency;
use crate::index::{
    ClaimEntry, CreatedAt, GroupOffset, Item, RefundEntry, RunStore, Scalars, ShardIndex, StoredPart, TradeEntry,
};
use crate::lifecycle::Lifecycle;
use crate::system_record::OffsetCommit;
use crate::tcc_book::TccItem;
use crate::trade::{TradeId, LOGICAL_SHARDS_MAX};
use tradeshard_wal::{FramePos, BLOCK_BYTES};

/// The block pages start on.
pub(crate) const PAGE_ALIGN: usize = 4096;
/// Bytes of a page's header.
pub(crate) const PAGE_HEADER_BYTES: usize = 16;
/// A page's payload is cut at about this many bytes (an entry is never split).
pub(crate) const PAGE_PAYLOAD_TARGET: usize = 256 << 10;
/// No page's payload is longer (the target plus the longest entry).
pub(crate) const PAGE_PAYLOAD_MAX: usize = PAGE_PAYLOAD_TARGET + (64 << 10);
/// "TSCK", little-endian.
const PAGE_MAGIC: u32 = u32::from_le_bytes(*b"TSCK");
/// The checkpoint format this build writes and reads.
/// (2: the header records the table of trades' highest counter; the trades are in the table.
/// 3: the order keys and confirmed claims are in runs on disk, which the checkpoint lists.
/// 4: accounts and account request numbers. 7: the counter below which every trade's claim
/// is known durable. 8: the log frame an open starts reading from. 9: the table's blocks
/// frozen; 7 and 8 are still read.)
pub(crate) const CHECKPOINT_VERSION: u16 = 9;
/// The version before: its header counts no frozen blocks.
const CHECKPOINT_VERSION_NO_FROZEN: u16 = 8;
/// The version before that: its header has no log frame either.
const CHECKPOINT_VERSION_NO_FRAME: u16 = 7;
/// The name a checkpoint is written under before it is complete.
pub(crate) const TEMP_NAME: &str = "checkpoint.tmp";
/// Longest run of a user's trades in one entry.
const USER_IDS_PER_ITEM: usize = 4096;

const HEADER_PAYLOAD_BYTES: usize = 96;
const HEADER_PAYLOAD_BYTES_NO_FROZEN: usize = 88;
const HEADER_PAYLOAD_BYTES_NO_FRAME: usize = 64;
const KIND_TRADE: u8 = 1;
const KIND_RUN: u8 = 2;
const KIND_USER: u8 = 3;
const KIND_REFUND: u8 = 4;
const KIND_CLAIM: u8 = 5;
const KIND_GROUP: u8 = 6;
const KIND_END: u8 = 7;
/// Kinds of entry the end marker counts.
const COUNTED_KINDS: usize = 12;

/// The file name of the checkpoint at `position`.
pub(crate) fn file_name(position: u64) -> String {
    format!("checkpoint-{position:020}.ckpt")
}

/// The position of a checkpoint's file name, or `None` for any other name.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("checkpoint-")?.strip_suffix(".ckpt")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// What the first page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub shard_id: u32,
    /// The index's scalars; `applied_end` is the checkpoint's position.
    pub scalars: Scalars,
    /// Bytes of the store of created parts that the checkpoint's trades point into.
    pub parts_len: u64,
    pub created_ms: u64,
    /// A frame of the log at or before the checkpoint's last record, where an open starts
    /// reading its segment (none: at the segment's first frame).
    pub frame: Option<FramePos>,
    /// Blocks of the table whose copies were durable when the checkpoint was written
    /// (`trade_file/frozen.rs`): an open must find at least these.
    pub frozen_blocks: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_PAYLOAD_BYTES];
        out[0..2].copy_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        out[4..8].copy_from_slice(&self.shard_id.to_le_bytes());
        out[8..16].copy_from_slice(&self.scalars.applied_end.to_le_bytes());
        out[16..24].copy_from_slice(&self.scalars.events_end.to_le_bytes());
        out[24..32].copy_from_slice(&self.scalars.counter_max.to_le_bytes());
        out[32..40].copy_from_slice(&self.parts_len.to_le_bytes());
        out[40..48].copy_from_slice(&self.created_ms.to_le_bytes());
        out[48..56].copy_from_slice(&self.scalars.table_counter_max.to_le_bytes());
        out[56..64].copy_from_slice(&self.scalars.claims_known_below.to_le_bytes());
        if let Some(frame) = self.frame {
            out[64..72].copy_from_slice(&frame.segment_base.to_le_bytes());
            out[72..80].copy_from_slice(&frame.offset.to_le_bytes());
            out[80..88].copy_from_slice(&frame.first_seq.to_le_bytes());
        }
        out[88..96].copy_from_slice(&self.frozen_blocks.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Header, &'static str> {
        let version = bytes.get(0..2).map(|v| u16::from_le_bytes([v[0], v[1]]));
        let expected_len = match version.ok_or("checkpoint header has the wrong length")? {
            CHECKPOINT_VERSION => HEADER_PAYLOAD_BYTES,
            CHECKPOINT_VERSION_NO_FROZEN => HEADER_PAYLOAD_BYTES_NO_FROZEN,
            CHECKPOINT_VERSION_NO_FRAME => HEADER_PAYLOAD_BYTES_NO_FRAME,
            _ => return Err("checkpoint version this build does not read"),
        };
        if bytes.len() != expected_len {
            return Err("checkpoint header has the wrong length");
        }
        if bytes[2..4] != [0, 0] {
            return Err("checkpoint header has reserved bytes set");
        }
        let mut reader = cursor(bytes, 4);
        let shard_id = reader.u32()?;
        let (applied_end, events_end, counter_max) = (reader.u64()?, reader.u64()?, reader.u64()?);
        let (parts_len, created_ms, table_counter_max) = (reader.u64()?, reader.u64()?, reader.u64()?);
        let claims_known_below = reader.u64()?;
        // Every trade id's counter is below 2^COUNTER_BITS (`trade.rs`): a higher one is damage,
        // and would overflow the counters computed from it.
        if counter_max >= 1 << crate::trade::COUNTER_BITS {
            return Err("checkpoint header's counter past any trade id's");
        }
        if table_counter_max > counter_max {
            return Err("checkpoint header's table counter above its counter");
        }
        if claims_known_below == 0 || claims_known_below > counter_max + 1 {
            return Err("checkpoint header's known-claims counter out of range");
        }
        let frame = match bytes.len() > HEADER_PAYLOAD_BYTES_NO_FRAME {
            true => decode_frame(reader.u64()?, reader.u64()?, reader.u64()?, applied_end),
            false => None,
        };
        let frozen_blocks = match bytes.len() > HEADER_PAYLOAD_BYTES_NO_FROZEN {
            true => reader.u64()?,
            false => 0,
        };
        // A frozen block holds trades the table holds.
        if frozen_blocks > table_counter_max.div_ceil(crate::trade_file::frozen::BLOCK_RECORDS) {
            return Err("checkpoint header's frozen blocks past its table");
        }
        let scalars = Scalars { applied_end, events_end, counter_max, table_counter_max, claims_known_below };
        Ok(Header { shard_id, scalars, parts_len, created_ms, frame, frozen_blocks })
    }
}

/// The header's log frame (all zeros: none). A frame holds records below the checkpoint's
/// position `applied_end`, of its segment, past the segment's first frame (which starts at the
/// block after the header block and holds the segment's first record: a checkpoint names none
/// there). A frame out of those bounds is taken as none: the frame only saves the open a
/// scan, and the rest of the checkpoint does not depend on it, so a wrong one costs time, not
/// the checkpoint.
fn decode_frame(segment_base: u64, offset: u64, first_seq: u64, applied_end: u64) -> Option<FramePos> {
    let in_segment = first_seq > segment_base && first_seq < applied_end;
    (in_segment && offset > BLOCK_BYTES && offset.is_multiple_of(BLOCK_BYTES)).then_some(FramePos {
        segment_base,
        offset,
        first_seq,
    })
}

/// Counts of each kind of entry, kept by the encoder and checked by the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub trades: u64,
    pub runs: u64,
    pub users: u64,
    pub refunds: u64,
    pub claims: u64,
    pub groups: u64,
    pub accounts: u64,
    pub account_requests: u64,
    pub branches: u64,
    pub activities: u64,
    pub in_transit: u64,
    pub messages: u64,
}

impl Counts {
    fn note(&mut self, item: &Item) {
        match item {
            Item::Trade(..) => self.trades += 1,
            Item::Run(..) => self.runs += 1,
            Item::User(..) => self.users += 1,
            Item::Refund(..) => self.refunds += 1,
            Item::Claim(..) => self.claims += 1,
            Item::Group(..) => self.groups += 1,
            Item::Account(AccountItem::Balance(..)) => self.accounts += 1,
            Item::Account(AccountItem::Request(..)) => self.account_requests += 1,
            Item::Tcc(TccItem::Branch(..)) => self.branches += 1,
            Item::Tcc(TccItem::Activity(..)) => self.activities += 1,
            Item::Tcc(TccItem::InTransit(..)) => self.in_transit += 1,
            Item::Message(..) => self.messages += 1,
        }
    }

    fn fields(&self) -> [u64; COUNTED_KINDS] {
        let Counts { trades, runs, users, refunds, claims, groups, accounts, account_requests, .. } = *self;
        let Counts { branches, activities, in_transit, messages, .. } = *self;
        [
            trades,
            runs,
            users,
            refunds,
            claims,
            groups,
            accounts,
            account_requests,
            branches,
            activities,
            in_transit,
            messages,
        ]
    }
}

/// Seals `payload` as one page: its bytes, zero-padded to whole blocks.
pub(crate) fn seal_page(payload: &[u8], out: &mut Vec<u8>) {
    assert!(payload.len() <= PAGE_PAYLOAD_MAX, "a page's payload is bounded");
    let start = out.len();
    out.extend_from_slice(&PAGE_MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&page_checksum(&out[start..start + 8], payload).to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(start + page_bytes(payload.len()), 0);
}

/// Bytes a page with `payload_len` bytes of payload takes.
pub(crate) fn page_bytes(payload_len: usize) -> usize {
    (PAGE_HEADER_BYTES + payload_len).div_ceil(PAGE_ALIGN) * PAGE_ALIGN
}

fn page_checksum(header: &[u8], payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(payload, xxhash_rust::xxh3::xxh3_64(header))
}

/// The payload length a page header announces, or why it is no page header.
pub(crate) fn page_payload_len(header: &[u8]) -> Result<usize, &'static str> {
    if header.len() < PAGE_HEADER_BYTES {
        return Err("checkpoint page cut short");
    }
    if u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) != PAGE_MAGIC {
        return Err("no checkpoint page magic");
    }
    let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    if len > PAGE_PAYLOAD_MAX {
        return Err("checkpoint page longer than any written");
    }
    Ok(len)
}

/// The payload of the page at the start of `bytes` (which must hold all of it), checked.
pub(crate) fn open_page(bytes: &[u8]) -> Result<&[u8], &'static str> {
    let len = page_payload_len(bytes)?;
    let payload = bytes.get(PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + len).ok_or("checkpoint page cut short")?;
    let stored = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if page_checksum(&bytes[..8], payload) != stored {
        return Err("checkpoint page checksum mismatch");
    }
    Ok(payload)
}

/// Encodes a checkpoint's pages, one payload at a time.
pub(crate) struct Encoder {
    payload: Vec<u8>,
    counts: Counts,
}

impl Encoder {
    /// The first page (the header), sealed into `out`, and an encoder for the entries.
    pub(crate) fn new(header: &Header, out: &mut Vec<u8>) -> Encoder {
        seal_page(&header.encode(), out);
        Encoder { payload: Vec::with_capacity(PAGE_PAYLOAD_TARGET + 1024), counts: Counts::default() }
    }

    /// Adds an entry; when the page is full, seals it into `out` and returns true.
    pub(crate) fn push(&mut self, item: &Item, out: &mut Vec<u8>) -> bool {
        if let Item::User(user, ids) = item {
            if ids.len() > USER_IDS_PER_ITEM {
                let mut sealed = false;
                for run in ids.chunks(USER_IDS_PER_ITEM) {
                    sealed |= self.push(&Item::User(*user, run.to_vec()), out);
                }
                return sealed;
            }
        }
        self.counts.note(item);
        encode_item(item, &mut self.payload);
        if self.payload.len() >= PAGE_PAYLOAD_TARGET {
            seal_page(&self.payload, out);
            self.payload.clear();
            return true;
        }
        false
    }

    /// Adds the end marker and seals the last page into `out`.
    pub(crate) fn finish(mut self, out: &mut Vec<u8>) {
        self.payload.push(KIND_END);
        for count in self.counts.fields() {
            self.payload.extend_from_slice(&count.to_le_bytes());
        }
        seal_page(&self.payload, out);
    }
}

fn encode_item(item: &Item, out: &mut Vec<u8>) {
    let u64s = |out: &mut Vec<u8>, values: &[u64]| values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    match item {
        Item::Trade(id, entry) => {
            let CreatedAt::Stored(part) = entry.created_at else {
                panic!("a checkpoint's trades point into the store of created parts")
            };
            out.push(KIND_TRADE);
            let l = entry.lifecycle;
            u64s(out, &[id.0, entry.user_id, entry.merchant_id, l.amount, l.refunded, entry.updated_ms]);
            out.extend_from_slice(&entry.currency.bytes());
            out.push(l.status_byte());
            u64s(out, &[part.seq, part.offset]);
            out.extend_from_slice(&part.len.to_le_bytes());
        }
        Item::Run(store, id) => {
            out.push(KIND_RUN);
            out.push(*store as u8);
            u64s(out, &[*id]);
        }
        Item::User(user, ids) => {
            out.push(KIND_USER);
            u64s(out, &[*user]);
            out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            ids.iter().for_each(|id| out.extend_from_slice(&id.0.to_le_bytes()));
        }
        Item::Refund(key, refund) => {
            out.push(KIND_REFUND);
            out.extend_from_slice(&key.to_le_bytes());
            u64s(out, &[refund.trade_id.0, refund.amount, refund.refunded_after, refund.at_ms]);
        }
        Item::Claim(key, claim) => {
            out.push(KIND_CLAIM);
            out.extend_from_slice(&key.to_le_bytes());
            u64s(out, &[claim.body, claim.buyer_id, claim.trade.map_or(0, |id| id.0)]);
        }
        Item::Group(group, offset) => {
            out.push(KIND_GROUP);
            out.push(group.len() as u8);
            out.extend_from_slice(group.as_bytes());
            u64s(out, &[offset.offset, offset.at_ms]);
        }
        Item::Account(_) | Item::Tcc(_) => super::money::encode(item, out),
        Item::Message(_) => super::messages::encode(item, out),
    }
}

/// A cursor over a checkpoint's payload.
fn cursor(bytes: &[u8], at: usize) -> Reader<'_> {
    Reader::new(bytes, at, "checkpoint entry cut short")
}

/// The checkpoint's own fields, read off the shared cursor.
impl Reader<'_> {
    fn trade_id(&mut self) -> Result<TradeId, &'static str> {
        let id = TradeId(self.u64()?);
        if id.counter() == 0 || id.logical_shard() >= LOGICAL_SHARDS_MAX {
            return Err("checkpoint names a trade id this engine does not issue");
        }
        Ok(id)
    }
}

/// What one entries page held: its entries, and the end marker's counts if it was the last.
pub(crate) struct PageItems {
    pub items: Vec<Item>,
    pub end: Option<Counts>,
}

/// Decodes an entries page's payload.
pub(crate) fn decode_items(payload: &[u8]) -> Result<PageItems, &'static str> {
    let mut reader = cursor(payload, 0);
    let mut items = Vec::new();
    while !reader.done() {
        let item = match reader.u8()? {
            KIND_TRADE => {
                let id = reader.trade_id()?;
                let (user_id, merchant_id, amount, refunded, updated_ms) =
                    (reader.u64()?, reader.u64()?, reader.u64()?, reader.u64()?, reader.u64()?);
                let currency_bytes: [u8; 3] = reader.take(3)?.try_into().expect("3 bytes");
                let currency = Currency::from_bytes(currency_bytes).ok_or("checkpoint trade has no valid currency")?;
                let (status, from_balance) =
                    Lifecycle::of_status_byte(reader.u8()?).ok_or("checkpoint trade has no valid status")?;
                if refunded > amount {
                    return Err("checkpoint trade refunded more than its amount");
                }
                let part = StoredPart { seq: reader.u64()?, offset: reader.u64()?, len: reader.u32()? };
                let entry = TradeEntry {
                    logical_shard: id.logical_shard() as u16,
                    user_id,
                    merchant_id,
                    lifecycle: Lifecycle { status, amount, refunded, from_balance },
                    currency,
                    updated_ms,
                    created_at: CreatedAt::Stored(part),
                };
                Item::Trade(id, entry)
            }
            KIND_RUN => {
                let store = RunStore::from_u8(reader.u8()?).ok_or("checkpoint run of an unknown store")?;
                Item::Run(store, reader.u64()?)
            }
            KIND_USER => {
                let user = reader.u64()?;
                let n = reader.u32()? as usize;
                if n == 0 || n > USER_IDS_PER_ITEM {
                    return Err("checkpoint user entry with no trades or too many");
                }
                Item::User(user, (0..n).map(|_| reader.trade_id()).collect::<Result<_, _>>()?)
            }
            KIND_REFUND => {
                let key = reader.u128()?;
                let refund = RefundEntry {
                    trade_id: reader.trade_id()?,
                    amount: reader.u64()?,
                    refunded_after: reader.u64()?,
                    at_ms: reader.u64()?,
                };
                Item::Refund(key, refund)
            }
            KIND_CLAIM => {
                let key = reader.u128()?;
                let (body, buyer_id) = (reader.u64()?, reader.u64()?);
                let trade = match reader.u64()? {
                    0 => None,
                    raw => Some(cursor(&raw.to_le_bytes(), 0).trade_id()?),
                };
                Item::Claim(key, ClaimEntry { body, buyer_id, trade })
            }
            KIND_GROUP => {
                let len = reader.u8()? as usize;
                let name = std::str::from_utf8(reader.take(len)?).map_err(|_| "checkpoint group is not UTF-8")?;
                if !OffsetCommit::valid_group(name) {
                    return Err("checkpoint group name is not valid");
                }
                Item::Group(name.to_string(), GroupOffset { offset: reader.u64()?, at_ms: reader.u64()? })
            }
            kind @ super::money::KIND_ACCOUNT..=super::money::KIND_IN_TRANSIT => {
                super::money::decode(kind, &mut reader)?
            }
            kind @ super::messages::KIND_PRODUCER..=super::messages::KIND_NACK_FLOOR => {
                super::messages::decode(kind, &mut reader)?
            }
            KIND_END => {
                let mut counts = [0u64; COUNTED_KINDS];
                for count in &mut counts {
                    *count = reader.u64()?;
                }
                if !reader.done() {
                    return Err("checkpoint end marker is not the last entry");
                }
                let [trades, runs, users, refunds, claims, groups, accounts, account_requests, branches, activities, in_transit, messages] =
                    counts;
                let end = Counts {
                    trades,
                    runs,
                    users,
                    refunds,
                    claims,
                    groups,
                    accounts,
                    account_requests,
                    branches,
                    activities,
                    in_transit,
                    messages,
                };
                return Ok(PageItems { items, end: Some(end) });
            }
            _ => return Err("checkpoint entry of an unknown kind"),
        };
        items.push(item);
    }
    Ok(PageItems { items, end: None })
}

/// Rebuilds an index from a checkpoint's pages, given in order (see the module's text).
pub(crate) struct Restorer {
    position: u64,
    shard_id: u32,
    header: Option<Header>,
    index: ShardIndex,
    running: Counts,
}

/// What a page gave: more pages to come, or the whole checkpoint.
pub(crate) enum Restored {
    More,
    Done(Header, Box<ShardIndex>),
}

impl Restorer {
    /// A restorer of the checkpoint of shard `shard_id` named for `position`.
    pub(crate) fn new(shard_id: u32, position: u64) -> Restorer {
        Restorer { position, shard_id, header: None, index: ShardIndex::default(), running: Counts::default() }
    }

    /// Takes the page `page` (header and payload, whole), which ends at `page_end`; `file_end`:
    /// where the file ends.
    pub(crate) fn page(&mut self, page: &[u8], page_end: u64, file_end: u64) -> Result<Restored, &'static str> {
        let payload = open_page(page)?;
        if self.header.is_none() {
            let header = Header::decode(payload)?;
            if header.shard_id != self.shard_id {
                return Err("checkpoint of another shard");
            }
            if header.scalars.applied_end != self.position {
                return Err("checkpoint position differs from its file name");
            }
            self.index = ShardIndex::with_scalars(header.scalars);
            self.header = Some(header);
            return Ok(Restored::More);
        }
        let items = decode_items(payload)?;
        for item in items.items {
            self.running.note(&item);
            self.index.restore(item)?;
        }
        match items.end {
            Some(end) if end != self.running || page_end != file_end => {
                Err("checkpoint counts or length differ from its end marker")
            }
            Some(_) => {
                let header = self.header.expect("read first");
                Ok(Restored::Done(header, Box::new(std::mem::take(&mut self.index))))
            }
            None if page_end >= file_end => Err("checkpoint ends before its end marker"),
            None => Ok(Restored::More),
        }
    }
}

/// Decodes a whole checkpoint file held in memory (tests and the fuzz target): the number of
/// trades it holds, or the offset of the page at fault and why.
#[cfg(any(test, feature = "testing"))]
pub fn decode_file(bytes: &[u8], shard_id: u32, position: u64) -> Result<usize, (u64, &'static str)> {
    let mut restorer = Restorer::new(shard_id, position);
    let mut at = 0usize;
    loop {
        let page = &bytes[at.min(bytes.len())..];
        let len = page_payload_len(page).map_err(|reason| (at as u64, reason))?;
        let end = at + page_bytes(len);
        match restorer.page(page, end as u64, bytes.len() as u64).map_err(|reason| (at as u64, reason))? {
            Restored::More => at = end,
            Restored::Done(_, index) => return Ok(index.len()),
        }
    }
}
