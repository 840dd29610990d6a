//! Work spread over a few threads: a pass's per-task reads, looks and writes.

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

#[cfg(test)]
mod tests {
    use super::*;

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
