//! What the threads of a process are doing, read from `/proc`: for the report of a process that
//! stopped answering (the kill campaign's stuck child, a test binary past its deadline). A
//! hang that shows once in hundreds of runs is diagnosed from this or not at all.
//!
//! Per thread: its name, scheduler state, the kernel function it waits in, the system call it
//! is in (number and arguments) and its kernel stack; then every io_uring of the process with
//! its submission and completion heads and tails and the completions not yet reaped, which tell
//! a lost wake-up (a completion posted and not reaped) from a request the kernel never
//! completed. Nothing here stops or signals the process.

/// The threads and io_urings of process `pid` (see the module's text).
pub fn describe_threads(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(its threads are not readable)\n".into();
    };
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default().trim().to_string();
    for task in tasks.filter_map(Result::ok) {
        let path = task.path();
        out.push_str(&format!(
            "thread {} ({}) waits in {}; state {}; syscall {}\n{}\n",
            task.file_name().to_string_lossy(),
            read(path.join("comm")),
            read(path.join("wchan")),
            read(path.join("stat")).split(' ').nth(2).unwrap_or("?"),
            read(path.join("syscall")),
            read(path.join("stack")),
        ));
    }
    out.push_str(&rings(pid));
    out
}

/// The state of every io_uring of process `pid` (`/proc/PID/fdinfo`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_thread_of_this_process() {
        let (started, started_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let waiting = std::thread::Builder::new()
            .name("stall-probe".into())
            .spawn(move || {
                started.send(()).unwrap();
                let _ = stop_rx.recv();
            })
            .unwrap();
        started_rx.recv().unwrap();
        let report = describe_threads(std::process::id());
        stop.send(()).unwrap();
        waiting.join().unwrap();
        assert!(report.contains("(stall-probe) waits in "), "{report}");
        assert!(report.lines().filter(|line| line.starts_with("thread ")).count() >= 2, "{report}");
        assert_eq!(describe_threads(u32::MAX), "(its threads are not readable)\n");
    }
}
