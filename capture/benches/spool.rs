//! Spool bench: how fast events can be made durable, and at what CPU, with
//! capture's own segmented log beside redb (a well-kept embedded database
//! with durable commits) doing the same job.
//!
//! Each round, `SPOOL_BENCH_WRITERS` concurrent writers append
//! `SPOOL_BENCH_EVENTS` messages (a 1.2 KB `$pageview` each, built before
//! the clock starts) in appends of
//! `batch` messages, every append durable before the next (as a request
//! waits before its 200):
//!
//! - `ours`: [`Spool::append`] from async tasks; the writer thread syncs
//!   once for every append waiting (group commit);
//! - `redb`: one write transaction per append from a thread per writer,
//!   committed with redb's default durability (synced), the records framed
//!   by the same encoder;
//!
//! then reads ours back the way replay does. It prints events/s, the
//! process's CPU per 1,000 events, and for ours the appends per sync.
//! Nothing is asserted.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SPOOL_BENCH_EVENTS` | 100000 | events per round |
//! | `SPOOL_BENCH_WRITERS` | 16 | concurrent writers |
//! | `SPOOL_BENCH_BATCHES` | `1,100` | events per append, one round each |
//! | `SPOOL_BENCH_DIR` | `target/spool-bench` | where the files go (the disk measured) |
//! | `SPOOL_BENCH_STORES` | `ours,redb` | which stores |
//!
//! Run with `cargo bench -p capture --bench spool`.

#[path = "shared/pageview.rs"]
mod pageview;
#[path = "shared/proc.rs"]
#[allow(dead_code)] // peak_rss_kib: the other benches use it
mod proc;
#[path = "shared/settings.rs"]
mod settings;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use capture::event::header;
use capture::route::DataType;
use capture::sink::Message;
use capture::spool::{Spool, SpoolSettings, record};
use settings::env_or;

fn message(n: u64) -> Message {
    Message {
        kind: DataType::Events,
        topic: Arc::from("clickhouse_events"),
        key: Some(format!("phc_bench:user-{}", n % 5000)),
        headers: vec![
            (header::TOKEN, "phc_bench".into()),
            (header::DISTINCT_ID, format!("user-{}", n % 5000)),
            (header::UUID, format!("0190b0e1-0000-7000-8000-{n:012}")),
            (header::TIMESTAMP, "1717243200123".into()),
        ],
        payload: pageview::event(n),
    }
}

/// What one round measured.
struct Round {
    events: u64,
    wall: Duration,
    cpu_ticks: u64,
    syncs: Option<u64>,
    appends: u64,
}

impl Round {
    fn print(&self, store: &str, batch: u64, ticks_per_second: f64) {
        let cpu_ms = self.cpu_ticks as f64 * 1000.0 / ticks_per_second;
        let per_sync = self.syncs.map_or_else(String::new, |s| {
            format!(
                ", {:.1} appends per sync",
                self.appends as f64 / s.max(1) as f64
            )
        });
        println!(
            "  {store:<5} batch {batch:>4}: {:>9.0} events/s, {:>6.1} ms CPU per 1,000 events, {:.2}s{per_sync}",
            self.events as f64 / self.wall.as_secs_f64(),
            cpu_ms * 1000.0 / self.events as f64,
            self.wall.as_secs_f64(),
        );
    }
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("bench directory");
    path
}

fn ours(dir: &Path, all: &Arc<Vec<Message>>, writers: u64, batch: u64) -> (Round, Spool) {
    let events = all.len() as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (spool, _) = Spool::open(&SpoolSettings {
        dir: fresh(dir, "ours"),
        max_bytes: u64::MAX / 2,
        segment_bytes: 16 << 20,
    })
    .expect("spool");
    let spool = Arc::new(spool);
    let next = Arc::new(AtomicU64::new(0));
    let appends = Arc::new(AtomicU64::new(0));
    let pid = std::process::id();
    let (cpu, started) = (proc::cpu_time_ticks(pid), Instant::now());
    runtime.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let (spool, next, appends) =
                    (Arc::clone(&spool), Arc::clone(&next), Arc::clone(&appends));
                let all = Arc::clone(all);
                tokio::spawn(async move {
                    loop {
                        let first = next.fetch_add(batch, Ordering::Relaxed);
                        if first >= events {
                            return;
                        }
                        let messages = &all[first as usize..(first + batch).min(events) as usize];
                        spool.append(messages).await.expect("durable");
                        appends.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("writer");
        }
    });
    let round = Round {
        events,
        wall: started.elapsed(),
        cpu_ticks: proc::cpu_time_ticks(pid) - cpu,
        syncs: Some(spool.syncs()),
        appends: appends.load(Ordering::Relaxed),
    };
    drop(runtime);
    let spool = Arc::try_unwrap(spool).unwrap_or_else(|_| panic!("spool still shared"));
    (round, spool)
}

