//! Rows of one size stored as byte columns, each column in as few bits as its values need:
//! the codec of the table's frozen blocks (`trade_file/frozen.rs`) and of the runs' data
//! blocks (`runs/format.rs`).
//!
//! Byte `j` of every row is column `j`. A column is stored as its least value and each row's
//! difference from it in `w` bits, `w` the bits of the greatest difference (0 for a column
//! that never changes). Rows of records hold many such columns: a currency, a shard, the high
//! bytes of ids, times and amounts, zero padding; sorted keys share their high bytes. Unlike a
//! general compressor, any one row comes out in one shift per column, without decoding the
//! others, so a point read pays for its row alone. The layout, for `n` rows of `r` bytes:
//! the `r` least values, then the `r` widths a nibble each (column `j` in byte `r + j / 2`,
//! the low nibble for even `j`), then column 0, 1, … each `ceil(n × w / 8)` bytes, row `i`'s
//! bits at bit `i × w` of its column, least significant first. It is also in `docs/FORMAT.md`.

/// Bytes before the columns of rows of `row_bytes`.
pub(crate) const fn header_bytes(row_bytes: usize) -> usize {
    row_bytes + row_bytes.div_ceil(2)
}

/// Bytes of a column of `rows` values of `width` bits.
fn column_bytes(rows: usize, width: u8) -> usize {
    (rows * width as usize).div_ceil(8)
}

/// Bits the differences of a column whose values lie in `least..=most` need.
fn width_of_span(least: u8, most: u8) -> u8 {
    (8 - (most - least).leading_zeros()) as u8
}

/// The least and greatest value of each column of the rows taken so far, and the widths they
/// make, so that a writer filling a block of fixed size knows what one more row would cost
/// before it takes it (a writer of runs asks that of every entry).
pub(crate) struct Spans {
    least: Vec<u8>,
    most: Vec<u8>,
    widths: Vec<u8>,
    /// The values each column can take without its width growing (`most - mask ..= least +
    /// mask`, `mask` its width's greatest difference): a row within them widens spans but
    /// changes no width, so its cost is known without a look at which columns it widens.
    keeps_width_from: Vec<u8>,
    keeps_width_to: Vec<u8>,
    /// Each column's width's greatest difference.
    masks: Vec<u8>,
    /// Columns of each width, 0 to 8.
    of_width: [usize; 9],
    rows: usize,
}

/// The greatest difference a column of `width` bits holds.
fn mask_of(width: u8) -> u8 {
    ((1u16 << width) - 1) as u8
}

impl Spans {
    pub(crate) fn new(row_bytes: usize) -> Spans {
        let mut of_width = [0; 9];
        of_width[0] = row_bytes;
        Spans {
            least: vec![u8::MAX; row_bytes],
            most: vec![0; row_bytes],
            widths: vec![0; row_bytes],
            keeps_width_from: vec![0; row_bytes],
            keeps_width_to: vec![u8::MAX; row_bytes],
            masks: vec![0; row_bytes],
            of_width,
            rows: 0,
        }
    }

    /// Rows taken.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Takes `row` if the rows taken and it encode in at most `limit` bytes. A row inside
    /// every column's span (most rows, once a block holds a few) costs one pass of compares; a
    /// row that widens spans without changing a width (most of the rest: a column of sorted
    /// keys' high bytes grows a little with every row) two passes without branches.
    pub(crate) fn take_if_fits(&mut self, row: &[u8], limit: usize) -> bool {
        if !self.widened_by(row) {
            if self.encoded_len(&self.of_width, self.rows + 1) > limit {
                return false;
            }
            self.rows += 1;
            return true;
        }
        if self.keeps_widths(row) {
            if self.encoded_len(&self.of_width, self.rows + 1) > limit {
                return false;
            }
            self.widen_to(row);
            self.rows += 1;
            return true;
        }
        if self.encoded_len_with(row) > limit {
            return false;
        }
        self.take(row);
        true
    }

    /// Whether `row` lies within the values that keep every column's width.
    fn keeps_widths(&self, row: &[u8]) -> bool {
        row.iter()
            .zip(&self.keeps_width_from)
            .zip(&self.keeps_width_to)
            .fold(true, |kept, ((&byte, &from), &to)| kept & (byte >= from) & (byte <= to))
    }

