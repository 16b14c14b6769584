//! Choosing what the load generator does next: users (or trades) uniform or Zipf-skewed, from
//! the deterministic generator of the `fastrand` crate, so that `--seed` replays a run's choices.

use fastrand::Rng;
use tradeshard_engine::NewTrade;

/// Trade number `n` of a generated workload, for `buyer`: order number `{prefix}{n}`, the
/// same fields whichever command makes it.
pub fn numbered_trade(prefix: &str, n: u64, buyer: u64) -> NewTrade {
    NewTrade {
        buyer_id: buyer,
        merchant_id: 1 + buyer % 997,
        merchant_order_no: format!("{prefix}{n}"),
        amount: 1 + n % 100_000,
        currency: "CNY".into(),
        memo: format!("trade {prefix}{n}"),
    }
}

/// Picks user ids in 1..=users: uniformly, or Zipf with exponent `skew` (rank 1 hottest).
#[derive(Clone)]
pub enum UserChooser {
    Uniform {
        users: u64,
    },
    /// Cumulative probabilities of ranks 1..=users.
    Zipf {
        cdf: Vec<f64>,
    },
}

/// Above this many users a Zipf table would cost too much memory.
pub const ZIPF_USERS_MAX: u64 = 10_000_000;

impl UserChooser {
    pub fn new(users: u64, skew: f64) -> Result<UserChooser, String> {
        if users == 0 {
            return Err("--users must be above zero".into());
        }
        if skew <= 0.0 {
            return Ok(UserChooser::Uniform { users });
        }
        if users > ZIPF_USERS_MAX {
            return Err(format!("--zipf needs --users at most {ZIPF_USERS_MAX}"));
        }
        let mut cdf = Vec::with_capacity(users as usize);
        let mut total = 0.0;
        for rank in 1..=users {
            total += 1.0 / (rank as f64).powf(skew);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Ok(UserChooser::Zipf { cdf })
    }

    pub fn pick(&self, rng: &mut Rng) -> u64 {
        match self {
            UserChooser::Uniform { users } => 1 + rng.u64(..*users),
            UserChooser::Zipf { cdf } => {
                let u = rng.f64();
                (cdf.partition_point(|&p| p < u) as u64 + 1).min(cdf.len() as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let chooser = UserChooser::new(1000, 0.99).unwrap();
        let mut rng = Rng::with_seed(7);
        let mut counts = vec![0u32; 1001];
        for _ in 0..100_000 {
            let user = chooser.pick(&mut rng);
            assert!((1..=1000).contains(&user));
            counts[user as usize] += 1;
        }
        assert!(counts[1] > counts[10] && counts[10] > counts[500], "{} {} {}", counts[1], counts[10], counts[500]);
        assert!(counts[1] > 10_000, "rank 1 of Zipf 0.99 over 1000 takes about 13%: {}", counts[1]);
    }

    #[test]
    fn uniform_covers_the_range() {
        let chooser = UserChooser::new(10, 0.0).unwrap();
        let mut rng = Rng::with_seed(1);
        let mut seen = [false; 11];
        for _ in 0..1000 {
            seen[chooser.pick(&mut rng) as usize] = true;
        }
        assert!(seen[1..].iter().all(|&s| s));
    }
}