fn redb(dir: &Path, all: &Arc<Vec<Message>>, writers: u64, batch: u64) -> Round {
    let events = all.len() as u64;
    const TABLE: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("spool");
    let path = fresh(dir, "redb").join("spool.redb");
    let db = Arc::new(redb::Database::create(&path).expect("redb"));
    let next = Arc::new(AtomicU64::new(0));
    let appends = Arc::new(AtomicU64::new(0));
    let pid = std::process::id();
    let (cpu, started) = (proc::cpu_time_ticks(pid), Instant::now());
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (db, next, appends) = (Arc::clone(&db), Arc::clone(&next), Arc::clone(&appends));
            let all = Arc::clone(all);
            std::thread::spawn(move || {
                let mut frames = Vec::new();
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= events {
                        return;
                    }
                    let txn = db.begin_write().expect("transaction");
                    {
                        let mut table = txn.open_table(TABLE).expect("table");
                        for n in first..(first + batch).min(events) {
                            frames.clear();
                            record::encode(&mut frames, n, 0, &all[n as usize]);
                            table.insert(n, frames.as_slice()).expect("insert");
                        }
                    }
                    txn.commit().expect("durable commit");
                    appends.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer");
    }
    Round {
        events,
        wall: started.elapsed(),
        cpu_ticks: proc::cpu_time_ticks(pid) - cpu,
        syncs: None,
        appends: appends.load(Ordering::Relaxed),
    }
}

/// Reads every segment back as the replayer does (sealing the last one
/// first, as the replayer does when nothing else is left).
async fn read_back(spool: &Spool, ticks_per_second: f64) {
    spool.seal().await;
    let pid = std::process::id();
    let (cpu, started) = (proc::cpu_time_ticks(pid), Instant::now());
    let mut records = 0u64;
    while let Some(segment) = spool.oldest() {
        records += spool.read(&segment).expect("readable").len() as u64;
        spool.finished(&segment).expect("deleted");
    }
    let wall = started.elapsed();
    let cpu_ms = (proc::cpu_time_ticks(pid) - cpu) as f64 * 1000.0 / ticks_per_second;
    println!(
        "  ours  read back: {:>9.0} events/s, {:>6.1} ms CPU per 1,000 events ({records} records)",
        records as f64 / wall.as_secs_f64(),
        cpu_ms * 1000.0 / records.max(1) as f64,
    );
}

fn main() {
    let events: u64 = env_or("SPOOL_BENCH_EVENTS", 100_000);
    let writers: u64 = env_or("SPOOL_BENCH_WRITERS", 16);
    let batches: String = env_or("SPOOL_BENCH_BATCHES", "1,100".to_owned());
    let stores: String = env_or("SPOOL_BENCH_STORES", "ours,redb".to_owned());
    let dir = PathBuf::from(env_or(
        "SPOOL_BENCH_DIR",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/spool-bench").to_owned(),
    ));
    let ticks = proc::clock_ticks();
    // Built before any timing: the rounds measure the stores, not this.
    let all: Arc<Vec<Message>> = Arc::new((0..events).map(message).collect());
    println!(
        "spool bench: {events} events of {} bytes, {writers} writers, in {}",
        pageview::event(0).len(),
        dir.display()
    );
    for batch in batches
        .split(',')
        .map(|b| b.trim().parse::<u64>().expect("a batch size"))
    {
        for store in stores.split(',').map(str::trim) {
            match store {
                "ours" => {
                    let (round, spool) = ours(&dir, &all, writers, batch);
                    round.print("ours", batch, ticks);
                    // The runtime that appended is gone; reading needs none.
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(read_back(&spool, ticks));
                }
                "redb" => redb(&dir, &all, writers, batch).print("redb", batch, ticks),
                other => panic!("unknown store {other:?} (ours, redb)"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
