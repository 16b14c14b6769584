//! The client of the load tool: its tasks, each with one request outstanding, the mix of
//! operations they choose from, and what they record of each answer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use fastrand::Rng;
use hdrhistogram::Histogram;
use tradeshard_engine::{EngineHandle, NewTrade, TradeId, TradeStatus};

use crate::latency;
use crate::workload::UserChooser;

/// Trades whose acknowledgements are kept for the final read-back; later ones are not checked
/// (the report says how many), so that a long run's bookkeeping stays bounded.
pub(super) const TRACKED_TRADES_MAX: u64 = 4 << 20;
/// Created trade ids kept for the mixed workload's gets (a uniform sample once full).
const READABLE_TRADES_MAX: usize = 4 << 20;

pub(super) const OPS: [&str; 6] = ["create", "pay", "settle", "get", "list", "refund"];
pub(super) const CREATE: usize = 0;
pub(super) const PAY: usize = 1;
pub(super) const SETTLE: usize = 2;
pub(super) const GET: usize = 3;
pub(super) const LIST: usize = 4;
pub(super) const REFUND: usize = 5;

/// What the client tasks share (one client thread, so `RefCell`).
pub(super) struct Client {
    pub(super) handle: EngineHandle,
    pub(super) users: UserChooser,
    pub(super) read_ratio: f64,
    pub(super) ingest: bool,
    /// The read workload's trades, and how to pick among them.
    pub(super) read_only: Option<(Vec<TradeId>, UserChooser)>,
    /// Gets per request of the read workload.
    pub(super) batch: usize,
    /// Trades read (a batch counts each of its gets).
    pub(super) reads: Cell<u64>,
    pub(super) stop: Cell<bool>,
    /// When the tasks stop of themselves (`--duration`): the timer that sets `stop` runs only
    /// when they yield, which tasks answered from the cache alone seldom do.
    pub(super) deadline: Option<Instant>,
    pub(super) issued: Cell<u64>,
    pub(super) ops_max: Option<u64>,
    pub(super) histograms: RefCell<Vec<Histogram<u64>>>,
    /// Every operation's latency since the last `--report-every` line.
    pub(super) interval: RefCell<Histogram<u64>>,
    /// Trades whose acknowledgements are kept (at most `TRACKED_TRADES_MAX`), and the rest.
    pub(super) tracked: Cell<u64>,
    pub(super) untracked: Cell<u64>,
    /// Every acknowledgement in order (the last one of a trade is its acknowledged state);
    /// appended, not looked up, so that bookkeeping costs the client little.
    pub(super) acked: RefCell<Vec<(TradeId, TradeStatus)>>,
    pub(super) created: RefCell<Vec<TradeId>>,
    pub(super) errors: Cell<u64>,
    pub(super) first_error: RefCell<Option<String>>,
    pub(super) rate: Option<f64>,
    pub(super) inflight: usize,
    pub(super) start: Instant,
    /// This run's tag, in its order numbers.
    pub(super) run: String,
    pub(super) retries: super::retry::Retries,
    /// Order numbers chosen with their home in the buyer's shard (`--order-home buyer`).
    pub(super) orders_at_buyer: bool,
    /// With `--on-executors`: the executor this client runs on, whose shards' users it buys
    /// for, and the number of its first task among the run's.
    pub(super) payers_on: Option<usize>,
    pub(super) first_task: usize,
}

/// A trade of one task that can still move forward.
#[derive(Clone, Copy)]
pub(super) struct OpenTrade {
    id: TradeId,
    status: TradeStatus,
    /// Its acknowledgements are kept for the read-back.
    tracked: bool,
    amount: u64,
}

