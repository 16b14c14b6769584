//! The expected-state journal of a stress cycle: what the child process was about to do and
//! what the engine acknowledged, one line per event, written before the request is sent (an
//! intent) and after its answer arrives (an acknowledgement).
//!
//! Each thread of the child writes its own file with one `write(2)` per line, so that a
//! SIGKILL leaves every line the thread finished and at most one partial last line, which the
//! reader drops: the page cache outlives the process, so nothing written is lost to the kill.
//!
//! ```text
//! C <buyer> <order> <amount>      intent: create order <order> of <buyer>
//! c <buyer> <order> <trade id>    acknowledged create
//! A <trade id> <action> <amount>  intent: pay | settle | close | refund <amount>
//! a <trade id>                    acknowledged change (the thread's last intent on that trade)
//! K <partition> <offset>          intent: commit the settlement group's offset
//! k <partition> <offset>          acknowledged commit
//! M deposit <user> 0 <amount> <request>       intent: a deposit under request number <request>
//! M transfer <from> <to> <amount> <request>   intent: a transfer
//! m <request> done|cancelled|refused          its outcome
//! X <text>                        the child saw something wrong and stopped
//! ```

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

/// A change the child sends to an existing trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Pay,
    Settle,
    Close,
    Refund(u64),
}

impl Change {
    fn encode(self) -> (&'static str, u64) {
        match self {
            Change::Pay => ("pay", 0),
            Change::Settle => ("settle", 0),
            Change::Close => ("close", 0),
            Change::Refund(amount) => ("refund", amount),
        }
    }

    fn decode(name: &str, amount: u64) -> Option<Change> {
        Some(match name {
            "pay" => Change::Pay,
            "settle" => Change::Settle,
            "close" => Change::Close,
            "refund" => Change::Refund(amount),
            _ => return None,
        })
    }
}

/// A money request the child sends (`money.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoneyOp {
    Deposit { user: u64, amount: u64 },
    Transfer { from: u64, to: u64, amount: u64 },
}

/// How a money request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A transfer across shards cancelled (a branch refused, a deadline passed).
    Cancelled,
    /// Too little money: nothing moved.
    Refused,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Cancelled => "cancelled",
            Outcome::Refused => "refused",
        }
    }

    fn of(name: &str) -> Option<Outcome> {
        [Outcome::Done, Outcome::Cancelled, Outcome::Refused].into_iter().find(|o| o.name() == name)
    }
}

/// One line of a journal. `Consumed`: the events the child's consumer took from `partition`
/// between two of its commits (offsets `from..to`), how many and their digest
/// (`delivered::event_digest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    CreateSent { buyer: u64, order: u64, amount: u64 },
    CreateAcked { buyer: u64, order: u64, id: u64 },
    ChangeSent { id: u64, change: Change },
    ChangeAcked { id: u64 },
    CommitSent { partition: u32, offset: u64 },
    CommitAcked { partition: u32, offset: u64 },
    Consumed { partition: u32, from: u64, to: u64, count: u64, digest: u64 },
    MoneySent { op: MoneyOp, request: String },
    MoneyAcked { request: String, outcome: Outcome },
    Failure(String),
}

impl Entry {
    fn encode(&self) -> String {
        match self {
            Entry::CreateSent { buyer, order, amount } => format!("C {buyer} {order} {amount}\n"),
            Entry::CreateAcked { buyer, order, id } => format!("c {buyer} {order} {id}\n"),
            Entry::ChangeSent { id, change } => {
                let (name, amount) = change.encode();
                format!("A {id} {name} {amount}\n")
            }
            Entry::ChangeAcked { id } => format!("a {id}\n"),
            Entry::CommitSent { partition, offset } => format!("K {partition} {offset}\n"),
            Entry::CommitAcked { partition, offset } => format!("k {partition} {offset}\n"),
            Entry::Consumed { partition, from, to, count, digest } => {
                format!("D {partition} {from} {to} {count} {digest}\n")
            }
            Entry::MoneySent { op: MoneyOp::Deposit { user, amount }, request } => {
                format!("M deposit {user} 0 {amount} {request}\n")
            }
            Entry::MoneySent { op: MoneyOp::Transfer { from, to, amount }, request } => {
                format!("M transfer {from} {to} {amount} {request}\n")
            }
            Entry::MoneyAcked { request, outcome } => format!("m {request} {}\n", outcome.name()),
            Entry::Failure(text) => format!("X {}\n", text.replace('\n', " ")),
        }
    }

