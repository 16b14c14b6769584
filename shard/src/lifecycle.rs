//! A trade's lifecycle: the moves a caller names, the actions records carry, and the one rule
//! of what each action does to a trade's state ([`next_state`]), used by the checks made before
//! a write and by the application of durable records alike.

use crate::error::{InputError, Refusal, TradeError};
use crate::record::RecordKind;
use crate::trade::{TradeId, TradeStatus};

/// A move of a trade's lifecycle that a caller asks for by name. Repeating one the trade has
/// made already (its status is the move's target) answers the original receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Pay,
    Settle,
    Close,
}

impl Move {
    /// The status the move leads to (and only this move does).
    pub fn target(self) -> TradeStatus {
        match self {
            Move::Pay => TradeStatus::Paid,
            Move::Settle => TradeStatus::Settled,
            Move::Close => TradeStatus::Closed,
        }
    }

    pub(crate) fn action(self) -> Action {
        match self {
            Move::Pay => Action::Pay,
            Move::Settle => Action::Settle,
            Move::Close => Action::Close,
        }
    }
}

/// What a change does to a trade: a move, or a refund of an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pay,
    Settle,
    Close,
    /// Refund this many minor units.
    Refund(u64),
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Pay => "pay",
            Action::Settle => "settle",
            Action::Close => "close",
            Action::Refund(_) => "refund",
        }
    }

    /// The record kind that carries this action.
    pub(crate) fn record_kind(self) -> RecordKind {
        match self {
            Action::Pay => RecordKind::Paid,
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
}

/// The lifecycle after `action`, or why it is not allowed:
/// `Created → Paid → Settled`, `Created → Closed`, `Paid → Refunded`, and `Refunded → Refunded`
/// while the refunded total stays within the amount paid.
pub(crate) fn next_state(id: TradeId, current: Lifecycle, action: Action) -> Result<Lifecycle, TradeError> {
    use TradeStatus::*;
    let illegal = || Refusal::IllegalTransition { id, from: current.status, action: action.name() }.into();
    match (current.status, action) {
        (Created, Action::Pay) => Ok(Lifecycle { status: Paid, ..current }),
        (Created, Action::Close) => Ok(Lifecycle { status: Closed, ..current }),
        (Paid, Action::Settle) => Ok(Lifecycle { status: Settled, ..current }),
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
        Lifecycle { status, amount, refunded }
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
}