    /// Widens every column's span to `row`'s byte, its width unchanged, and the values that
    /// keep it with it (bytewise minimums, maximums and saturating sums over slices of one
    /// length, which the compiler turns into vector instructions).
    fn widen_to(&mut self, row: &[u8]) {
        let n = row.len();
        let (least, most, masks) = (&mut self.least[..n], &mut self.most[..n], &self.masks[..n]);
        let (from, to) = (&mut self.keeps_width_from[..n], &mut self.keeps_width_to[..n]);
        for j in 0..n {
            least[j] = least[j].min(row[j]);
            most[j] = most[j].max(row[j]);
            from[j] = most[j].saturating_sub(masks[j]);
            to[j] = least[j].saturating_add(masks[j]);
        }
    }

    fn set_keeps_width(&mut self, j: usize) {
        self.masks[j] = mask_of(self.widths[j]);
        self.keeps_width_from[j] = self.most[j].saturating_sub(self.masks[j]);
        self.keeps_width_to[j] = self.least[j].saturating_add(self.masks[j]);
    }

    /// Whether `row` has a byte outside its column's span (without branches, so that the
    /// compiler can compare many bytes at once).
    fn widened_by(&self, row: &[u8]) -> bool {
        row.iter()
            .zip(&self.least)
            .zip(&self.most)
            .fold(false, |out, ((&byte, &least), &most)| out | (byte < least) | (byte > most))
    }

    fn encoded_len(&self, of_width: &[usize; 9], rows: usize) -> usize {
        let columns: usize = (1..=8).map(|width| of_width[width] * column_bytes(rows, width as u8)).sum();
        header_bytes(self.least.len()) + columns
    }

    /// Bytes the rows taken and `row` would take together.
    pub(crate) fn encoded_len_with(&self, row: &[u8]) -> usize {
        let mut of_width = self.of_width;
        for (j, &byte) in row.iter().enumerate() {
            if byte < self.least[j] || byte > self.most[j] {
                let width = width_of_span(self.least[j].min(byte), self.most[j].max(byte));
                of_width[self.widths[j] as usize] -= 1;
                of_width[width as usize] += 1;
            }
        }
        self.encoded_len(&of_width, self.rows + 1)
    }

    pub(crate) fn take(&mut self, row: &[u8]) {
        for (j, &byte) in row.iter().enumerate() {
            if byte < self.least[j] || byte > self.most[j] {
                self.least[j] = self.least[j].min(byte);
                self.most[j] = self.most[j].max(byte);
                let width = width_of_span(self.least[j], self.most[j]);
                self.of_width[self.widths[j] as usize] -= 1;
                self.of_width[width as usize] += 1;
                self.widths[j] = width;
                self.set_keeps_width(j);
            }
        }
        self.rows += 1;
    }

    /// Forgets every row taken.
    pub(crate) fn clear(&mut self) {
        self.least.fill(u8::MAX);
        self.most.fill(0);
        self.widths.fill(0);
        self.keeps_width_from.fill(0);
        self.keeps_width_to.fill(u8::MAX);
        self.masks.fill(0);
        self.of_width = [0; 9];
        self.of_width[0] = self.least.len();
        self.rows = 0;
    }
}

/// Appends the columns of `rows` (rows of `row_bytes`, back to back) to `out`.
pub(crate) fn encode(rows: &[u8], row_bytes: usize, out: &mut Vec<u8>) {
    assert!(row_bytes > 0 && rows.len().is_multiple_of(row_bytes), "whole rows");
    let mut spans = Spans::new(row_bytes);
    rows.chunks_exact(row_bytes).for_each(|row| spans.take(row));
    encode_spanned(rows, &spans, out);
}