    fn decode(line: &str) -> Option<Entry> {
        let (tag, rest) = line.split_once(' ')?;
        if tag == "X" {
            return Some(Entry::Failure(rest.to_string()));
        }
        let words: Vec<&str> = rest.split(' ').collect();
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        Some(match (tag, words.len()) {
            ("C", 3) => Entry::CreateSent { buyer: number(0)?, order: number(1)?, amount: number(2)? },
            ("c", 3) => Entry::CreateAcked { buyer: number(0)?, order: number(1)?, id: number(2)? },
            ("A", 3) => Entry::ChangeSent { id: number(0)?, change: Change::decode(words[1], number(2)?)? },
            ("a", 1) => Entry::ChangeAcked { id: number(0)? },
            ("K", 2) => Entry::CommitSent { partition: u32::try_from(number(0)?).ok()?, offset: number(1)? },
            ("k", 2) => Entry::CommitAcked { partition: u32::try_from(number(0)?).ok()?, offset: number(1)? },
            ("D", 5) => Entry::Consumed {
                partition: u32::try_from(number(0)?).ok()?,
                from: number(1)?,
                to: number(2)?,
                count: number(3)?,
                digest: number(4)?,
            },
            ("M", 5) => {
                let (first, second, amount, request) = (number(1)?, number(2)?, number(3)?, words[4].to_string());
                let op = match words[0] {
                    "deposit" if second == 0 => MoneyOp::Deposit { user: first, amount },
                    "transfer" => MoneyOp::Transfer { from: first, to: second, amount },
                    _ => return None,
                };
                Entry::MoneySent { op, request }
            }
            ("m", 2) => Entry::MoneyAcked { request: words[0].to_string(), outcome: Outcome::of(words[1])? },
            _ => return None,
        })
    }
}

/// One thread's journal file.
pub struct JournalWriter {
    file: File,
}

impl JournalWriter {
    pub fn create(path: &Path) -> anyhow::Result<JournalWriter> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(JournalWriter { file })
    }

    /// Writes one line with one system call; a failure to journal stops the child.
    pub fn write(&mut self, entry: &Entry) {
        if let Err(e) = self.file.write_all(entry.encode().as_bytes()) {
            eprintln!("stress child: journal write failed: {e}");
            std::process::exit(4);
        }
    }
}

/// The entries of a journal file, without the partial last line a kill may leave.
pub fn read(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end + 1],
        None => "",
    };
    let mut entries = Vec::new();
    for (number, line) in complete.lines().enumerate() {
        match Entry::decode(line) {
            Some(entry) => entries.push(entry),
            None => bail!("{} line {}: not a journal entry: {line:?}", path.display(), number + 1),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_partial_last_line_is_dropped() {
        let entries = vec![
            Entry::CreateSent { buyer: 7, order: 1, amount: 100 },
            Entry::CreateAcked { buyer: 7, order: 1, id: 1 << 40 },
            Entry::ChangeSent { id: 1 << 40, change: Change::Refund(30) },
            Entry::ChangeAcked { id: 1 << 40 },
            Entry::CommitSent { partition: 3, offset: 99 },
            Entry::CommitAcked { partition: 3, offset: 99 },
            Entry::Consumed { partition: 3, from: 40, to: 99, count: 12, digest: u64::MAX - 1 },
            Entry::MoneySent { op: MoneyOp::Deposit { user: 5, amount: 70 }, request: "fund-1".into() },
            Entry::MoneySent { op: MoneyOp::Transfer { from: 5, to: 6, amount: 9 }, request: "t-1-0".into() },
            Entry::MoneyAcked { request: "t-1-0".into(), outcome: Outcome::Cancelled },
            Entry::Failure("bad\nthing".into()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut text: String = entries.iter().map(Entry::encode).collect();
        text.push_str("C 8 2");
        std::fs::write(&path, text).unwrap();
        let mut expected = entries;
        expected[10] = Entry::Failure("bad thing".into());
        assert_eq!(read(&path).unwrap(), expected);
        std::fs::write(&path, "C 8 two 3\n").unwrap();
        assert!(read(&path).is_err(), "a damaged complete line is an error, not skipped");
    }
}
