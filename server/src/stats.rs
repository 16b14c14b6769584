//! The `stats` text protocol, as memcached has it: a client sends `stats` and reads one
//! `STAT <name> <value>` line per number, then `END`; `quit` closes. Totals are named plainly,
//! a shard's numbers `shard.<n>.<name>`, a group's lag `group.<name>.<partition>.consumer_lag`
//! (a group's name is printable ASCII without spaces but may hold dots: read the partition and
//! the number's name from the right). A line past 1,024 bytes is answered `CLIENT_ERROR`, and
//! the connection closes.

use crate::conn::{Conn, ReadEnd};
use crate::snapshot::{self, Scope};

/// Longest command line read.
const LINE_MAX: usize = 1024;

pub(crate) async fn serve(conn: &mut Conn) {
    let mut line = Vec::new();
    loop {
        match conn.read_line(&mut line, LINE_MAX).await {
            Ok(()) => {}
            // memcached's answer to a line it will not read; the rest of it is not read
            // either, so the connection ends.
            Err(ReadEnd::TooLong) => {
                if conn.write_all(b"CLIENT_ERROR line too long\r\n").await.is_ok() {
                    conn.linger().await;
                }
                return;
            }
            Err(ReadEnd::Closed) => return,
        }
        let command = String::from_utf8_lossy(&line);
        let answer = match command.trim() {
            "stats" => match snapshot::take(&conn.shared).await {
                Ok(snapshot) => render(&snapshot.samples),
                Err(error) => format!("SERVER_ERROR {error}\r\n"),
            },
            "quit" => return,
            "" => continue,
            _ => "ERROR\r\n".to_string(),
        };
        if conn.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn render(samples: &[snapshot::Sample]) -> String {
    let mut out = String::new();
    for sample in samples {
        let value = if sample.value.fract() == 0.0 && sample.value.abs() < 1e15 {
            format!("{}", sample.value as i64)
        } else {
            format!("{:.3}", sample.value)
        };
        let name = match &sample.scope {
            Scope::Total => sample.name.to_string(),
            Scope::Shard(shard) => format!("shard.{shard}.{}", sample.name),
            Scope::Group(group, partition) => format!("group.{group}.{partition}.{}", sample.name),
        };
        out.push_str(&format!("STAT {name} {value}\r\n"));
    }
    out.push_str("END\r\n");
    out
}
