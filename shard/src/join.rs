//! Waiting for several futures at once, without a task each: reads of the disk that one piece
//! of work needs together go out together (`cold.rs`), so it waits about one read's latency
//! rather than one per read; an activity's branches are reached together (`tcc_driver.rs`).
//! A read can also be started before other work and awaited after it (a scan of the table
//! decodes one run of pages while the next is read).

/// Polls every future of `futures` to its end, concurrently, and returns their outputs in
/// order.
pub async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|output| output.expect("every future ended")).collect()
}

/// A future polled once now, so that the work it starts (a read sent to the device) goes on
/// while its caller does something else, and awaited later with [`Started::finish`].
pub struct Started<F: std::future::Future> {
    future: Option<std::pin::Pin<Box<F>>>,
    output: Option<F::Output>,
}

/// Polls `future` once and keeps it, or its output if that poll ended it.
pub async fn start<F: std::future::Future>(future: F) -> Started<F> {
    let mut future = Box::pin(future);
    let output = std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await;
    match output {
        std::task::Poll::Ready(output) => Started { future: None, output: Some(output) },
        std::task::Poll::Pending => Started { future: Some(future), output: None },
    }
}

impl<F: std::future::Future> Started<F> {
    /// Its output, waiting for it if the future has not ended yet.
    pub async fn finish(self) -> F::Output {
        match (self.output, self.future) {
            (Some(output), _) => output,
            (None, Some(future)) => future.await,
            (None, None) => unreachable!("a started future keeps its future or its output"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_future_gives_its_output_whether_its_first_poll_ended_it_or_not() {
        futures_lite::future::block_on(async {
            assert_eq!(start(async { 7 }).await.finish().await, 7);
            let waits = start(async {
                futures_lite::future::yield_now().await;
                8
            })
            .await;
            assert_eq!(waits.finish().await, 8);
        });
    }
}
