//! The group coordinator of the Kafka protocol (the classic one: JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup), as a state machine over plain data; `group_api.rs` drives it.
//!
//! A group's members are those of this server's connections; assignments are computed by the
//! leader client, as in Kafka. States, as Kafka's: `Empty` → a join → `PreparingRebalance`
//! (until every known member has joined again, or the rebalance timeout passes and the
//! stragglers are removed) → `CompletingRebalance` (a new generation: waiting for the
//! leader's assignments) → `Stable`. A member silent for its session timeout is removed, and
//! so starts a rebalance of the others.
//!
//! Only membership lives here, in memory: offsets are the engine's, durable. A restart
//! forgets the members, whose next heartbeat is told `UNKNOWN_MEMBER_ID`, and they join again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tradeshard_engine::reply::{self, Reply, ReplyFuture};

/// Most groups coordinated at once, and members per group: a join past them is refused.
pub(crate) const GROUPS_MAX: usize = 10_000;
/// New groups between two sweeps of every group's clock ([`Coordinator::sweep`]).
const SWEEP_EVERY_NEW_GROUPS: usize = 256;
pub(crate) const MEMBERS_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

/// What a join is answered.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub generation: i32,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata for the chosen protocol: for the leader only.
    pub members: Vec<(String, Bytes)>,
}

pub(crate) type JoinAnswer = Result<Joined, ResponseError>;
pub(crate) type SyncAnswer = Result<Bytes, ResponseError>;

struct Member {
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    join: Option<Reply<JoinAnswer>>,
    sync: Option<Reply<SyncAnswer>>,
    assignment: Bytes,
}

pub(crate) struct Group {
    pub state: State,
    pub generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Instant,
}

impl Group {
    fn new(now: Instant) -> Group {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            rebalance_deadline: now,
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        let timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
        if self.state != State::PreparingRebalance {
            self.rebalance_deadline = now + timeout;
        }
        self.state = State::PreparingRebalance;
        // Syncs waiting for a generation that will not be are told to join again.
        for member in self.members.values_mut() {
            if let Some(sync) = member.sync.take() {
                sync.send(Err(ResponseError::RebalanceInProgress));
            }
        }
    }

    fn remove(&mut self, member_id: &str, now: Instant) {
        if let Some(mut member) = self.members.remove(member_id) {
            if let Some(join) = member.join.take() {
                join.send(Err(ResponseError::UnknownMemberId));
            }
            if let Some(sync) = member.sync.take() {
                sync.send(Err(ResponseError::UnknownMemberId));
            }
        }
        if self.leader == member_id {
            self.leader.clear();
        }
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol_type.clear();
        } else {
            self.prepare_rebalance(now);
        }
    }

    /// Removes members silent past their session timeout (members waiting in a join are not
    /// silent), and completes a rebalance that can be completed.
    fn tick(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join.is_none() && now.duration_since(m.last_seen) > m.session_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id, now);
        }
        if self.state == State::PreparingRebalance {
            let all_joined = self.members.values().all(|m| m.join.is_some());
            if all_joined || now >= self.rebalance_deadline {
                self.complete_join(now);
            }
        }
    }

    fn complete_join(&mut self, now: Instant) {
        let stragglers: Vec<String> =
            self.members.iter().filter(|(_, m)| m.join.is_none()).map(|(id, _)| id.clone()).collect();
        for id in stragglers {
            self.members.remove(&id);
            if self.leader == id {
                self.leader.clear();
            }
        }
        if self.members.is_empty() {
            self.state = State::Empty;
            return;
        }
        // The protocol: the first of the leader's (or first member's) that every member has.
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        let leader_protocols: Vec<String> =
            self.members[&self.leader].protocols.iter().map(|(n, _)| n.clone()).collect();
        let protocol = leader_protocols
            .into_iter()
            .find(|name| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name)));
        let Some(protocol) = protocol else {
            // No protocol in common: every join waiting is refused.
            for member in self.members.values_mut() {
                if let Some(join) = member.join.take() {
                    join.send(Err(ResponseError::InconsistentGroupProtocol));
                }
            }
            self.members.clear();
            self.state = State::Empty;
            return;
        };
        self.protocol = protocol;
        self.generation += 1;
        self.state = State::CompletingRebalance;
        let all: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let metadata = m.protocols.iter().find(|(n, _)| *n == self.protocol).map(|(_, b)| b.clone());
                (id.clone(), metadata.unwrap_or_default())
            })
            .collect();
        for (id, member) in self.members.iter_mut() {
            member.last_seen = now;
            member.assignment = Bytes::new();
            if let Some(join) = member.join.take() {
                join.send(Ok(Joined {
                    generation: self.generation,
                    protocol: self.protocol.clone(),
                    leader: self.leader.clone(),
                    member_id: id.clone(),
                    members: if *id == self.leader { all.clone() } else { Vec::new() },
                }));
            }
        }
    }
}

