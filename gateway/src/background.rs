//! The gateway's background work — fuzzy linkage, retention, audit
//! checkpoints — under one supervisor. Each job runs on its own schedule
//! until shutdown; then the supervisor tells every job to stop between
//! runs and waits (up to a grace period) for any run under way to finish,
//! so a stopping gateway never cuts a linkage run or a retention pass in
//! half.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Interval;

/// Runs the background jobs and stops them.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    jobs: JoinSet<&'static str>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self {
            stop: watch::channel(false).0,
            jobs: JoinSet::new(),
        }
    }
}

impl Supervisor {
    /// Starts `job`, named for the log; it is given the shutdown signal.
    pub fn spawn<F>(&mut self, name: &'static str, job: impl FnOnce(Stopping) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let job = job(Stopping(self.stop.subscribe()));
        self.jobs.spawn(async move {
            job.await;
            name
        });
    }

    /// Tells every job to stop and waits for them, up to `grace`; a job
    /// still running then is abandoned (and says so in the log).
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let waited = tokio::time::timeout(grace, async {
            while let Some(done) = self.jobs.join_next().await {
                match done {
                    Ok(name) => tracing::info!(job = name, "background job stopped"),
                    Err(e) => tracing::error!(error = %e, "background job failed"),
                }
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                jobs = self.jobs.len(),
                "background jobs still running at the end of the grace period; abandoned"
            );
            self.jobs.abort_all();
        }
    }
}

/// A job's view of shutdown.
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Waits for the next tick of `ticks`: `true` to run again, `false`
    /// once the gateway is stopping.
    pub async fn tick(&mut self, ticks: &mut Interval) -> bool {
        if *self.0.borrow() {
            return false;
        }
        tokio::select! {
            _ = ticks.tick() => !*self.0.borrow(),
            _ = self.0.changed() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn shutdown_waits_for_the_run_under_way_and_stops_the_next() {
        let (started, finished) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let mut supervisor = Supervisor::default();
        let (s, f) = (Arc::clone(&started), Arc::clone(&finished));
        supervisor.spawn("slow", move |mut stopping| async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            while stopping.tick(&mut ticks).await {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                f.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "a run is under way");
        supervisor.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            1,
            "it was allowed to finish"
        );
        assert_eq!(started.load(Ordering::SeqCst), 1, "and no other began");
    }
}
