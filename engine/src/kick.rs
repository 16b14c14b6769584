//! Waking an executor that sleeps while it has work to do.
//!
//! An executor with nothing to run parks in `io_uring_enter`, waiting for one completion on
//! its main ring (glommio links its other rings to that one). Two ways were seen to leave it
//! asleep there with work waiting:
//!
//! - **A completion posted and not reaped.** On a loaded machine the kill -9 campaign caught
//!   executors asleep for minutes with the completion they waited for already in the ring
//!   (`/proc/PID/fdinfo` of the ring: `CqTail` one past `CqHead`; the campaign writes what
//!   each thread of a stuck child was doing, `tools/src/stress/stuck.rs`).
//! - **A task woken and never run.** glommio 0.9's loop ends a turn without running any task
//!   queue when its preemption timer has already fired as the turn begins (a thread
//!   descheduled for longer than the preemption interval), takes that for "nothing to run",
//!   and parks. Its sleep arms a timeout only for timers still waiting, so a task woken by its
//!   timer and not yet run (the beat below, among others) sleeps until some other completion
//!   comes, which in an open, with every other task waiting on it, may be never. It happens
//!   at the executor's very first turn too, before its first task (the engine's) has run and
//!   so before any beat exists: a test of an open on four executors on two busy cores stood
//!   still so, its executor asleep after three time slices of its life.
//!
//! So each executor beats (a task of its own bumps a counter every [`HEARTBEAT`]), and one
//! thread per engine looks at the beats. The executor's thread is known to its beat from
//! before the executor's loop first turns (the engine starts the thread itself and records it
//! once glommio has made the executor on it), so a beat that never started stands still too.
//! When an executor's beat stood still for [`STALL`] while it was not parked on purpose
//! (waiting for the other executors at open), the thread wakes the beat task from outside,
//! which writes the executor's eventfd (glommio's path for a wake from another thread) and so
//! ends any sleep or the next one, and sends the executor's thread a signal, whose `EINTR` ends
//! the wait even if that wake were lost. Either way glommio reaps every ring and runs its task
//! queues again. The handler does nothing and other system calls restart (`SA_RESTART`), so a
//! kick that finds the executor merely busy (a long turn) costs nothing. Kicks are counted
//! (`EngineStats::executor_kicks`). The handler is installed once per process, and not at all
//! if the embedder has one for the same signal (then only the wake is sent, which cannot reach
//! an executor whose first task has not run).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often an executor's beat task bumps its counter.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(100);
/// How long a beat may stand still before its executor is kicked: long enough that a busy
/// executor is rarely kicked, short enough that an open is not held long by a lost wake-up.
pub(crate) const STALL: Duration = Duration::from_millis(500);
/// How often the kicking thread looks at the beats.
const CHECK: Duration = Duration::from_millis(100);

/// Kicks sent by every engine of this process, also while an engine is still opening (when
/// it has no stats to ask yet).
static KICKS_IN_PROCESS: AtomicU64 = AtomicU64::new(0);

/// Kicks sent by every engine of this process so far (for a report of a process that stopped
/// answering: whether its executors were signalled).
pub fn kicks_in_process() -> u64 {
    KICKS_IN_PROCESS.load(Ordering::Relaxed)
}

/// The signal that wakes an executor: a real-time signal well above the ones the C library
/// keeps for itself.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 5
}

extern "C" fn ignore(_: libc::c_int) {}

/// Installs the handler once; false if the embedder handles the signal itself.
fn handler_installed() -> bool {
    static INSTALL: Once = Once::new();
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    INSTALL.call_once(|| {
        // SAFETY: sigaction with valid pointers; the handler is async-signal-safe (it does
        // nothing).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(kick_signal(), std::ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL {
                return;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            INSTALLED.store(libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) == 0, Ordering::Relaxed);
        }
    });
    INSTALLED.load(Ordering::Relaxed)
}

/// One executor's beat, shared by the executor and the kicking thread.
#[derive(Default)]
pub(crate) struct Beat {
    /// The executor's thread (`pthread_t`), once it runs.
    thread: Mutex<Option<libc::pthread_t>>,
    /// The beat task's waker, while the executor runs.
    waker: Mutex<Option<Waker>>,
    beats: AtomicU64,
    /// Blocked on purpose (a channel at open), not to be kicked.
    parked: AtomicBool,
    kicks: AtomicU64,
}

