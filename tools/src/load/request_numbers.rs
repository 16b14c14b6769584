//! Request numbers for the transfer workload: `{run}-{task}-{n}` (and `-{k}` within a batch),
//! written into a buffer the task reuses. The load tool's thread shares the machine with the
//! executors it measures, so naming a request must cost no allocation and no formatting
//! machinery; the numbers stay unique per run, task and request, as idempotency needs.

/// One task's request numbers.
pub(super) struct RequestNumbers {
    text: String,
    prefix: usize,
}

impl RequestNumbers {
    pub(super) fn new(run: &str, task: usize) -> RequestNumbers {
        let text = format!("{run}-{task}-");
        RequestNumbers { prefix: text.len(), text }
    }

    /// The number of request `n`: valid until the next call.
    pub(super) fn name(&mut self, n: u64) -> &str {
        self.text.truncate(self.prefix);
        push_decimal(&mut self.text, n);
        &self.text
    }

    /// Appends the number of the `k`th transfer of batch `n` to `out`.
    pub(super) fn append_batch_name(&self, out: &mut String, n: u64, k: u64) {
        out.push_str(&self.text[..self.prefix]);
        push_decimal(out, n);
        out.push('-');
        push_decimal(out, k);
    }
}

/// Appends `value` in decimal.
fn push_decimal(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_run_the_task_and_the_request_in_decimal() {
        let mut numbers = RequestNumbers::new("r7", 12);
        assert_eq!(numbers.name(0), "r7-12-0");
        assert_eq!(numbers.name(u64::MAX), format!("r7-12-{}", u64::MAX));
        assert_eq!(numbers.name(1_000_203), "r7-12-1000203");
        let mut batch = String::new();
        numbers.append_batch_name(&mut batch, 40, 9);
        numbers.append_batch_name(&mut batch, 5, 1023);
        assert_eq!(batch, "r7-12-40-9r7-12-5-1023");
    }
}
