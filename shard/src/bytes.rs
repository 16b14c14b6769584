//! Reading fixed little-endian fields off bytes from disk, each read bounded: the one cursor
//! of the shard's decoders (checkpoint pages, local transactions), which must never panic.

/// A cursor over `bytes`; a read past the end is the error `short` names.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pub(crate) at: usize,
    short: &'static str,
}

impl<'a> Reader<'a> {
    /// A cursor at `at` of `bytes`; `short` is the error of a read past the end.
    pub(crate) fn new(bytes: &'a [u8], at: usize, short: &'static str) -> Reader<'a> {
        Reader { bytes, at, short }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let taken = self.bytes.get(self.at..self.at + n).ok_or(self.short)?;
        self.at += n;
        Ok(taken)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub(crate) fn u128(&mut self) -> Result<u128, &'static str> {
        Ok(u128::from_le_bytes(self.take(16)?.try_into().expect("16 bytes")))
    }

    /// The bytes from `start` to where the cursor is.
    pub(crate) fn slice(&self, start: usize) -> &'a [u8] {
        &self.bytes[start..self.at]
    }

    /// True when every byte was read.
    pub(crate) fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}
