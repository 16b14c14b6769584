//! The clustered consumer groups of one engine: who is in each, and a generation that moves
//! on every join and leave, so that each member notices a change at its next call and takes
//! its new share (partition `p` goes to the `p % n`th member by join order).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Poll, Waker};

#[derive(Default)]
struct GroupState {
    /// Members in join order (member ids are increasing).
    members: BTreeSet<u64>,
    generation: u64,
    /// Members waiting for the next change (members with no partition, in a long poll), at
    /// most `WAITING_MAX`.
    waiting: Vec<Waker>,
}

/// Wakers a group keeps for its next change. A waiter whose poll ended on its timer leaves its
/// waker behind, and each new task brings another; the oldest go first. A waiter whose waker
/// went still wakes on its own timer.
const WAITING_MAX: usize = 256;

impl GroupState {
    fn changed(&mut self, generation: u64) {
        self.generation = generation;
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }
}

/// The clustered groups of one engine: who is in each, and a generation that moves on every
/// join and leave. A group its last member left is forgotten, so that the names of groups
/// once used do not pile up; generations are drawn from one counter for all groups, so a
/// group formed again under a name never repeats a generation of the one before.
#[derive(Default)]
pub(crate) struct Groups {
    groups: Mutex<HashMap<String, GroupState>>,
    next_member: AtomicU64,
    next_generation: AtomicU64,
}

impl Groups {
    pub(crate) fn join(&self, group: &str) -> u64 {
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        let mut groups = self.groups.lock().expect("groups lock");
        let state = groups.entry(group.to_string()).or_default();
        state.members.insert(member);
        state.changed(self.next_generation.fetch_add(1, Ordering::Relaxed) + 1);
        member
    }

    pub(crate) fn leave(&self, group: &str, member: u64) {
        let mut groups = self.groups.lock().expect("groups lock");
        if let Some(state) = groups.get_mut(group) {
            state.members.remove(&member);
            state.changed(self.next_generation.fetch_add(1, Ordering::Relaxed) + 1);
            if state.members.is_empty() {
                groups.remove(group);
            }
        }
    }

    /// Groups with a member.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.groups.lock().expect("groups lock").len()
    }

    /// The generation and the partitions `member` owns now.
    pub(crate) fn assignment(&self, group: &str, member: u64, partitions: u32) -> (u64, Vec<u32>) {
        let groups = self.groups.lock().expect("groups lock");
        let state = &groups[group];
        let rank = state.members.iter().position(|m| *m == member).expect("a member until it leaves");
        let n = state.members.len();
        (state.generation, (0..partitions).filter(|p| *p as usize % n == rank).collect())
    }

    /// Resolves once `group` has moved past `generation` (a member joined or left).
    pub(crate) async fn changed_since(&self, group: &str, generation: u64) {
        std::future::poll_fn(|cx| {
            let mut groups = self.groups.lock().expect("groups lock");
            let Some(state) = groups.get_mut(group) else { return Poll::Ready(()) };
            if state.generation != generation {
                return Poll::Ready(());
            }
            if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                if state.waiting.len() >= WAITING_MAX {
                    state.waiting.remove(0);
                }
                state.waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_its_last_member_left_is_forgotten_and_formed_again_with_new_generations() {
        let groups = Groups::default();
        let first = groups.join("settle");
        let second = groups.join("settle");
        let (before, owned) = groups.assignment("settle", second, 4);
        assert_eq!(owned, vec![1, 3]);
        groups.leave("settle", first);
        groups.leave("settle", second);
        assert_eq!(groups.len(), 0, "an empty group is not kept");
        let again = groups.join("settle");
        let (after, owned) = groups.assignment("settle", again, 4);
        assert_eq!(owned, vec![0, 1, 2, 3]);
        assert!(after > before, "generation {after} after {before}");
        for n in 0..100 {
            let member = groups.join(&format!("instance-{n}"));
            groups.leave(&format!("instance-{n}"), member);
        }
        assert_eq!(groups.len(), 1, "only the group with a member");
    }

    /// A waker that counts its wakes, one per test task.
    struct Counted(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counted {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn waits_that_ended_on_their_timers_leave_a_bounded_number_of_wakers() {
        let groups = Groups::default();
        let member = groups.join("settle");
        let (generation, _) = groups.assignment("settle", member, 1);
        let mut wakers = Vec::new();
        for _ in 0..3 * WAITING_MAX {
            let counted = std::sync::Arc::new(Counted(Default::default()));
            let waker = Waker::from(counted.clone());
            let mut wait = std::pin::pin!(groups.changed_since("settle", generation));
            // Polled once, then dropped: its timer won.
            let polled = std::future::Future::poll(wait.as_mut(), &mut std::task::Context::from_waker(&waker));
            assert!(polled.is_pending());
            wakers.push(counted);
        }
        let held = groups.groups.lock().unwrap()["settle"].waiting.len();
        assert_eq!(held, WAITING_MAX);
        groups.join("settle");
        let woken = wakers.iter().filter(|c| c.0.load(Ordering::SeqCst) > 0).count();
        assert_eq!(woken, WAITING_MAX, "the newest waiters are woken by the change");
        assert!(wakers.last().unwrap().0.load(Ordering::SeqCst) == 1);
    }
}
