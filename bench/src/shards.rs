//! The load threads.

use crate::BoxError;

/// The load generator's threads, each a single-threaded runtime.
///
/// The load generator shares the machine with what it measures. On tokio's work-stealing
/// runtime a caller's task and the task of the connection it sends on land on different threads,
/// and a call then wakes the other thread; with each caller kept on the thread that
/// owns its connection, the gRPC client spent about 10% less CPU per call at 100 callers and
/// 20% less at one (bench/notes.md, finding 12). One thread in all would be cheaper still, but
/// it slows 200 direct connections down by a third: one per core.
pub struct Shards {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    pub fn start(count: usize) -> std::io::Result<Shards> {
        let mut shards = Shards {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            shards.handles.push(runtime.handle().clone());
            shards.stops.push(stop);
            // The runtime runs the tasks given to its handle while its thread waits here, and
            // drops what is left (callers, connections) when the thread ends.
            shards.threads.push(
                std::thread::Builder::new()
                    .name(format!("load-{index}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    })?,
            );
        }
        Ok(shards)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn handle(&self, shard: usize) -> &tokio::runtime::Handle {
        &self.handles[shard % self.len()]
    }

    /// Runs `work` on load thread `shard` (anything it spawns stays there) and waits for it.
    pub async fn on<T: Send + 'static>(
        &self,
        shard: usize,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, BoxError> {
        self.handle(shard)
            .spawn(work)
            .await
            .map_err(|e| format!("load thread {shard}: {e}").into())
    }

    pub fn stop(self) {
        drop(self.stops);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}
