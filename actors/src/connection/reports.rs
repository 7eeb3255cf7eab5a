//! How a connection's reports reach its tunnel: a queue on their one thread, which the tunnel
//! drains when its writer runs (before it takes the next batch), instead of an actor message per
//! report.
//!
//! A connection is started by its tunnel on the tunnel's thread and lives there, so the queue
//! needs no lock and no envelope: a report is one push, and the tunnel's task is woken only by
//! the push that finds the queue empty (later ones find a wake-up already due). A message per
//! report had cost two allocations (its envelope and the channel's node), a channel push and a
//! pop on every short exchange. The reports of all of a tunnel's connections share the one queue,
//! so each stream's reports keep their order (a FIN after the DATA before it), as in a mailbox.
//!
//! What bounds the queue is what bounds the reports: a connection sends DATA only against the
//! credit its tunnel granted, and a handful of other reports over its life. A tunnel that is gone
//! drains nothing; the queue then goes with its last connection.

use std::rc::Rc;
use std::task::{Context, Poll};

use super::FromConnection;
use crate::lasting::WakingQueue;

/// One end of a tunnel's report queue: its connections send on it, the tunnel takes from it.
#[derive(Clone, Default)]
pub struct Reports(Rc<WakingQueue<FromConnection>>);

impl Reports {
    pub fn new() -> Reports {
        Reports::default()
    }

    /// Queues `report`; wakes the taker if the queue was empty (else a wake-up is due already).
    pub fn send(&self, report: FromConnection) {
        self.0.send(report);
    }

    /// The oldest report not taken yet.
    pub fn take(&self) -> Option<FromConnection> {
        self.0.take()
    }

    /// The taker found the queue empty: the next report wakes `task`.
    pub fn wait(&self, task: &Context<'_>) {
        self.0.wait(task);
    }

    /// A queue whose reports go on to `tx` as they come (a test's stand-in for the tunnel).
    #[cfg(test)]
    pub fn forwarded_to(tx: tokio::sync::mpsc::UnboundedSender<FromConnection>) -> Reports {
        let reports = Reports::new();
        let taker = reports.clone();
        actix_rt::spawn(async move {
            loop {
                let report = std::future::poll_fn(|task| taker.poll_take(task)).await;
                if tx.send(report).is_err() {
                    break;
                }
            }
        });
        reports
    }

    /// The next report, or `Pending` until one comes.
    pub fn poll_take(&self, task: &mut Context<'_>) -> Poll<FromConnection> {
        match self.take() {
            Some(report) => Poll::Ready(report),
            None => {
                self.wait(task);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lasting::counting_waker;

    #[test]
    fn reports_come_out_in_order_and_only_the_first_into_an_empty_queue_wakes() {
        let (waker, count) = counting_waker();
        let mut task = Context::from_waker(&waker);
        let tunnel = Reports::new();
        let connection = tunnel.clone();
        assert!(tunnel.poll_take(&mut task).is_pending());
        connection.send(FromConnection::Want { stream: 1 });
        connection.send(FromConnection::Fin { stream: 1 });
        assert_eq!(count.get(), 1, "one wake-up for both");
        assert!(matches!(
            tunnel.poll_take(&mut task),
            Poll::Ready(FromConnection::Want { stream: 1 })
        ));
        assert!(matches!(
            tunnel.take(),
            Some(FromConnection::Fin { stream: 1 })
        ));
        assert!(tunnel.take().is_none());
        // Nothing was waiting (the taker did not wait since): no wake-up, the report stays.
        connection.send(FromConnection::Closed {
            stream: 1,
            failure: None,
        });
        assert_eq!(count.get(), 1);
        assert!(tunnel.poll_take(&mut task).is_ready());
        assert!(tunnel.poll_take(&mut task).is_pending());
        connection.send(FromConnection::Want { stream: 3 });
        assert_eq!(count.get(), 2, "the taker waited again");
    }
}