/// A client thread's `inflight` tasks, run until they stop; `index`: which client thread,
/// so that each thread's tasks choose differently.
pub(super) async fn run_workers(client: Rc<Client>, inflight: usize, seed: u64, index: usize) {
    let first = client.first_task;
    let tasks: Vec<_> = (first..first + inflight)
        .map(|task| {
            let task_seed = seed.wrapping_mul(1_000_003) ^ (index * inflight + task) as u64;
            glommio::spawn_local(worker(client.clone(), task, task_seed))
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

/// What a further client (a thread of the read workload, or an executor's part with
/// `--on-executors`) did, added to the first one's before the report.
pub(super) struct ClientTotals {
    histograms: Vec<Histogram<u64>>,
    reads: u64,
    errors: u64,
    first_error: Option<String>,
    /// Its acknowledgements, for the read-back.
    acked: Vec<(TradeId, TradeStatus)>,
    untracked: u64,
    retries: super::retry::RetryTotals,
}

impl ClientTotals {
    pub(super) fn of(client: &Client) -> ClientTotals {
        ClientTotals {
            histograms: client.histograms.borrow().clone(),
            reads: client.reads.get(),
            errors: client.errors.get(),
            first_error: client.first_error.borrow().clone(),
            acked: client.acked.take(),
            untracked: client.untracked.get(),
            retries: client.retries.take_totals(),
        }
    }

    pub(super) fn add_to(self, client: &Client) -> anyhow::Result<()> {
        for (mine, theirs) in client.histograms.borrow_mut().iter_mut().zip(&self.histograms) {
            mine.add(theirs)?;
        }
        client.reads.set(client.reads.get() + self.reads);
        client.errors.set(client.errors.get() + self.errors);
        if let Some(error) = self.first_error {
            client.first_error.borrow_mut().get_or_insert(error);
        }
        client.acked.borrow_mut().extend(self.acked);
        client.untracked.set(client.untracked.get() + self.untracked);
        client.retries.add_totals(self.retries);
        Ok(())
    }
}

/// A buyer: with `--on-executors`, drawn until one lives on the client's executor (a few
/// draws; any user after 64, whose request is then handed over).
fn pick_buyer(client: &Client, rng: &mut Rng) -> u64 {
    let Some(executor) = client.payers_on else {
        return client.users.pick(rng);
    };
    let routing = client.handle.routing();
    let mut buyer = client.users.pick(rng);
    for _ in 0..64 {
        if routing.executor_of_physical(routing.physical_of_user(buyer)) == executor {
            break;
        }
        buyer = client.users.pick(rng);
    }
    buyer
}

/// One outstanding request at a time, until told to stop.
async fn worker(client: Rc<Client>, task: usize, seed: u64) {
    let mut rng = Rng::with_seed(seed);
    // This task's trades that can still move forward: (id, status).
    let mut open: Vec<OpenTrade> = Vec::new();
    let mut sent: u64 = 0;
    while !client.stop.get() {
        if client.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            client.stop.set(true);
            break;
        }
        if let Some(max) = client.ops_max {
            if client.issued.get() >= max {
                break;
            }
        }
        client.issued.set(client.issued.get() + 1);
        let Some(intended) = send_slot(client.rate, client.start, client.inflight, task, sent, client.deadline).await
        else {
            // This task's next slot is past the deadline; the others end at theirs.
            break;
        };
        sent += 1;
        let op = choose(&client, &mut rng, &open);
        let mut answered = None;
        let outcome = run_op(&client, &mut rng, &mut open, op, task, sent, &mut answered).await;
        // Until the operation's own answer: a retry sent after it (`--retry-ratio`) is not
        // part of its latency.
        let micros = answered.unwrap_or_else(Instant::now).duration_since(intended).as_micros() as u64;
        match outcome {
            Ok(()) => {
                latency::record(&mut client.histograms.borrow_mut()[op], micros);
                latency::record(&mut client.interval.borrow_mut(), micros);
            }
            Err(error) => {
                client.errors.set(client.errors.get() + 1);
                client.first_error.borrow_mut().get_or_insert(format!("{}: {error}", OPS[op]));
            }
        }
        // A cache hit is answered without ever waiting: let the progress reports run.
        glommio::yield_if_needed().await;
    }
}

/// The intended send time of the `sent`-th request of open-loop task `task` of `inflight`, at
/// `rate` requests a second from `start`, waited for (latency counts from it); without a rate,
/// now. Tasks interleave their slots: task i sends at slots i, i + inflight, ... `None`, at
/// once, when the slot lies past `deadline` (or past any time a clock can hold): the run ends
/// at its deadline, not at the last slot a task had started waiting for.
pub(super) async fn send_slot(
    rate: Option<f64>,
    start: Instant,
    inflight: usize,
    task: usize,
    sent: u64,
    deadline: Option<Instant>,
) -> Option<Instant> {
    let Some(rate) = rate else {
        return Some(Instant::now());
    };
    let slot = (sent as f64 * inflight as f64 + task as f64) / rate;
    let at = start.checked_add(Duration::try_from_secs_f64(slot).ok()?)?;
    if deadline.is_some_and(|deadline| at >= deadline) {
        return None;
    }
    let now = Instant::now();
    if at > now {
        glommio::timer::sleep(at - now).await;
    }
    Some(at)
}

fn choose(client: &Client, rng: &mut Rng, open: &[OpenTrade]) -> usize {
    if client.ingest {
        return CREATE;
    }
    if client.read_only.is_some() {
        return GET;
    }
    if rng.f64() < client.read_ratio {
        return if rng.u64(..4) == 0 { LIST } else { GET };
    }
    let has = |status| open.iter().any(|trade| trade.status == status);
    match rng.u64(..10) {
        0..=4 => CREATE,
        5..=7 if has(TradeStatus::Created) => PAY,
        8 if has(TradeStatus::Paid) => SETTLE,
        9 if has(TradeStatus::Paid) => REFUND,
        _ => CREATE,
    }
}

/// A new order number, with its home in the buyer's shard when the client asks for that: a
/// suffix is counted up until the hash lands there (about as many tries as shards).
fn order_number(client: &Client, buyer: u64, merchant: u64, task: usize, sent: u64) -> String {
    use std::fmt::Write;
    let mut order_no = String::with_capacity(28);
    let _ = write!(order_no, "L{}-{task}-{sent}", client.run);
    if client.orders_at_buyer {
        let routing = client.handle.routing();
        let home = routing.physical_of_user(buyer);
        let stem = order_no.len();
        for suffix in 0u32.. {
            order_no.truncate(stem);
            let _ = write!(order_no, "-{suffix}");
            if routing.physical_of_order(merchant, &order_no) == home {
                break;
            }
        }
    }
    order_no
}

async fn run_op(
    client: &Client,
    rng: &mut Rng,
    open: &mut Vec<OpenTrade>,
    op: usize,
    task: usize,
    sent: u64,
    answered: &mut Option<Instant>,
) -> Result<(), tradeshard_engine::Error> {
    let handle = &client.handle;
    match op {
        CREATE => {
            let buyer = pick_buyer(client, rng);
            let amount = 1 + rng.u64(..100_000);
            let merchant = 1 + buyer % 997;
            let order_no = order_number(client, buyer, merchant, task, sent);
            let trade = NewTrade {
                buyer_id: buyer,
                merchant_id: merchant,
                merchant_order_no: order_no,
                amount,
                currency: "CNY".into(),
                memo: String::new(),
            };
            let retry = client.retries.ratio > 0.0 && rng.f64() < client.retries.ratio;
            let kept = (retry || client.retries.wants_order()).then(|| trade.clone());
            let receipt = handle.create_trade(trade).await?;
            *answered = Some(Instant::now());
            if let Some(trade) = kept {
                client.retries.created(&trade, receipt.id);
                if retry {
                    client.retries.create(handle, trade, &receipt).await;
                }
            }
            let tracked = client.tracked.get() < TRACKED_TRADES_MAX;
            if tracked {
                client.tracked.set(client.tracked.get() + 1);
                client.acked.borrow_mut().push((receipt.id, receipt.status));
            } else {
                client.untracked.set(client.untracked.get() + 1);
            }
            if !client.ingest {
                let mut created = client.created.borrow_mut();
                if created.len() < READABLE_TRADES_MAX {
                    created.push(receipt.id);
                } else {
                    let at = rng.u64(..created.len() as u64) as usize;
                    created[at] = receipt.id;
                }
                drop(created);
                open.push(OpenTrade { id: receipt.id, status: receipt.status, tracked, amount });
                if open.len() > 64 {
                    open.remove(0);
                }
            }
        }
        PAY | SETTLE | REFUND => {
            let want = if op == PAY { TradeStatus::Created } else { TradeStatus::Paid };
            let at = open.iter().position(|trade| trade.status == want).expect("chosen only when present");
            let OpenTrade { id, tracked, amount, .. } = open[at];
            let mut refund_no = String::new();
            if op == REFUND {
                use std::fmt::Write;
                let _ = write!(refund_no, "LR{}-{task}-{sent}", client.run);
            }
            let send = || async {
                match op {
                    PAY => handle.pay(id).await,
                    SETTLE => handle.settle(id).await,
                    _ => handle.refund(id, &refund_no, amount).await,
                }
            };
            let receipt = send().await?;
            *answered = Some(Instant::now());
            if client.retries.ratio > 0.0 && rng.f64() < client.retries.ratio {
                client.retries.changed_again(send().await, &receipt);
            }
            if tracked {
                client.acked.borrow_mut().push((id, receipt.status));
            }
            if receipt.status == TradeStatus::Paid {
                open[at].status = receipt.status;
            } else {
                open.remove(at);
            }
        }
        GET if client.read_only.is_some() => {
            let (ids, chooser) = client.read_only.as_ref().expect("checked");
            // Rank r of the skew is trade (r * 7919) mod n, so hot trades spread over shards.
            let mut pick = || ids[(((chooser.pick(rng) - 1) * 7919) % ids.len() as u64) as usize];
            if client.batch == 1 {
                handle.get(pick()).await?;
            } else {
                let batch: Vec<TradeId> = (0..client.batch).map(|_| pick()).collect();
                for answer in handle.get_many(&batch).await? {
                    answer?;
                }
            }
            client.reads.set(client.reads.get() + client.batch as u64);
        }
        GET => {
            let id = {
                let created = client.created.borrow();
                if created.is_empty() {
                    None
                } else {
                    Some(created[rng.u64(..created.len() as u64) as usize])
                }
            };
            if let Some(id) = id {
                handle.get(id).await?;
                client.reads.set(client.reads.get() + 1);
            }
        }
        _ => {
            handle.list_user_trades(pick_buyer(client, rng), 20, None).await?;
        }
    }
    Ok(())
}

/// The timed phase as tasks on the engine's executors (`--on-executors`): each executor runs
/// its share of the tasks and of `--ops`, buying for the users of its own shards, and its
/// counts and acknowledgements are added to `client`'s (which runs no task of its own).
pub(super) async fn on_the_executors(
    client: Rc<Client>,
    args: super::Args,
    handle: EngineHandle,
    deadline: Option<Instant>,
) {
    let executors = handle.executors();
    let share =
        |total: u64, part: usize| total / executors as u64 + u64::from((part as u64) < total % executors as u64);
    let mut answers = Vec::with_capacity(executors);
    let mut first_task = 0;
    for executor in 0..executors {
        let inflight = share(args.inflight as u64, executor) as usize;
        if inflight == 0 {
            continue;
        }
        let (reply, answer) = tradeshard_engine::reply::channel();
        let (args, task_handle, users) = (args.clone(), handle.clone(), client.users.clone());
        let ops_max = args.ops.map(|ops| share(ops, executor));
        let spawned = handle
            .spawn_on(executor, move || async move {
                let mut part = new_client(executor + 1, &args, task_handle, users, None, deadline);
                (part.ops_max, part.payers_on, part.first_task) = (ops_max, Some(executor), first_task);
                let part = Rc::new(part);
                run_workers(part.clone(), inflight, args.seed, executor + 1).await;
                reply.send(ClientTotals::of(&part));
            })
            .await;
        match spawned {
            Ok(()) => answers.push(answer),
            Err(error) => {
                client
                    .first_error
                    .borrow_mut()
                    .get_or_insert(format!("starting a part on executor {executor}: {error}"));
            }
        }
        first_task += inflight;
    }
    for answer in answers {
        let added = match answer.await {
            Some(totals) => totals.add_to(&client).map_err(|e| e.to_string()),
            None => Err("an executor stopped before its part of the load ended".to_string()),
        };
        if let Err(error) = added {
            client.errors.set(client.errors.get() + 1);
            client.first_error.borrow_mut().get_or_insert(error);
        }
    }
}

pub(super) fn new_client(
    index: usize,
    args: &super::Args,
    handle: EngineHandle,
    users: UserChooser,
    read_only: Option<(Vec<tradeshard_engine::TradeId>, UserChooser)>,
    deadline: Option<Instant>,
) -> Client {
    Client {
        handle,
        users,
        read_ratio: args.read_ratio,
        ingest: args.workload == "ingest",
        read_only,
        batch: args.batch.max(1),
        reads: Cell::new(0),
        stop: Cell::new(false),
        deadline,
        issued: Cell::new(0),
        // Each client thread makes its share of the operations.
        ops_max: args.ops.map(|ops| ops / args.clients as u64 + u64::from((index as u64) < ops % args.clients as u64)),
        histograms: RefCell::new((0..OPS.len()).map(|_| latency::new_histogram()).collect()),
        interval: RefCell::new(latency::new_histogram()),
        tracked: Cell::new(0),
        untracked: Cell::new(0),
        acked: RefCell::new(Vec::new()),
        created: RefCell::new(Vec::new()),
        errors: Cell::new(0),
        first_error: RefCell::new(None),
        // Each client thread sends its share of the rate.
        rate: args.rate.map(|rate| rate / args.clients as f64),
        inflight: args.inflight,
        start: Instant::now(),
        run: run_tag(),
        retries: super::retry::Retries::new(args.retry_ratio),
        orders_at_buyer: args.order_home == "buyer",
        payers_on: None,
        first_task: 0,
    }
}

/// A tag unique to this run (its start time in base 36), put in its order numbers so that a run
/// on the directory of an earlier one makes new trades, not repeats of the old ones.
pub(super) fn run_tag() -> String {
    let mut ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut tag = Vec::new();
    while ms > 0 {
        tag.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(ms % 36) as usize]);
        ms /= 36;
    }
    tag.reverse();
    String::from_utf8(tag).expect("ASCII")
}
