//! Work spread over a few threads: a pass's per-task reads, looks and writes.

use std::sync::{Arc, Mutex, mpsc};

/// Threads for per-task work that mostly waits on the disk (registry reads, renames,
/// fsyncs): more than cores keep the disk busy (`cargo bench --bench pass`, 2 cores:
/// 10,000 agents in 2.2-2.5 s with 8 threads, 2.5-3.4 s with 4).
/// `AGENT_REAPER_IO_THREADS` overrides it.
pub(crate) fn io_threads() -> usize {
    std::env::var("AGENT_REAPER_IO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 8)
                * 4
        })
        .max(1)
}

/// `f` of every item, in order, on this thread, letting go of `items`' vector as they are
/// used: they are taken from its end and the vector moved into a quarter of its size
/// whenever three quarters are used (a vector is let go only whole). One task's 40,000
/// pending agents (7 MB) were held until the last of their views (29 MB) was made.
pub(crate) fn map_letting_go<T, R>(mut items: Vec<T>, mut f: impl FnMut(T) -> R) -> Vec<R> {
    let mut out = Vec::with_capacity(items.len());
    while let Some(item) = items.pop() {
        out.push(f(item));
        if items.capacity() > 64 && items.len() <= items.capacity() / 4 {
            items.shrink_to_fit();
        }
    }
    out.reverse();
    out
}

/// `f` of every item, on up to `threads` threads (each a contiguous run of items), in the
/// items' order. One item or one thread: on this thread. A panic on a worker is raised
/// again here.
pub(crate) fn map_ordered<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    if items.len() <= 1 || threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let mut parts: Vec<Vec<T>> = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        parts.push(items.by_ref().take(chunk).collect());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || part.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Threads kept for a scope's many short jobs (a pass's prompt deletions, a batch per
/// task): without a thread started and ended for each batch. 100 tasks of 100 agents
/// started and ended 600 such threads a pass, and each thread's end returned its heap to
/// the system (`madvise` and the page faults after it: 14% of the pass's CPU).
pub(crate) struct Pool<'scope> {
    jobs: mpsc::Sender<Job<'scope>>,
}

type Job<'scope> = Box<dyn FnOnce() + Send + 'scope>;

/// A job's result, when it is done.
pub(crate) struct Pending<R>(mpsc::Receiver<std::thread::Result<R>>);

impl<'scope> Pool<'scope> {
    /// `threads` workers in `scope`; they end when the pool is dropped (before the scope's
    /// end, which joins them).
    pub(crate) fn new<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        threads: usize,
    ) -> Self {
        let (jobs, queue) = mpsc::channel::<Job<'scope>>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            scope.spawn(move || {
                loop {
                    // The lock is held only while waiting for the next job, not while running it.
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match next {
                        Ok(job) => job(),
                        Err(_) => break,
                    }
                }
            });
        }
        Pool { jobs }
    }

    /// Runs `f` on a worker.
    pub(crate) fn run<R: Send + 'scope>(
        &self,
        f: impl FnOnce() -> R + Send + 'scope,
    ) -> Pending<R> {
        let (done, result) = mpsc::sync_channel(1);
        let job: Job<'scope> = Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        self.jobs
            .send(job)
            .expect("the pool's workers live as long as the pool");
        Pending(result)
    }
}

impl<R> Pending<R> {
    /// Waits for the result; a panic in the job is raised again here.
    pub(crate) fn wait(self) -> R {
        match self.0.recv().expect("a pool job always answers") {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Items are taken from the end while their vector shrinks: each is mapped once, and
    /// the results come back in the items' order.
    #[test]
    fn letting_go_maps_every_item_once_in_order() {
        let items: Vec<String> = (0..10_000).map(|n| n.to_string()).collect();
        let mut calls = 0;
        let out = super::map_letting_go(items, |x| {
            calls += 1;
            x.parse::<u32>().unwrap() * 2
        });
        assert_eq!(out, (0..10_000).map(|x| x * 2).collect::<Vec<_>>());
        assert_eq!(calls, 10_000);
        assert!(super::map_letting_go(Vec::<u8>::new(), |x| x).is_empty());
    }
    use super::*;

    #[test]
    fn a_pool_runs_many_jobs_on_its_few_threads_and_gives_each_its_result() {
        let data: Vec<u32> = (0..50).collect();
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        std::thread::scope(|scope| {
            let pool = Pool::new(scope, 3);
            let pending: Vec<_> = data
                .iter()
                .map(|x| {
                    let threads = &threads;
                    pool.run(move || {
                        threads.lock().unwrap().insert(std::thread::current().id());
                        x * 3
                    })
                })
                .collect();
            let got: Vec<u32> = pending.into_iter().map(Pending::wait).collect();
            assert_eq!(got, data.iter().map(|x| x * 3).collect::<Vec<_>>());
        });
        let used = threads.into_inner().unwrap().len();
        assert!((1..=3).contains(&used), "{used} threads for 50 jobs");
    }

    #[test]
    #[should_panic(expected = "job 7")]
    fn a_panic_in_a_pool_job_reaches_whoever_waits_for_it() {
        std::thread::scope(|scope| {
            let pool = Pool::new(scope, 2);
            let pending: Vec<_> = (0..10u32)
                .map(|x| pool.run(move || assert_ne!(x, 7, "job 7")))
                .collect();
            pending.into_iter().for_each(Pending::wait);
        });
    }

    #[test]
    fn results_come_back_in_the_items_order_whatever_the_threads() {
        let items: Vec<u32> = (0..103).collect();
        for threads in [1, 2, 7, 200] {
            let got = map_ordered(items.clone(), threads, |x| x * 2);
            assert_eq!(
                got,
                items.iter().map(|x| x * 2).collect::<Vec<_>>(),
                "{threads}"
            );
        }
    }

    #[test]
    fn the_work_is_spread_over_more_than_one_thread() {
        let items: Vec<u32> = (0..8).collect();
        let ids = map_ordered(items, 4, |_| std::thread::current().id());
        let distinct: std::collections::HashSet<_> = ids.into_iter().collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    #[should_panic(expected = "item 5")]
    fn a_panic_on_a_worker_reaches_the_caller() {
        let items: Vec<u32> = (0..8).collect();
        map_ordered(items, 4, |x| assert_ne!(x, 5, "item 5"));
    }
}
