//! A trade's lifecycle: the moves a caller names, the actions records carry, and the one rule
//! of what each action does to a trade's state ([`next_state`]), used by the checks made before
//! a write and by the application of durable records alike.

use crate::error::{InputError, Refusal, TradeError};
use crate::record::RecordKind;
use crate::trade::{TradeId, TradeStatus};

/// A move of a trade's lifecycle that a caller asks for by name. Repeating one the trade has
/// made already (its status is the move's target, or, for a pay from the balance of a trade
/// paid so, a refund or a settle came since) answers the trade as it stands, as a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Paid outside the engine.
    Pay,
    /// Paid from the buyer's available balance in the trade's currency.
    PayFromBalance,
    Settle,
    Close,
}

impl Move {
    /// The status the move leads to (and only this move does).
    pub fn target(self) -> TradeStatus {
        match self {
            Move::Pay | Move::PayFromBalance => TradeStatus::Paid,
            Move::Settle => TradeStatus::Settled,
            Move::Close => TradeStatus::Closed,
        }
    }

    pub(crate) fn action(self) -> Action {
        match self {
            Move::Pay => Action::Pay,
            Move::PayFromBalance => Action::PayFromBalance,
            Move::Settle => Action::Settle,
            Move::Close => Action::Close,
        }
    }
}

/// What a change does to a trade: a move, or a refund of an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pay,
    PayFromBalance,
    Settle,
    Close,
    /// Refund this many minor units.
    Refund(u64),
}

impl Action {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Action::Pay => "pay",
            Action::PayFromBalance => "pay from balance",
            Action::Settle => "settle",
            Action::Close => "close",
            Action::Refund(_) => "refund",
        }
    }

    /// The record kind that carries this action.
    pub(crate) fn record_kind(self) -> RecordKind {
        match self {
            Action::Pay | Action::PayFromBalance => RecordKind::Paid,
            Action::Settle => RecordKind::Settled,
            Action::Close => RecordKind::Closed,
            Action::Refund(_) => RecordKind::Refunded,
        }
    }
}

/// The part of a trade's state the lifecycle rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    pub status: TradeStatus,
    pub amount: u64,
    pub refunded: u64,
    /// Paid from the buyer's balance: refunds go back to it, and settling credits the
    /// merchant's account with what was not refunded.
    pub from_balance: bool,
}

/// The bit of a stored status byte that marks a trade paid from a balance.
const FROM_BALANCE_BIT: u8 = 0x80;

impl Lifecycle {
    /// The status and the funding in one stored byte.
    pub(crate) fn status_byte(&self) -> u8 {
        self.status as u8 | if self.from_balance { FROM_BALANCE_BIT } else { 0 }
    }

    /// The status and the funding of a stored byte; `None` for a byte no build wrote.
    pub(crate) fn of_status_byte(byte: u8) -> Option<(TradeStatus, bool)> {
        let from_balance = byte & FROM_BALANCE_BIT != 0;
        let status = TradeStatus::from_u8(byte & !FROM_BALANCE_BIT)?;
        match (status, from_balance) {
            (TradeStatus::Created | TradeStatus::Closed, true) => None,
            _ => Some((status, from_balance)),
        }
    }

    /// What settling pays the merchant: what was not refunded (only a trade paid from a
    /// balance settles after a refund).
    pub fn settles(&self) -> u64 {
        self.amount - self.refunded
    }
}

