//! The CPU time the process spent over the timed phase, by group of threads: the engine's
//! executors, the load tool's own threads (its clients and consumers), and the rest (the
//! engine's helpers, the kernel's io_uring workers, the main thread). Read per thread from
//! `/proc/self/task/*/schedstat`.
//!
//! On a host whose speed changes from one hour to the next, CPU per operation moves with it
//! less than the rate does; and the client's share says how much of the machine the load
//! itself took from the engine it measures (they share the cores).

use std::collections::HashMap;

use serde::Serialize;

/// Threads named after the engine's executors (`tradeshard-<executor>`, a name glommio's
/// blocking threads of that executor share), and the load tool's own threads (`load-client`,
/// `load-client-<n>`, `load-consumer`).
const ENGINE_PREFIX: &str = "tradeshard-";
const CLIENT_PREFIX: &str = "load-";

/// Nanoseconds on a CPU so far, per thread id, with the thread's name.
pub(super) struct ThreadTimes(HashMap<u32, (String, u64)>);

/// CPU per operation over a phase, in microseconds, by group of threads (zero where `/proc`
/// could not be read, or no operation was counted).
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct CpuPerOp {
    pub(super) engine_cpu_us_per_op: f64,
    pub(super) client_cpu_us_per_op: f64,
    pub(super) other_cpu_us_per_op: f64,
}

impl ThreadTimes {
    /// This process's threads now (none where `/proc` cannot be read).
    pub(super) fn now() -> ThreadTimes {
        let mut threads = HashMap::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return ThreadTimes(threads) };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let on_cpu = std::fs::read_to_string(path.join("schedstat")).ok().and_then(|line| on_cpu_ns(&line));
            if let Some(on_cpu) = on_cpu {
                threads.insert(tid, (name.trim_end().to_string(), on_cpu));
            }
        }
        ThreadTimes(threads)
    }

    /// The CPU each group spent since `before`, per one of `ops` operations. A thread born
    /// since counts from zero; one gone since is not counted.
    pub(super) fn per_op_since(&self, before: &ThreadTimes, ops: u64) -> CpuPerOp {
        let (mut engine, mut client, mut other) = (0u64, 0u64, 0u64);
        for (tid, (name, on_cpu)) in &self.0 {
            let spent = on_cpu.saturating_sub(before.0.get(tid).map_or(0, |(_, ns)| *ns));
            match group(name) {
                Group::Engine => engine += spent,
                Group::Client => client += spent,
                Group::Other => other += spent,
            }
        }
        let per_op = |ns: u64| if ops == 0 { 0.0 } else { ns as f64 / 1e3 / ops as f64 };
        CpuPerOp {
            engine_cpu_us_per_op: per_op(engine),
            client_cpu_us_per_op: per_op(client),
            other_cpu_us_per_op: per_op(other),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Group {
    Engine,
    Client,
    Other,
}

/// An executor's thread is `tradeshard-` and its index; the engine's other threads
/// (`tradeshard-activities`, `tradeshard-kick`) are the rest.
fn group(name: &str) -> Group {
    match name.strip_prefix(ENGINE_PREFIX) {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => Group::Engine,
        _ if name.starts_with(CLIENT_PREFIX) => Group::Client,
        _ => Group::Other,
    }
}

/// The first field of a `schedstat` line: nanoseconds spent on a CPU.
fn on_cpu_ns(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_fall_in_their_groups() {
        assert_eq!(group("tradeshard-0-1"), Group::Engine);
        assert_eq!(group("tradeshard-12"), Group::Engine);
        assert_eq!(group("tradeshard-acti"), Group::Other);
        assert_eq!(group("tradeshard-kick"), Group::Other);
        assert_eq!(group("load-client"), Group::Client);
        assert_eq!(group("load-client-3"), Group::Client);
        assert_eq!(group("load-consumer"), Group::Client);
        assert_eq!(group("iou-wrk-4242"), Group::Other);
        assert_eq!(group("tradeshard"), Group::Other);
    }

    #[test]
    fn a_schedstat_line_gives_its_time_on_cpu() {
        assert_eq!(on_cpu_ns("270072150 155138758 66\n"), Some(270_072_150));
        assert_eq!(on_cpu_ns(""), None);
        assert_eq!(on_cpu_ns("x 1 2"), None);
    }

    #[test]
    fn time_spent_is_shared_out_per_operation_by_group() {
        let times = |threads: &[(u32, &str, u64)]| {
            ThreadTimes(threads.iter().map(|(tid, name, ns)| (*tid, (name.to_string(), *ns))).collect())
        };
        let before = times(&[(1, "tradeshard-0", 1_000), (2, "load-client", 500), (3, "iou-wrk-1", 7)]);
        // Thread 3 is gone, thread 4 was born; the engine spent 2 ms, the client 1 ms.
        let after = times(&[(1, "tradeshard-0", 2_001_000), (2, "load-client", 1_000_500), (4, "main", 300_000)]);
        let per_op = after.per_op_since(&before, 1_000);
        assert_eq!(per_op, CpuPerOp { engine_cpu_us_per_op: 2.0, client_cpu_us_per_op: 1.0, other_cpu_us_per_op: 0.3 });
        assert_eq!(after.per_op_since(&before, 0), CpuPerOp::default());
    }

    #[test]
    fn this_process_s_threads_are_read() {
        let now = ThreadTimes::now();
        // The test's own thread is one of them, and it has run.
        assert!(now.0.values().any(|(_, ns)| *ns > 0), "{:?}", now.0);
    }
}
