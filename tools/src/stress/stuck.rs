//! What a child that stopped answering was doing, for the report of a stall: each thread's
//! name, its kernel wait point and kernel stack, the state of its io_urings, and, when `gdb`
//! is installed, every thread's own stack. A hang that shows once in hundreds of cycles is
//! diagnosed from this or not at all.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The threads of process `pid` as `/proc` shows them, then gdb's backtraces if it can attach
/// within half a minute (the process is stopped while gdb holds it).
pub(super) fn describe(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(its threads are not readable)".into();
    };
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default().trim().to_string();
    for task in tasks.filter_map(Result::ok) {
        let path = task.path();
        out.push_str(&format!(
            "thread {} ({}) waits in {}; state {}\n{}\n",
            task.file_name().to_string_lossy(),
            read(path.join("comm")),
            read(path.join("wchan")),
            read(path.join("stat")).split(' ').nth(2).unwrap_or("?"),
            read(path.join("stack")),
        ));
    }
    out.push_str(&rings(pid));
    out.push_str(&backtraces(pid));
    out
}

/// The state of every io_uring of process `pid` (`/proc/PID/fdinfo`: submission and
/// completion heads and tails, the completions not yet reaped): a completion the kernel posted
/// and nobody reaped tells a lost wake-up from a request the kernel never completed.
fn rings(pid: u32) -> String {
    let mut out = String::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return "(its descriptors are not readable)\n".into();
    };
    for fd in fds.filter_map(Result::ok) {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy().contains("io_uring") {
            let name = fd.file_name().to_string_lossy().to_string();
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{name}")).unwrap_or_default();
            out.push_str(&format!("io_uring fd {name}:\n{info}\n"));
        }
    }
    out
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
