//! What a child that stopped answering was doing, for the report of a stall: each thread's
//! name, its kernel wait point, system call and kernel stack, the state of its io_urings, and,
//! when `gdb` is installed, every thread's own stack. A hang that shows once in hundreds of
//! cycles is diagnosed from this or not at all.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The threads of process `pid` as `/proc` shows them (`tradeshard_engine::describe_threads`),
/// then gdb's backtraces if it can attach within half a minute (the process is stopped while
/// gdb holds it).
pub(super) fn describe(pid: u32) -> String {
    tradeshard_engine::describe_threads(pid) + &backtraces(pid)
}

fn backtraces(pid: u32) -> String {
    let gdb = Command::new("gdb")
        .args(["-batch", "-nx", "-p", &pid.to_string(), "-ex", "thread apply all bt 30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut gdb) = gdb else {
        return "(no gdb: no user stacks)\n".into();
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = gdb.try_wait() {
            let mut text = String::new();
            if let Some(mut stdout) = gdb.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
            }
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = gdb.kill();
    "(gdb did not finish within 30 s)\n".into()
}
