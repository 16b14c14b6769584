//! Why bytes are not a valid frame: the one verdict of every decoder of log bytes.
//!
//! Frames, their pieces and the cursor that reads them all report a defect with this type,
//! and recovery alone decides what it means (a torn tail or corruption), so it sits apart
//! from the codecs that produce it and the readers that act on it.

/// Why bytes are not a valid frame. Recovery decides whether that is a torn tail or corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDefect {
    /// Fewer bytes than a header or than the declared payload.
    Short,
    /// The header is all zeros: nothing was ever written here (the end of the log).
    Unwritten,
    /// The magic number is absent.
    NoMagic,
    /// A version this build does not read.
    Version,
    /// A length, count, flag or reserved field out of its bounds.
    Header,
    /// The checksum does not match the bytes.
    Checksum,
    /// The compressed payload does not decompress to the declared size.
    Compression,
    /// The record lengths do not tile the payload into the declared count.
    Records,
}

impl FrameDefect {
    /// A sentence for error messages.
    pub fn reason(self) -> &'static str {
        match self {
            FrameDefect::Short => "frame is cut short",
            FrameDefect::Unwritten => "unwritten (zero) block",
            FrameDefect::NoMagic => "no frame magic",
            FrameDefect::Version => "unknown frame version",
            FrameDefect::Header => "frame header field out of bounds",
            FrameDefect::Checksum => "frame checksum mismatch",
            FrameDefect::Compression => "frame payload does not decompress to its declared size",
            FrameDefect::Records => "record lengths do not match the frame",
        }
    }
}