/// [`encode`] of the rows `spans` took (every one of them, and no other).
pub(crate) fn encode_spanned(rows: &[u8], spans: &Spans, out: &mut Vec<u8>) {
    let row_bytes = spans.least.len();
    assert_eq!(rows.len(), spans.rows * row_bytes, "the rows the spans took");
    let header = out.len();
    out.resize(header + header_bytes(row_bytes), 0);
    for j in 0..row_bytes {
        let (least, width) = match spans.rows {
            0 => (0, 0),
            _ => (spans.least[j], spans.widths[j]),
        };
        out[header + j] = least;
        out[header + row_bytes + j / 2] |= width << (4 * (j % 2));
        let at = out.len();
        out.resize(at + column_bytes(spans.rows, width), 0);
        if width == 0 {
            continue;
        }
        for (i, row) in rows.chunks_exact(row_bytes).enumerate() {
            let bit = i * width as usize;
            let bits = u16::from(row[j] - least) << (bit % 8);
            out[at + bit / 8] |= bits as u8;
            if bits > 0xff {
                out[at + bit / 8 + 1] |= (bits >> 8) as u8;
            }
        }
    }
}

/// Where each column of an encoding starts, checked against the bytes it was parsed from.
pub(crate) struct Columns {
    row_bytes: usize,
    rows: usize,
    starts: Vec<u32>,
    end: usize,
}

impl Columns {
    /// `bytes` read as the columns of `rows` rows of `row_bytes`: refused when a width passes
    /// 8 bits or the columns pass the end of `bytes`. The columns may end before it
    /// ([`end`](Self::end) says where).
    pub(crate) fn parse(bytes: &[u8], row_bytes: usize, rows: usize) -> Result<Columns, &'static str> {
        let mut at = header_bytes(row_bytes);
        if bytes.len() < at {
            return Err("columns cut short in their header");
        }
        let mut starts = Vec::with_capacity(row_bytes);
        for j in 0..row_bytes {
            let width = width_at(bytes, row_bytes, j);
            if width > 8 {
                return Err("a column wider than a byte");
            }
            starts.push(at as u32);
            at += column_bytes(rows, width);
            if at > bytes.len() {
                return Err("columns reaching past their bytes");
            }
        }
        if row_bytes % 2 == 1 && bytes[header_bytes(row_bytes) - 1] >> 4 != 0 {
            return Err("a width where none belongs");
        }
        Ok(Columns { row_bytes, rows, starts, end: at })
    }

    /// Where the columns end in the bytes they were parsed from.
    pub(crate) fn end(&self) -> usize {
        self.end
    }

    /// Row `i` (below the rows parsed) of `bytes` (those parsed), written to `out`.
    pub(crate) fn row(&self, bytes: &[u8], i: usize, out: &mut [u8]) {
        assert!(i < self.rows, "a row of the columns");
        for (j, out) in out[..self.row_bytes].iter_mut().enumerate() {
            let width = width_at(bytes, self.row_bytes, j) as usize;
            let mut difference = 0u16;
            if width > 0 {
                let bit = i * width;
                let at = self.starts[j] as usize + bit / 8;
                let pair = u16::from(bytes[at]) | bytes.get(at + 1).map_or(0, |&b| u16::from(b) << 8);
                difference = (pair >> (bit % 8)) & ((1u16 << width) - 1);
            }
            *out = bytes[j].wrapping_add(difference as u8);
        }
    }
    /// Every row of `bytes` (those parsed), back to back, into `out` (rows × row bytes long):
    /// column by column, the way a whole block is read.
    pub(crate) fn decode_all(&self, bytes: &[u8], out: &mut [u8]) {
        assert_eq!(out.len(), self.rows * self.row_bytes, "room for every row");
        for j in 0..self.row_bytes {
            let (least, width) = (bytes[j], width_at(bytes, self.row_bytes, j) as usize);
            let cells = out[j..].iter_mut().step_by(self.row_bytes);
            if width == 0 {
                cells.for_each(|cell| *cell = least);
                continue;
            }
            let (start, mask) = (self.starts[j] as usize, (1u16 << width) - 1);
            for (i, cell) in cells.enumerate() {
                let bit = i * width;
                let at = start + bit / 8;
                let pair = u16::from(bytes[at]) | bytes.get(at + 1).map_or(0, |&b| u16::from(b) << 8);
                *cell = least.wrapping_add(((pair >> (bit % 8)) & mask) as u8);
            }
        }
    }
}