impl Beat {
    /// On the executor's thread, once its executor is made and before it runs: records the
    /// thread, so that a kick reaches it even before the executor's first task runs (glommio's
    /// first turn may park with that task still waiting, the second case of the module text).
    /// The thread keeps the guard until it ends: its drop forgets the thread, so that no signal
    /// is sent to it once it may be gone.
    pub(crate) fn on_this_thread(self: &Arc<Self>) -> ThreadGuard {
        // SAFETY: pthread_self has no preconditions.
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(unsafe { libc::pthread_self() });
        ThreadGuard(self.clone())
    }

    /// On the executor, first thing: starts the beat task. The executor keeps the guard until
    /// it returns: its drop, still on the executor, forgets the task's waker.
    pub(crate) fn start_on_executor(self: &Arc<Self>) -> BeatGuard {
        let beat = self.clone();
        glommio::spawn_local(async move {
            loop {
                let mut sleep = std::pin::pin!(glommio::timer::sleep(HEARTBEAT));
                std::future::poll_fn(|cx| {
                    let mut waker = beat.waker.lock().unwrap_or_else(|p| p.into_inner());
                    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *waker = Some(cx.waker().clone());
                    }
                    drop(waker);
                    sleep.as_mut().poll(cx)
                })
                .await;
                beat.beats.fetch_add(1, Ordering::Relaxed);
            }
        })
        .detach();
        BeatGuard(self.clone())
    }

    /// Runs `wait`, a blocking wait of the executor's thread, with the kicks held off.
    pub(crate) fn parked_while<T>(&self, wait: impl FnOnce() -> T) -> T {
        self.parked.store(true, Ordering::Relaxed);
        let out = wait();
        self.parked.store(false, Ordering::Relaxed);
        out
    }

    /// Wakes the beat task from outside and, with `signal`, signals the executor's thread;
    /// whether either was sent.
    fn kick(&self, signal: bool) -> bool {
        // Under the locks: the executor forgets its waker and thread under them before it ends.
        let woken = match self.waker.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(waker) => {
                waker.wake_by_ref();
                true
            }
            None => false,
        };
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: an executor's thread that has not dropped its guard, so still running.
        let signalled =
            signal && thread.is_some_and(|thread| unsafe { libc::pthread_kill(thread, kick_signal()) } == 0);
        let kicked = woken || signalled;
        if kicked {
            self.kicks.fetch_add(1, Ordering::Relaxed);
        }
        kicked
    }

    /// Times this executor was kicked.
    pub(crate) fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }
}

