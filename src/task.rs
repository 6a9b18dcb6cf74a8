//! Owned tasks and timers. Every task the agent starts is held by a [`Task`], which aborts it when dropped, so no
//! task outlives the component that started it; the agent keeps the ones it depends on in one [`Tasks`] set, which
//! reports the first of them to end early ([`Tasks::died`]) and awaits them all, within a bound, at shutdown. A
//! [`Deadline`] is a timer that can be set, moved and cleared, and awaited in a `select!` arm whether or not it is set.
//!
//! Nothing here knows about Kubernetes or the network.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A spawned task that is aborted when this handle is dropped.
#[derive(Debug)]
pub struct Task<T> {
    name: &'static str,
    handle: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Task<T> {
    /// Spawns `future` on the current runtime.
    pub fn spawn(name: &'static str, future: impl Future<Output = T> + Send + 'static) -> Task<T> {
        Task {
            name,
            handle: Some(tokio::spawn(future)),
        }
    }
}

impl Task<()> {
    /// Runs `future` on a thread of its own, with a single-threaded runtime, so that nothing on the caller's runtime
    /// (a long synchronous pass of the agent's loop) can delay it: for timing-critical work such as the failure
    /// detector. The task ends when the future does, or when the thread dies (a panic); dropping it stops the future
    /// at its next await point, as an abort would, and the thread exits.
    pub fn spawn_on_thread(
        name: &'static str,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Task<()>> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = future => {}
                        _ = stop_rx => {}
                    }
                });
                let _ = done_tx.send(());
            })?;
        Ok(Task::spawn(name, async move {
            // Dropped with this task, which stops the thread's future.
            let _stop = stop_tx;
            let _ = done_rx.await;
        }))
    }
}

impl<T> Task<T> {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits at most `limit` for the task to end on its own, then aborts it. Returns whether it ended in time.
    pub async fn join_within(mut self, limit: Duration) -> bool {
        let Some(mut handle) = self.handle.take() else {
            return true;
        };
        match tokio::time::timeout(limit, &mut handle).await {
            Ok(_) => true,
            Err(_) => {
                handle.abort();
                false
            }
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// The tasks a component depends on. Each is expected to run until the component stops; one that ends before is a
/// fault the component must not run on with ([`Tasks::died`]). Dropping the set aborts them all.
#[derive(Debug)]
pub struct Tasks {
    tasks: Vec<Task<()>>,
    ended_tx: mpsc::UnboundedSender<&'static str>,
    ended: mpsc::UnboundedReceiver<&'static str>,
}

impl Default for Tasks {
    fn default() -> Tasks {
        let (ended_tx, ended) = mpsc::unbounded_channel();
        Tasks {
            tasks: Vec::new(),
            ended_tx,
            ended,
        }
    }
}

/// Says, when dropped, that its task ended: after the future returned, panicked or was aborted.
struct Ended {
    name: &'static str,
    tx: mpsc::UnboundedSender<&'static str>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.tx.send(self.name);
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns `future` as a task the component depends on.
    pub fn spawn(&mut self, name: &'static str, future: impl Future<Output = ()> + Send + 'static) {
        let ended = Ended {
            name,
            tx: self.ended_tx.clone(),
        };
        self.tasks.push(Task::spawn(name, async move {
            let _ended = ended;
            future.await
        }));
    }

    /// Runs `future` as a task the component depends on, on a thread of its own (see [`Task::spawn_on_thread`]).
    pub fn spawn_on_thread(
        &mut self,
        name: &'static str,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let ended = Ended {
            name,
            tx: self.ended_tx.clone(),
        };
        self.tasks.push(Task::spawn_on_thread(name, async move {
            let _ended = ended;
            future.await
        })?);
        Ok(())
    }

    /// Resolves with the name of the first task that ended (returned, panicked or was aborted); never while all
    /// run. Cancel-safe: meant for a `select!` arm beside the component's other inputs.
    pub async fn died(&mut self) -> &'static str {
        match self.ended.recv().await {
            Some(name) => name,
            // The set holds a sender itself, so this cannot happen; wait forever rather than report a false death.
            None => std::future::pending().await,
        }
    }

    /// Waits, until `limit` has passed in all, for every task to end on its own (they were told to stop), and aborts
    /// the ones still running then. Returns the names of those aborted.
    pub async fn shutdown(self, limit: Duration) -> Vec<&'static str> {
        let until = Instant::now() + limit;
        let mut late = Vec::new();
        for task in self.tasks {
            let name = task.name();
            let left = until.saturating_duration_since(Instant::now());
            if !task.join_within(left).await {
                late.push(name);
            }
        }
        late
    }
}

/// A timer that may be unset. Awaiting an unset one never resolves, so it can stand in a `select!` arm always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadline {
    at: Option<Instant>,
}

impl Deadline {
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    pub fn is_set(&self) -> bool {
        self.at.is_some()
    }

    pub fn set(&mut self, at: Instant) {
        self.at = Some(at);
    }

    pub fn clear(&mut self) {
        self.at = None;
    }