fn width_at(bytes: &[u8], row_bytes: usize, j: usize) -> u8 {
    (bytes[row_bytes + j / 2] >> (4 * (j % 2))) & 0xf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn rows_of_any_bytes_come_back_whole_and_spans_predict_the_length() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        for case in 0..300u64 {
            let row_bytes = [1, 7, 16, 40, 128][case as usize % 5];
            let count = 1 + xorshift(&mut rng) as usize % 200;
            // Each column spans a range of its own, from constant to every byte value.
            let spans: Vec<u64> = (0..row_bytes).map(|_| 1 << (xorshift(&mut rng) % 9)).collect();
            let base: Vec<u64> = (0..row_bytes).map(|_| xorshift(&mut rng) % 256).collect();
            let mut rows = vec![0u8; count * row_bytes];
            for row in rows.chunks_exact_mut(row_bytes) {
                for (j, byte) in row.iter_mut().enumerate() {
                    *byte = ((base[j] + xorshift(&mut rng) % spans[j]) % 256) as u8;
                }
            }
            if case % 2 == 1 {
                // Sorted as a run's little-endian keys are: the high columns grow row by row,
                // widening their spans a little at a time.
                let mut sorted: Vec<&[u8]> = rows.chunks_exact(row_bytes).collect();
                sorted.sort_by(|a, b| a.iter().rev().cmp(b.iter().rev()));
                rows = sorted.concat();
            }
            let mut taken = Spans::new(row_bytes);
            let mut fitted = Spans::new(row_bytes);
            let mut predicted = header_bytes(row_bytes);
            for row in rows.chunks_exact(row_bytes) {
                predicted = taken.encoded_len_with(row);
                taken.take(row);
                // One byte short of what the row needs is refused, leaving the spans as they
                // were; exactly enough takes it.
                assert!(!fitted.take_if_fits(row, predicted - 1), "case {case}");
                assert!(fitted.take_if_fits(row, predicted), "case {case}");
                assert_eq!(fitted.encoded_len_with(row), taken.encoded_len_with(row), "case {case}");
            }
            assert_eq!(fitted.rows(), count);
            let mut out = vec![0xaa; 3];
            encode(&rows, row_bytes, &mut out);
            assert_eq!(out.len() - 3, predicted, "case {case}");
            let mut by_fitted = vec![0xaa; 3];
            encode_spanned(&rows, &fitted, &mut by_fitted);
            assert_eq!(by_fitted, out, "case {case}: the spans taken if fitting encode alike");
            assert!(out.len() - 3 <= header_bytes(row_bytes) + rows.len());
            let columns = Columns::parse(&out[3..], row_bytes, count).unwrap();
            assert_eq!(columns.end(), out.len() - 3);
            let mut row = vec![0u8; row_bytes];
            for i in 0..count {
                columns.row(&out[3..], i, &mut row);
                assert_eq!(row, rows[i * row_bytes..(i + 1) * row_bytes], "case {case} row {i}");
            }
            let mut every = vec![0u8; rows.len()];
            columns.decode_all(&out[3..], &mut every);
            assert_eq!(every, rows, "case {case}, every row at once");
            assert!(Columns::parse(&out[3..out.len() - 1], row_bytes, count).is_err(), "cut short");
        }
    }

    #[test]
    fn a_constant_column_costs_no_bits_and_a_wide_width_is_refused() {
        let rows: Vec<u8> = (0..10u8).flat_map(|i| [7, i, 200]).collect();
        let mut out = Vec::new();
        encode(&rows, 3, &mut out);
        // Least values, widths (0 and 4, then 0 and an empty nibble), 10 rows of 4 bits.
        assert_eq!(out[..5], [7, 0, 200, 0x40, 0x00]);
        assert_eq!(out.len(), 5 + 5);
        let mut wide = out.clone();
        wide[3] = 0x90;
        assert_eq!(Columns::parse(&wide, 3, 10).err(), Some("a column wider than a byte"));
        let mut stray = out.clone();
        stray[4] = 0x10;
        assert_eq!(Columns::parse(&stray, 3, 10).err(), Some("a width where none belongs"));
        assert_eq!(Columns::parse(&out[..9], 3, 10).err(), Some("columns reaching past their bytes"));
    }
}
