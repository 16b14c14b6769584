//! Units a user types on the command line: byte counts.

/// A byte count: a number with an optional KiB, MiB or GiB suffix, above zero.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    Some(parse_budget(text)?).filter(|&bytes| bytes > 0).ok_or_else(|| format!("{text}: out of range"))
}

/// A budget of bytes, as [`parse_bytes`] reads it, where 0 (none) is allowed too.
pub fn parse_budget(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{text}: a number of bytes, with KiB, MiB or GiB")),
    };
    let number: u64 = number.parse().map_err(|_| format!("{text}: a number of bytes"))?;
    number.checked_mul(scale).ok_or_else(|| format!("{text}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_units_and_budgets_take_zero_too() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert_eq!(parse_budget("0"), Ok(0));
        assert_eq!(parse_budget("0MiB"), Ok(0));
        assert_eq!(parse_budget("2KiB"), Ok(2048));
        assert!(parse_budget("5TB").is_err());
        assert!(parse_budget("MiB").is_err());
        assert!(parse_budget("99999999999GiB").is_err());
    }
}