/// Held by an executor's thread (see [`Beat::on_this_thread`]).
pub(crate) struct ThreadGuard(Arc<Beat>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        *self.0.thread.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Held by a running executor (see [`Beat::start_on_executor`]).
pub(crate) struct BeatGuard(Arc<Beat>);

impl Drop for BeatGuard {
    fn drop(&mut self) {
        // Dropped here, on the executor, before its task is gone.
        self.0.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The thread that watches the beats of one engine's executors (module text).
pub(crate) struct Kicker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Kicker {
    /// Starts watching `beats` (kicking with the wake alone where the signal cannot be used).
    pub(crate) fn start(beats: Vec<Arc<Beat>>) -> Kicker {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = handler_installed();
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tradeshard-kick".into())
            .spawn(move || watch(&beats, &stopping, signal))
            .expect("a thread to watch the executors");
        Kicker { stop, thread: Some(thread) }
    }

    /// Stops the thread.
    pub(crate) fn stop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(beats: &[Arc<Beat>], stop: &(Mutex<bool>, Condvar), signal: bool) {
    let mut seen: Vec<(u64, Duration)> = vec![(0, Duration::ZERO); beats.len()];
    let mut stopped = stop.0.lock().unwrap_or_else(|p| p.into_inner());
    while !*stopped {
        stopped = stop.1.wait_timeout(stopped, CHECK).unwrap_or_else(|p| p.into_inner()).0;
        for (beat, (last, still)) in beats.iter().zip(&mut seen) {
            let now = beat.beats.load(Ordering::Relaxed);
            if now != *last || beat.parked.load(Ordering::Relaxed) {
                (*last, *still) = (now, Duration::ZERO);
                continue;
            }
            *still += CHECK;
            if *still < STALL {
                continue;
            }
            *still = Duration::ZERO;
            if beat.kick(signal) {
                KICKS_IN_PROCESS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    /// Runs `stuck` on an executor whose beat a kicker watches, after its first beats; returns
    /// whether it ended within `limit`, how long it took, and the kicks. The thread is made
    /// as the engine makes its executors' (`executor.rs`).
    fn on_watched_executor(stuck: fn(&Beat), limit: Duration) -> (bool, Duration, u64) {
        let beat = Arc::new(Beat::default());
        let mut kicker = Kicker::start(vec![beat.clone()]);
        let (ended, ended_rx) = mpsc::channel();
        let on_executor = beat.clone();
        let executor = std::thread::spawn(move || {
            let executor = LocalExecutorBuilder::new(Placement::Unbound).make().unwrap();
            let _known = on_executor.on_this_thread();
            executor.run(async move {
                let _beating = on_executor.start_on_executor();
                glommio::timer::sleep(HEARTBEAT * 3).await;
                let started = Instant::now();
                stuck(&on_executor);
                let _ = ended.send(started.elapsed());
            })
        });
        let took = ended_rx.recv_timeout(limit);
        // Stopped before the executor's teardown is waited for: a teardown slower than `STALL`
        // on a loaded machine would otherwise read as a second stall.
        kicker.stop();
        if took.is_ok() {
            executor.join().unwrap();
        }
        (took.is_ok(), took.unwrap_or(limit), beat.kicks())
    }

    #[test]
    fn a_thread_whose_executor_never_ran_a_task_is_kicked() {
        // glommio's first turn may park before the executor's first task ran, so before any
        // beat task exists: the thread alone is known, and the signal alone must end the wait.
        assert!(handler_installed(), "no one else handles the signal in the tests");
        let beat = Arc::new(Beat::default());
        let mut kicker = Kicker::start(vec![beat.clone()]);
        let (ended, ended_rx) = mpsc::channel();
        let on_thread = beat.clone();
        let thread = std::thread::spawn(move || {
            let _known = on_thread.on_this_thread();
            let started = Instant::now();
            // SAFETY: pause has no preconditions; it returns once a handled signal arrives.
            let _ = unsafe { libc::pause() };
            let _ = ended.send(started.elapsed());
        });
        let took = ended_rx.recv_timeout(STALL * 5);
        kicker.stop();
        assert!(took.is_ok(), "the thread was signalled with no beat task to wake");
        thread.join().unwrap();
        assert!(beat.waker.lock().unwrap().is_none(), "no beat task ever ran");
        assert_eq!(beat.kicks(), 1);
        assert!(beat.thread.lock().unwrap().is_none(), "the thread is forgotten once it ends");
    }

    #[test]
    fn an_executor_in_a_wait_that_only_a_signal_ends_is_kicked_out_of_it() {
        assert!(handler_installed(), "no one else handles the signal in the tests");
        // SAFETY: pause has no preconditions; it returns once a handled signal arrives.
        let (ended, took, kicks) = on_watched_executor(
            |_| unsafe {
                let _ = libc::pause();
            },
            STALL * 5,
        );
        assert!(ended, "the stuck executor was woken");
        assert!(took >= STALL - CHECK * 2, "not before its beat stood still for a while: {took:?}");
        assert_eq!(kicks, 1);
    }

    /// Counts its wakes.
    struct Counted(AtomicU64);

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_stalled_beat_wakes_its_task_from_outside_without_a_signal() {
        // No thread to signal: a wake from outside is all the kick can be, and it is sent.
        let beat = Arc::new(Beat::default());
        let wakes = Arc::new(Counted(AtomicU64::new(0)));
        *beat.waker.lock().unwrap() = Some(Waker::from(wakes.clone()));
        let mut kicker = Kicker::start(vec![beat.clone()]);
        let started = Instant::now();
        while wakes.0.load(Ordering::SeqCst) == 0 && started.elapsed() < STALL * 10 {
            std::thread::sleep(CHECK);
        }
        kicker.stop();
        let took = started.elapsed();
        assert!(wakes.0.load(Ordering::SeqCst) >= 1, "the beat task was woken");
        assert!(took >= STALL, "not before its beat stood still for {STALL:?}: {took:?}");
        assert!(beat.kicks() >= 1);
        // Once the executor's guard has dropped the waker, nothing is woken any more.
        beat.waker.lock().unwrap().take();
        let before = wakes.0.load(Ordering::SeqCst);
        let mut kicker = Kicker::start(vec![beat.clone()]);
        std::thread::sleep(STALL * 3);
        kicker.stop();
        assert_eq!(wakes.0.load(Ordering::SeqCst), before);
    }

    #[test]
    fn an_executor_parked_on_purpose_is_left_alone() {
        let (ended, _, kicks) =
            on_watched_executor(|beat| beat.parked_while(|| std::thread::sleep(STALL * 2)), STALL * 5);
        assert!(ended);
        assert_eq!(kicks, 0, "a wait on purpose is not kicked");
    }
}