/// A join's request, as the coordinator needs it.
pub(crate) struct JoinRequest {
    pub member_id: String,
    pub client_id: String,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
}

/// Every group coordinated by this server.
pub(crate) struct Coordinator {
    groups: BTreeMap<String, Group>,
    next_member: u64,
    new_groups_since_sweep: usize,
    /// Part of every member id this server hands out, different at each start, so that a
    /// client that kept its id across a restart is never taken for another's.
    incarnation: u64,
}

impl Default for Coordinator {
    fn default() -> Coordinator {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let incarnation = nanos as u64 ^ u64::from(std::process::id()).rotate_left(40);
        Coordinator { groups: BTreeMap::new(), next_member: 0, incarnation, new_groups_since_sweep: 0 }
    }
}

impl Coordinator {
    /// Moves every group's clock, forgetting those left without members: at the limit of
    /// groups and every `SWEEP_EVERY_NEW_GROUPS` new ones, so that groups whose clients all
    /// went away neither hold the limit nor their members' data.
    fn sweep(&mut self, now: Instant) {
        for g in self.groups.values_mut() {
            g.tick(now);
        }
        self.groups.retain(|_, g| !g.members.is_empty());
    }

    /// Forgets `group` once it has no member (its offsets are the engine's, durable).
    fn forget_if_empty(&mut self, group: &str) {
        if self.groups.get(group).is_some_and(|g| g.members.is_empty()) {
            self.groups.remove(group);
        }
    }

    #[cfg(test)]
    pub(crate) fn group(&self, group: &str) -> Option<&Group> {
        self.groups.get(group)
    }

    /// Completes what time allows in `group` (expiries, rebalances past their deadline).
    pub(crate) fn tick(&mut self, group: &str, now: Instant) {
        if let Some(g) = self.groups.get_mut(group) {
            g.tick(now);
        }
        self.forget_if_empty(group);
    }

