//! The `stats` text protocol, as memcached has it: a client sends `stats` and reads one
//! `STAT <name> <value>` line per number, then `END`; `quit` closes. Totals are named plainly,
//! a shard's numbers `shard.<n>.<name>`, a group's lag `group.<name>.<partition>.consumer_lag`.

use crate::conn::Conn;
use crate::snapshot::{self, Scope};

/// Longest command line read.
const LINE_MAX: usize = 1024;

pub(crate) async fn serve(conn: &mut Conn) {
    let mut line = Vec::new();
    while conn.read_line(&mut line, LINE_MAX).await.is_ok() {
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
