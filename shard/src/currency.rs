//! ISO 4217 currency codes: the alphabetic codes in circulation, and their validation.
//!
//! A currency is held as its three ASCII letters. Only listed codes are accepted, so a typo
//! ("UDS") is an error at the door instead of a trade nobody can settle.

use serde::{Deserialize, Serialize};

/// The active ISO 4217 alphabetic codes, sorted.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF", "BMD",
    "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP",
    "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD",
    "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN",
    "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB",
    "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL",
    "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VES", "VND",
    "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// Three upper-case letters as a number below 26^3, the bit of the code in [`KNOWN`].
const fn letters_index(code: &[u8]) -> Option<usize> {
    if code.len() != 3 {
        return None;
    }
    let mut index = 0;
    let mut at = 0;
    while at < 3 {
        if !code[at].is_ascii_uppercase() {
            return None;
        }
        index = index * 26 + (code[at] - b'A') as usize;
        at += 1;
    }
    Some(index)
}

/// One bit per three-letter code, set for the codes of [`ISO_4217`]: every record decoded
/// (replay at open, settlement polls, cache misses) checks its currency, and a bit test costs
/// a few instructions where a binary search of strings cost eight comparisons.
const KNOWN: [u64; (26usize * 26 * 26).div_ceil(64)] = {
    let mut bits = [0u64; (26usize * 26 * 26).div_ceil(64)];
    let mut i = 0;
    while i < ISO_4217.len() {
        let index = match letters_index(ISO_4217[i].as_bytes()) {
            Some(index) => index,
            None => panic!("ISO_4217 holds three upper-case letters per code"),
        };
        bits[index / 64] |= 1 << (index % 64);
        i += 1;
    }
    bits
};

/// A validated ISO 4217 currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// The code if it is an active ISO 4217 code (upper case, three letters).
    pub fn parse(code: &str) -> Option<Currency> {
        Currency::from_bytes(code.as_bytes().try_into().ok()?)
    }

    /// The code's bytes, as stored in records.
    pub fn bytes(self) -> [u8; 3] {
        self.0
    }

    /// The currency of stored bytes, if they are a known code.
    pub fn from_bytes(bytes: [u8; 3]) -> Option<Currency> {
        let index = letters_index(&bytes)?;
        (KNOWN[index / 64] & (1 << (index % 64)) != 0).then_some(Currency(bytes))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated ASCII")
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Currency::parse(&code).ok_or_else(|| format!("'{code}' is not an ISO 4217 currency code"))
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_and_unique() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
        assert!(ISO_4217.iter().all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
    }

    /// The bitmap and the list agree on every three-byte code of letters, and nothing else
    /// parses.
    #[test]
    fn bitmap_holds_exactly_the_listed_codes() {
        let mut accepted = 0;
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                for c in b'A'..=b'Z' {
                    let code = [a, b, c];
                    let listed = ISO_4217.contains(&std::str::from_utf8(&code).unwrap());
                    assert_eq!(Currency::from_bytes(code).is_some(), listed, "{code:?}");
                    accepted += usize::from(listed);
                }
            }
        }
        assert_eq!(accepted, ISO_4217.len());
        assert_eq!(Currency::from_bytes(*b"cny"), None);
        assert_eq!(Currency::from_bytes([b'C', 0, b'Y']), None);
    }

    #[test]
    fn known_codes_parse_and_unknown_do_not() {
        assert_eq!(Currency::parse("CNY").unwrap().as_str(), "CNY");
        assert!(Currency::parse("USD").is_some());
        for bad in ["usd", "UDS", "US", "USDT", "", "XXX"] {
            assert!(Currency::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Currency::from_bytes(*b"EUR"), Currency::parse("EUR"));
        assert_eq!(Currency::from_bytes([0xff, 0, 1]), None);
    }
}