    pub(crate) fn join(
        &mut self,
        group: &str,
        request: JoinRequest,
        now: Instant,
    ) -> Result<ReplyFuture<JoinAnswer>, ResponseError> {
        if request.protocols.is_empty() || request.protocol_type.is_empty() {
            return Err(ResponseError::InconsistentGroupProtocol);
        }
        // Checked before the group is made, so that a refused join leaves nothing behind. New
        // groups also sweep now and then, so that groups whose members all stopped calling go
        // in time below the limit too, not only at it.
        if !self.groups.contains_key(group) {
            self.new_groups_since_sweep += 1;
            if self.groups.len() >= GROUPS_MAX || self.new_groups_since_sweep >= SWEEP_EVERY_NEW_GROUPS {
                self.new_groups_since_sweep = 0;
                self.sweep(now);
            }
        }
        let groups = self.groups.len();
        let refusal = match self.groups.get_mut(group) {
            Some(g) => {
                g.tick(now);
                let others = || g.members.iter().filter(|(id, _)| **id != request.member_id);
                let shared = request
                    .protocols
                    .iter()
                    .any(|(name, _)| others().all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name)));
                if others().next().is_some() && (g.protocol_type != request.protocol_type || !shared) {
                    Some(ResponseError::InconsistentGroupProtocol)
                } else if !request.member_id.is_empty() && !g.members.contains_key(&request.member_id) {
                    Some(ResponseError::UnknownMemberId)
                } else if request.member_id.is_empty() && g.members.len() >= MEMBERS_MAX {
                    Some(ResponseError::GroupMaxSizeReached)
                } else {
                    None
                }
            }
            None if !request.member_id.is_empty() => Some(ResponseError::UnknownMemberId),
            None if groups >= GROUPS_MAX => Some(ResponseError::CoordinatorNotAvailable),
            None => None,
        };
        if let Some(refusal) = refusal {
            // The tick above may have emptied it.
            self.forget_if_empty(group);
            return Err(refusal);
        }
        let member_id = if request.member_id.is_empty() {
            self.next_member += 1;
            format!("{}-{:x}-{}", request.client_id, self.incarnation, self.next_member)
        } else {
            request.member_id
        };
        let g = self.groups.entry(group.to_string()).or_insert_with(|| Group::new(now));
        let (reply, answer) = reply::channel();
        let member = g.members.entry(member_id).or_insert_with(|| Member {
            protocols: Vec::new(),
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout,
            last_seen: now,
            join: None,
            sync: None,
            assignment: Bytes::new(),
        });
        member.protocols = request.protocols;
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.last_seen = now;
        if let Some(earlier) = member.join.replace(reply) {
            earlier.send(Err(ResponseError::RebalanceInProgress));
        }
        g.protocol_type = request.protocol_type;
        g.prepare_rebalance(now);
        g.tick(now);
        Ok(answer)
    }

    pub(crate) fn sync(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Result<ReplyFuture<SyncAnswer>, ResponseError> {
        let g = self.groups.get_mut(group).ok_or(ResponseError::UnknownMemberId)?;
        g.tick(now);
        let Some(member) = g.members.get_mut(member_id) else { return Err(ResponseError::UnknownMemberId) };
        if generation != g.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        member.last_seen = now;
        let (reply, answer) = reply::channel();
        match g.state {
            State::Empty | State::PreparingRebalance => return Err(ResponseError::RebalanceInProgress),
            State::Stable => reply.send(Ok(member.assignment.clone())),
            State::CompletingRebalance => {
                if let Some(earlier) = member.sync.replace(reply) {
                    earlier.send(Err(ResponseError::RebalanceInProgress));
                }
                if member_id == g.leader {
                    let mut assignments: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for (id, member) in g.members.iter_mut() {
                        member.assignment = assignments.remove(id).unwrap_or_default();
                        if let Some(sync) = member.sync.take() {
                            sync.send(Ok(member.assignment.clone()));
                        }
                    }
                    g.state = State::Stable;
                }
            }
        }
        Ok(answer)
    }

    /// Finds `member_id` of `group` in `generation` (seen now) and answers the group's state.
    fn member_in_generation(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        now: Instant,
    ) -> Result<State, ResponseError> {
        let g = self.groups.get_mut(group).ok_or(ResponseError::UnknownMemberId)?;
        g.tick(now);
        let Some(member) = g.members.get_mut(member_id) else { return Err(ResponseError::UnknownMemberId) };
        member.last_seen = now;
        if generation != g.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(g.state)
    }

    pub(crate) fn heartbeat(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        now: Instant,
    ) -> Result<(), ResponseError> {
        match self.member_in_generation(group, generation, member_id, now)? {
            State::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    pub(crate) fn leave(&mut self, group: &str, member_id: &str, now: Instant) -> Result<(), ResponseError> {
        let g = self.groups.get_mut(group).ok_or(ResponseError::UnknownMemberId)?;
        if !g.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        g.remove(member_id, now);
        g.tick(now);
        self.forget_if_empty(group);
        Ok(())
    }

    /// Whether a commit of `member_id` in `generation` may go on: a commit from outside the
    /// group protocol (generation -1, no member) always may.
    pub(crate) fn may_commit(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        now: Instant,
    ) -> Result<(), ResponseError> {
        if generation < 0 && member_id.is_empty() {
            return Ok(());
        }
        match self.member_in_generation(group, generation, member_id, now)? {
            // A member may still commit what it consumed while the group prepares a rebalance
            // (the commit as partitions are revoked); not once new assignments are being made.
            State::CompletingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_request(member_id: &str) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            client_id: "c".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
        }
    }

    fn take<T>(mut answer: ReplyFuture<T>) -> Option<T> {
        answer.try_take()
    }

    #[test]
    fn groups_whose_members_stopped_calling_go_below_the_limit_too() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        for n in 0..100 {
            take(c.join(&format!("silent-{n}"), join_request(""), now).unwrap()).unwrap().unwrap();
        }
        // Past every session: each new group counts, and a sweep comes within 256 of them.
        let later = now + Duration::from_secs(60);
        for n in 0..SWEEP_EVERY_NEW_GROUPS {
            take(c.join(&format!("new-{n}"), join_request(""), later).unwrap()).unwrap().unwrap();
        }
        assert!((0..100).all(|n| c.group(&format!("silent-{n}")).is_none()), "the silent groups went");
        assert!(c.groups.len() <= SWEEP_EVERY_NEW_GROUPS, "{} groups", c.groups.len());
    }

    #[test]
    fn a_lone_member_joins_leads_and_syncs_its_own_assignment() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        let joined = take(c.join("g", join_request(""), now).unwrap()).unwrap().unwrap();
        assert_eq!((joined.generation, joined.leader == joined.member_id, joined.members.len()), (1, true, 1));
        let assignment = Bytes::from_static(b"all");
        let synced =
            c.sync("g", 1, &joined.member_id, vec![(joined.member_id.clone(), assignment.clone())], now).unwrap();
        assert_eq!(take(synced).unwrap().unwrap(), assignment);
        assert_eq!(c.group("g").unwrap().state, State::Stable);
        assert!(c.heartbeat("g", 1, &joined.member_id, now).is_ok());
    }

    #[test]
    fn a_second_member_makes_the_first_rejoin_and_both_get_the_new_generation() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        let first = take(c.join("g", join_request(""), now).unwrap()).unwrap().unwrap();
        c.sync("g", 1, &first.member_id, vec![], now).unwrap();
        let mut second = c.join("g", join_request(""), now).unwrap();
        assert!(second.try_take().is_none(), "waits for the first member to rejoin");
        assert_eq!(c.heartbeat("g", 1, &first.member_id, now), Err(ResponseError::RebalanceInProgress));
        assert!(c.may_commit("g", 1, &first.member_id, now).is_ok(), "a commit as partitions are revoked");
        let again = take(c.join("g", join_request(&first.member_id), now).unwrap()).unwrap().unwrap();
        let second = second.try_take().unwrap().unwrap();
        assert_eq!((again.generation, second.generation), (2, 2));
        assert_eq!(again.leader, first.member_id, "the leader stays the leader");
        assert_eq!(again.members.len(), 2);
        assert!(second.members.is_empty(), "only the leader gets the members");
        let mut follower_sync = c.sync("g", 2, &second.member_id, vec![], now).unwrap();
        assert!(follower_sync.try_take().is_none(), "a follower waits for the leader's assignments");
        let plan = vec![
            (second.member_id.clone(), Bytes::from_static(b"p1")),
            (first.member_id.clone(), Bytes::from_static(b"p0")),
        ];
        let leader_sync = c.sync("g", 2, &first.member_id, plan, now).unwrap();
        assert_eq!(take(leader_sync).unwrap().unwrap(), Bytes::from_static(b"p0"));
        assert_eq!(follower_sync.try_take().unwrap().unwrap(), Bytes::from_static(b"p1"));
    }

    #[test]
    fn a_silent_member_is_removed_after_its_session_and_a_straggler_after_the_rebalance_timeout() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        let first = take(c.join("g", join_request(""), now).unwrap()).unwrap().unwrap();
        c.sync("g", 1, &first.member_id, vec![], now).unwrap();
        let mut second = c.join("g", join_request(""), now).unwrap();
        // The first never rejoins: after the rebalance timeout the second goes on alone.
        c.tick("g", now + Duration::from_secs(31));
        let second = second.try_take().unwrap().unwrap();
        assert_eq!((second.generation, second.leader == second.member_id), (2, true));
        assert_eq!(c.heartbeat("g", 2, &first.member_id, now), Err(ResponseError::UnknownMemberId));
        c.sync("g", 2, &second.member_id, vec![], now).unwrap();
        c.tick("g", now + Duration::from_secs(45));
        assert!(c.group("g").is_none(), "silent past its session timeout, and an empty group is forgotten");
    }

    #[test]
    fn leaving_rebalances_the_rest_and_commits_check_generation() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        let first = take(c.join("g", join_request(""), now).unwrap()).unwrap().unwrap();
        let mut second = c.join("g", join_request(""), now).unwrap();
        let first = take(c.join("g", join_request(&first.member_id), now).unwrap()).unwrap().unwrap();
        let second = second.try_take().unwrap().unwrap();
        assert_eq!(c.may_commit("g", 1, &first.member_id, now), Err(ResponseError::IllegalGeneration));
        assert!(c.may_commit("g", -1, "", now).is_ok(), "a commit outside the group protocol");
        c.leave("g", &first.member_id, now).unwrap();
        assert_eq!(c.heartbeat("g", 2, &second.member_id, now), Err(ResponseError::RebalanceInProgress));
        let alone = take(c.join("g", join_request(&second.member_id), now).unwrap()).unwrap().unwrap();
        assert_eq!((alone.generation, alone.members.len()), (3, 1));
    }

    #[test]
    fn a_refused_join_leaves_nothing_and_a_stranger_protocol_is_refused_alone() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        assert_eq!(c.join("g", join_request("someone"), now).err(), Some(ResponseError::UnknownMemberId));
        assert!(c.group("g").is_none(), "no group made by a refused join");
        let first = take(c.join("g", join_request(""), now).unwrap()).unwrap().unwrap();
        c.sync("g", 1, &first.member_id, vec![], now).unwrap();
        let stranger = JoinRequest { protocols: vec![("sticky".into(), Bytes::new())], ..join_request("") };
        assert_eq!(c.join("g", stranger, now).err(), Some(ResponseError::InconsistentGroupProtocol));
        assert_eq!(c.group("g").unwrap().state, State::Stable, "the group goes on undisturbed");
        assert!(c.heartbeat("g", 1, &first.member_id, now).is_ok());
    }

    #[test]
    fn member_ids_differ_between_coordinators_and_commits_wait_for_assignments() {
        let now = Instant::now();
        let (mut one, mut two) = (Coordinator::default(), Coordinator::default());
        std::thread::sleep(Duration::from_millis(1));
        let a = take(one.join("g", join_request(""), now).unwrap()).unwrap().unwrap();
        let b = take(two.join("g", join_request(""), now).unwrap()).unwrap().unwrap();
        assert_ne!(a.member_id, b.member_id, "a restarted server hands out other ids");
        assert_eq!(one.may_commit("g", 1, &a.member_id, now), Err(ResponseError::RebalanceInProgress));
        one.sync("g", 1, &a.member_id, vec![], now).unwrap();
        assert!(one.may_commit("g", 1, &a.member_id, now).is_ok());
    }
}
