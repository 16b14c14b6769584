//! Units a user types on the command line: byte counts.

/// A byte count: a number with an optional KiB, MiB or GiB suffix.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{text}: a number of bytes, with KiB, MiB or GiB")),
    };
    let number: u64 = number.parse().map_err(|_| format!("{text}: a number of bytes"))?;
    number.checked_mul(scale).filter(|&b| b > 0).ok_or_else(|| format!("{text}: out of range"))
}