    /// Resolves once the deadline has passed; never while it is unset. Does not clear it.
    pub async fn elapsed(&self) {
        sleep_until(self.at).await
    }
}

/// When to try again after failures: the first wait after a success, doubling after each failure up to a cap.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    at: Option<Instant>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
            at: None,
        }
    }

    /// Whether a try may run now: no failure waits.
    pub fn due(&self) -> bool {
        self.at.is_none_or(|at| at <= Instant::now())
    }

    /// A try went through: the next failure waits the first wait again.
    pub fn succeeded(&mut self) {
        self.at = None;
        self.next = self.first;
    }

    /// A try failed: returns how long until the next one, and doubles the wait after it.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.at = Some(Instant::now() + wait);
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// Resolves when the wait after a failure is over; never while none is pending.
    pub async fn elapsed(&self) {
        sleep_until(self.at).await
    }
}

/// Sleeps until `at`, or forever when it is None.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A periodic tick that, after a stall, resumes at the period rather than firing the missed ticks in a burst.
pub fn interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_its_cap_and_a_success_resets_it() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        assert!(b.due());
        let waits: Vec<u64> = (0..4).map(|_| b.failed().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 4]);
        assert!(!b.due());
        let start = Instant::now();
        b.elapsed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        assert!(b.due());
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_dropped_task_is_aborted() {
        let dropped = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Flag(dropped.clone());
        let task = Task::spawn("forever", async move {
            let _flag = flag;
            std::future::pending::<()>().await
        });
        tokio::task::yield_now().await;
        assert!(!dropped.load(Ordering::SeqCst));
        drop(task);
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the task's future was not dropped after its handle was");
    }

    #[tokio::test(start_paused = true)]
    async fn died_names_the_task_that_ended_and_waits_while_all_run() {
        let mut tasks = Tasks::new();
        tasks.spawn("steady", std::future::pending());
        tasks.spawn("short", async {
            tokio::time::sleep(Duration::from_secs(3)).await;
        });
        let start = Instant::now();
        assert_eq!(tasks.died().await, "short");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_counts_as_dead() {
        let mut tasks = Tasks::new();
        tasks.spawn("steady", std::future::pending());
        tasks.spawn("panics", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("on purpose")
        });
        assert_eq!(tasks.died().await, "panics");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_tasks_that_stop_and_aborts_the_rest() {
        let mut tasks = Tasks::new();
        tasks.spawn("stops", async {
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        tasks.spawn("hangs", std::future::pending());
        let start = Instant::now();
        let late = tasks.shutdown(Duration::from_secs(2)).await;
        assert_eq!(late, ["hangs"]);
        assert!(start.elapsed() <= Duration::from_millis(2001));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_only_when_set() {
        let mut deadline = Deadline::default();
        let unset = tokio::time::timeout(Duration::from_secs(3600), deadline.elapsed()).await;
        assert!(unset.is_err(), "an unset deadline fired");
        let now = Instant::now();
        deadline.set(now + Duration::from_secs(5));
        deadline.set(now + Duration::from_secs(2));
        assert_eq!(
            deadline.at(),
            Some(now + Duration::from_secs(2)),
            "the last set wins"
        );
        deadline.elapsed().await;
        assert_eq!(Instant::now(), now + Duration::from_secs(2));
        deadline.clear();
        assert!(!deadline.is_set());
    }

    /// A future on its own thread keeps its timers while the caller's single-threaded runtime is blocked by a long
    /// synchronous step; a task on that runtime stands still meanwhile. Dropping the task stops the thread's future.
    #[tokio::test]
    async fn a_task_on_its_own_thread_runs_while_the_runtime_is_blocked() {
        use std::sync::atomic::AtomicU64;
        let ticker = |ticks: Arc<AtomicU64>| async move {
            let mut every = tokio::time::interval(Duration::from_millis(5));
            loop {
                every.tick().await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        };
        let (own, shared) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let on_thread = Task::spawn_on_thread("ticker", ticker(own.clone())).unwrap();
        let on_runtime = Task::spawn("ticker", ticker(shared.clone()));
        // Let both start, then block this runtime's only thread for 300 ms, as a long pass would.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (own0, shared0) = (own.load(Ordering::SeqCst), shared.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(300));
        let (own1, shared1) = (own.load(Ordering::SeqCst), shared.load(Ordering::SeqCst));
        assert!(
            own1 - own0 >= 20,
            "the thread's task ticked {} times in 300 ms",
            own1 - own0
        );
        assert_eq!(shared1, shared0, "a task on the blocked runtime ran");
        drop(on_thread);
        drop(on_runtime);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stopped = own.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            own.load(Ordering::SeqCst),
            stopped,
            "the dropped task still runs"
        );
    }

    #[tokio::test]
    async fn a_thread_task_that_panics_ends() {
        let task = Task::spawn_on_thread("panics", async { panic!("on purpose") }).unwrap();
        assert!(
            task.join_within(Duration::from_secs(5)).await,
            "the task did not end"
        );
    }
}