/// The lifecycle after `action`, or why it is not allowed:
/// `Created → Paid → Settled`, `Created → Closed`, `Paid → Refunded`, and `Refunded → Refunded`
/// while the refunded total stays within the amount paid. A trade paid from a balance also
/// settles after a partial refund (`Refunded → Settled`), so that what was not refunded
/// reaches the merchant instead of staying in the engine's hands.
pub(crate) fn next_state(id: TradeId, current: Lifecycle, action: Action) -> Result<Lifecycle, TradeError> {
    use TradeStatus::*;
    let illegal = || Refusal::IllegalTransition { id, from: current.status, action: action.name() }.into();
    match (current.status, action) {
        (Created, Action::Pay) => Ok(Lifecycle { status: Paid, ..current }),
        (Created, Action::PayFromBalance) => Ok(Lifecycle { status: Paid, from_balance: true, ..current }),
        (Created, Action::Close) => Ok(Lifecycle { status: Closed, ..current }),
        (Paid, Action::Settle) => Ok(Lifecycle { status: Settled, ..current }),
        (Refunded, Action::Settle) if current.from_balance && current.refunded < current.amount => {
            Ok(Lifecycle { status: Settled, ..current })
        }
        (Paid | Refunded, Action::Refund(requested)) => {
            let refundable = current.amount - current.refunded;
            if requested == 0 {
                return Err(InputError::ZeroAmount.into());
            }
            if requested > refundable {
                return Err(Refusal::RefundExceedsPaid { id, requested, refundable }.into());
            }
            Ok(Lifecycle { status: Refunded, refunded: current.refunded + requested, ..current })
        }
        _ => Err(illegal()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TradeStatus::*;

    fn at(status: TradeStatus, amount: u64, refunded: u64) -> Lifecycle {
        Lifecycle { status, amount, refunded, from_balance: false }
    }

    #[test]
    fn lifecycle_allows_only_the_documented_transitions() {
        let id = TradeId::new(0, 1);
        let allowed = [
            (Created, Action::Pay, Paid),
            (Created, Action::Close, Closed),
            (Paid, Action::Settle, Settled),
            (Paid, Action::Refund(40), Refunded),
            (Refunded, Action::Refund(40), Refunded),
        ];
        for status in [Created, Paid, Settled, Closed, Refunded] {
            for action in [Action::Pay, Action::Settle, Action::Close, Action::Refund(40)] {
                let result = next_state(id, at(status, 100, if status == Refunded { 40 } else { 0 }), action);
                match allowed.iter().find(|(from, a, _)| *from == status && *a == action) {
                    Some((_, _, to)) => assert_eq!(result.unwrap().status, *to),
                    None => {
                        assert!(
                            matches!(result, Err(TradeError::Refused(Refusal::IllegalTransition { .. }))),
                            "{status:?} {action:?}"
                        )
                    }
                }
            }
        }
    }

    #[test]
    fn refunds_never_exceed_what_was_paid() {
        let id = TradeId::new(0, 1);
        let after = next_state(id, at(Paid, 100, 0), Action::Refund(60)).unwrap();
        assert_eq!(after.refunded, 60);
        assert!(matches!(
            next_state(id, after, Action::Refund(41)),
            Err(TradeError::Refused(Refusal::RefundExceedsPaid { requested: 41, refundable: 40, .. }))
        ));
        assert_eq!(next_state(id, after, Action::Refund(40)).unwrap().refunded, 100);
        assert!(matches!(next_state(id, after, Action::Refund(0)), Err(TradeError::Invalid(InputError::ZeroAmount))));
    }

    #[test]
    fn a_trade_paid_from_a_balance_settles_what_was_not_refunded() {
        let id = TradeId::new(0, 1);
        let paid = next_state(id, at(Created, 100, 0), Action::PayFromBalance).unwrap();
        assert_eq!((paid.status, paid.from_balance), (Paid, true));
        assert!(matches!(next_state(id, paid, Action::PayFromBalance), Err(TradeError::Refused(_))));
        let refunded = next_state(id, paid, Action::Refund(30)).unwrap();
        assert!(refunded.from_balance);
        let settled = next_state(id, refunded, Action::Settle).unwrap();
        assert_eq!((settled.status, settled.settles()), (Settled, 70));
        let whole = next_state(id, refunded, Action::Refund(70)).unwrap();
        assert!(next_state(id, whole, Action::Settle).is_err(), "nothing is left to settle");
        assert!(next_state(id, at(Refunded, 100, 40), Action::Settle).is_err(), "paid outside: refunded is final");
        for status in [Created, Paid, Settled, Closed, Refunded] {
            for from_balance in [false, true] {
                let life = Lifecycle { status, amount: 1, refunded: 0, from_balance };
                let stored = Lifecycle::of_status_byte(life.status_byte());
                let written = !(from_balance && matches!(status, Created | Closed));
                assert_eq!(stored, written.then_some((status, from_balance)));
            }
        }
    }
}
