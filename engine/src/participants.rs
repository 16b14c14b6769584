//! The embedder's own participants in flexible transactions: services that the activity
//! manager asks to try, confirm and cancel a branch, registered by id in
//! `Options::participants`.
//!
//! The contract is TCC's, and the participant keeps it in its own store: Try does every check
//! and reserves what the branch needs; Confirm uses only what Try reserved and is idempotent;
//! Cancel releases it and is idempotent; a Cancel that comes before its Try (an empty
//! rollback) must succeed and make the late Try fail (a fence). Try is called again when the
//! activity's request is retried before a decision was recorded, and must then answer as it
//! did the first time without reserving twice. Confirm or Cancel is called until one answers
//! with success: once in the caller's request, then at every pass of recovery
//! (`Options::activity_recovery_interval`), which is its backoff. A call that takes longer than
//! `Options::participant_timeout` counts as failed. The same bound holds every call to an
//! embedder's service, the checkers of half messages too (`within_embedder_timeout`).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use tradeshard_shard::BranchCall;

/// What a participant's call returns: success, or why not (a Try refused cancels the
/// activity; a Confirm or Cancel that fails is called again later).
pub type ParticipantFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A service of the embedder's taking part in activities.
pub trait Participant: Send + Sync + 'static {
    /// Tries, confirms or cancels branch `branch` of `activity`; `reference` is the embedder's
    /// own key of what the branch is about, as given to `EngineHandle::run_activity`.
    fn call(&self, call: BranchCall, activity: u128, branch: u16, reference: u64) -> ParticipantFuture<'_>;
}

/// The participants an engine can call, by id.
#[derive(Clone, Default)]
pub struct Participants {
    by_id: Arc<BTreeMap<u16, Arc<dyn Participant>>>,
}

impl Participants {
    /// These participants and `participant` under `id` (replacing one registered under it).
    pub fn with(self, id: u16, participant: impl Participant) -> Participants {
        let mut by_id = (*self.by_id).clone();
        by_id.insert(id, Arc::new(participant));
        Participants { by_id: Arc::new(by_id) }
    }

    pub(crate) fn get(&self, id: u16) -> Option<&Arc<dyn Participant>> {
        self.by_id.get(&id)
    }
}

impl fmt::Debug for Participants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_id.keys()).finish()
    }
}

impl crate::handle::EngineHandle {
    /// `call`'s outcome, or `late` once `Options::participant_timeout` passed: a service of the
    /// embedder's (a participant, a checker) that never answers must not hold an activity,
    /// recovery or a close forever. The timer runs on an executor (the caller may be on any
    /// thread).
    pub(crate) async fn within_embedder_timeout<T>(
        &self,
        call: impl Future<Output = T>,
        late: T,
    ) -> crate::error::Result<T> {
        let timeout = self.submit_waiting(0, crate::ops::Sleep(self.inner.participant_timeout)).await?;
        Ok(futures_lite::future::or(call, async move {
            let _ = timeout.await;
            late
        })
        .await)
    }
}
