//! The check-back of half messages: the embedder registers a checker per topic
//! (`Options::checkers`), and the engine asks it about every half message left unresolved,
//! first `Options::half_check_delay` after the prepare, then every
//! `Options::half_check_interval`, up to `Options::half_checks_max` checks, after which the
//! half message is rolled back (`RollbackReason::ChecksExhausted`). A check that answers
//! commit or roll back resolves the half message as its producer would have; one that does
//! not know, fails, or takes longer than `Options::participant_timeout` counts as a check made
//! (recorded durably, so a restart neither forgets nor repeats the count). A topic with no
//! checker counts every check as unanswered.
//!
//! The checks run on the engine's recovery thread (`activities.rs`), at its interval, and only
//! send requests through a handle.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tradeshard_shard::{HalfEntry, RollbackReason};

use crate::error::{Error, Result};
use crate::handle::EngineHandle;
use crate::messages::HalfMessage;
use crate::transfers::now_ms;

/// What a checker says of a half message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckAnswer {
    /// The producer's transaction committed: deliver the message.
    Commit,
    /// It rolled back: never deliver the message.
    Rollback,
    /// Not known yet: ask again later.
    Unknown,
}

/// What a checker's call returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = CheckAnswer> + Send + 'a>>;

/// The embedder's answer to "is this half message valid?", for one topic.
pub trait MessageChecker: Send + Sync + 'static {
    fn check(&self, message: &HalfMessage) -> CheckFuture<'_>;
}

/// The checkers an engine asks, by topic.
#[derive(Clone, Default)]
pub struct MessageCheckers {
    by_topic: Arc<BTreeMap<String, Arc<dyn MessageChecker>>>,
}

impl MessageCheckers {
    /// These checkers and `checker` for `topic` (replacing one registered for it).
    pub fn with(self, topic: impl Into<String>, checker: impl MessageChecker) -> MessageCheckers {
        let mut by_topic = (*self.by_topic).clone();
        by_topic.insert(topic.into(), Arc::new(checker));
        MessageCheckers { by_topic: Arc::new(by_topic) }
    }

    fn get(&self, topic: &str) -> Option<&Arc<dyn MessageChecker>> {
        self.by_topic.get(topic)
    }
}

impl fmt::Debug for MessageCheckers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_topic.keys()).finish()
    }
}

/// When half messages are checked, and how often at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HalfChecks {
    pub delay: Duration,
    pub interval: Duration,
    pub max: u8,
}

impl HalfChecks {
    /// Whether `entry` is due for a check at `now`.
    pub(crate) fn due(&self, entry: &HalfEntry, now: u64) -> bool {
        let since = match entry.checks {
            0 => entry.prepared_ms + self.delay.as_millis() as u64,
            _ => entry.checked_ms + self.interval.as_millis() as u64,
        };
        now >= since
    }
}

/// Half messages checked at once within a pass.
const CHECKS_AT_ONCE: usize = 256;

/// Checks every half message due, `CHECKS_AT_ONCE` at a time; one that fails does not hold up
/// the others. Returns how many were resolved; `Closed` once the engine closes.
pub(crate) async fn check_once(handle: &EngineHandle) -> Result<usize> {
    // Chosen on the executors: only the due ones cross, not every body held.
    let due = handle.halves_due(now_ms()).await?;
    let mut resolved = 0;
    for chunk in due.chunks(CHECKS_AT_ONCE) {
        for outcome in tradeshard_shard::join_all(chunk.iter().map(|half| check_one(handle, half))).await {
            match outcome {
                Ok(done) => resolved += usize::from(done),
                Err(Error::Closed) => return Err(Error::Closed),
                // Resolved meanwhile by its producer, a full disk...: met again at the next
                // pass if still unresolved.
                Err(_) => {}
            }
        }
    }
    Ok(resolved)
}

/// Asks about one half message and records the answer; true when it is resolved.
async fn check_one(handle: &EngineHandle, half: &HalfMessage) -> Result<bool> {
    let policy = handle.inner.half_checks;
    let answer = match handle.inner.checkers.get(&half.entry.body.topic) {
        Some(checker) => handle.within_embedder_timeout(checker.check(half), CheckAnswer::Unknown).await?,
        None => CheckAnswer::Unknown,
    };
    let checks = half.entry.checks.saturating_add(1);
    let resolving = answer != CheckAnswer::Unknown || checks >= policy.max;
    match answer {
        CheckAnswer::Commit => handle.resolve_checked(half.id, true, RollbackReason::Checker).await?,
        CheckAnswer::Rollback => handle.resolve_checked(half.id, false, RollbackReason::Checker).await?,
        CheckAnswer::Unknown if resolving => {
            handle.resolve_checked(half.id, false, RollbackReason::ChecksExhausted).await?
        }
        CheckAnswer::Unknown => handle.note_check(half.id, checks).await?,
    }
    Ok(resolving)
}
