//! The durable spool: where events go, on the pod's own volume, while Kafka
//! cannot take them, so their requests can still be answered 200.
//!
//! A directory of segment files, each a run of checksummed records (see
//! [`record`]) named by the sequence number of its first record. One writer
//! thread appends: requests hand it their encoded records, it writes every
//! append waiting at that moment and makes them durable with one
//! `fdatasync` (group commit), then answers them all. Nothing is answered
//! before its bytes are on disk.
//!
//! The replayer ([`crate::sink::spool`]) reads whole segments, oldest
//! first, never the one being written: it asks the writer to seal it when
//! nothing else is left. A segment's replay progress is kept beside it
//! (`.pos`), so a restart replays at most the records of one unfinished
//! batch again; a segment fully acknowledged by Kafka is deleted.
//!
//! Opening a directory recovers what a previous process left: a segment
//! whose last frame was cut short (a write the crash interrupted, never
//! acknowledged) is truncated to its last whole frame; a damaged frame with
//! whole frames after it is copied to `corrupt/` and counted, and the
//! records around it are kept.

pub mod record;

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics as m;
use crate::sink::Message;
use record::{Frame, Record};

/// Where a segment is rolled over to a new file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// Most bytes all segments together may hold; an append past it is
    /// refused ([`SpoolError::Full`]).
    pub max_bytes: u64,
    /// Size at which the segment being written is sealed and a new one
    /// started.
    pub segment_bytes: u64,
}

/// Why an append was not made durable.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool holds `--spool-max-bytes` already.
    #[error("spool is full")]
    Full,
    /// Writing or syncing failed.
    #[error("spool write failed: {0}")]
    Io(#[source] io::Error),
    /// The writer thread is gone (shutdown).
    #[error("spool is closed")]
    Closed,
}

/// A sealed segment, waiting to be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its file.
    pub path: PathBuf,
    /// Its size on disk.
    pub bytes: u64,
    /// Records in it not replayed yet (as of sealing or recovery).
    pub records: u64,
    /// When its first record was written, Unix ms.
    pub oldest_ms: u64,
}

impl Segment {
    /// Where its replay progress is kept.
    fn position_path(&self) -> PathBuf {
        position_path(&self.path)
    }
}

/// Where the replay progress of the segment at `path` is kept.
fn position_path(path: &Path) -> PathBuf {
    path.with_extension("pos")
}

/// How far the segment at `path` was replayed, in bytes (0 when it never
/// was, or the position cannot be read).
fn replayed_to(path: &Path) -> usize {
    fs::read_to_string(position_path(path))
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .unwrap_or(0)
}

/// What opening the directory found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Segments left by a previous process.
    pub segments: usize,
    /// Their records.
    pub records: u64,
    /// Segments whose torn tail was truncated.
    pub torn_tails: usize,
    /// Damaged frames set aside in `corrupt/`.
    pub corrupt: usize,
}

/// What the spool holds, for metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of all segments.
    pub bytes: u64,
    /// Records not replayed yet.
    pub records: u64,
    /// When the oldest of them was written, Unix ms.
    pub oldest_ms: Option<u64>,
}

enum Command {
    Append {
        frames: Vec<u8>,
        first_seq: u64,
        records: u64,
        written_ms: u64,
        reply: tokio::sync::oneshot::Sender<Result<(), SpoolError>>,
    },
    Seal(tokio::sync::oneshot::Sender<()>),
}

/// The segment being written, as the stats see it.
#[derive(Debug, Clone, Copy, Default)]
struct Active {
    records: u64,
    oldest_ms: Option<u64>,
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    bytes: AtomicU64,
    /// An append was refused for room since replay last deleted a segment.
    refused: std::sync::atomic::AtomicBool,
    /// Records in sealed segments (replay subtracts as it goes).
    sealed_records: AtomicU64,
    next_seq: AtomicU64,
    sealed: Mutex<VecDeque<Segment>>,
    active: Mutex<Active>,
    /// `fdatasync` calls made for appends (group commit shares them).
    syncs: AtomicU64,
    /// Woken when an append became durable.
    appended: tokio::sync::Notify,
    /// Records Kafka acknowledged after they were spooled (a request that
    /// stopped waiting at the deadline): the replayer skips them.
    late: Mutex<HashSet<u64>>,
}

/// A spool directory, open for appends and replay.
pub struct Spool {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Held while the spool is open (released when the process ends).
    _lock: File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Spool {
    /// Opens (creating) the directory, recovers what a previous process
    /// left, and starts the writer thread.
    pub fn open(settings: &SpoolSettings) -> io::Result<(Spool, Recovered)> {
        let dir = settings.dir.clone();
        fs::create_dir_all(dir.join("corrupt"))?;
        // One process per directory: a second (a drain job beside a pod
        // on the same volume) would replay and delete under the first.
        let lock = File::create(dir.join("lock"))?;
        if let Err(err) = lock.try_lock() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("the spool directory is in use by another capture process ({err})"),
            ));
        }
        let mut names: Vec<PathBuf> = fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|e| e == "seg"))
            .collect();
        names.sort();
        let mut recovered = Recovered::default();
        let mut sealed = VecDeque::new();
        let mut bytes = 0;
        let mut next_seq = 0;
        for path in names {
            let found = recover_file(&path)?;
            recovered.torn_tails += usize::from(found.torn);
            recovered.corrupt += found.corrupt;
            next_seq = next_seq.max(found.last_seq.map_or(0, |s| s + 1));
            let segment = Segment {
                path,
                bytes: found.bytes,
                records: found.records,
                oldest_ms: found.oldest_ms.unwrap_or_else(now_ms),
            };
            if found.records == 0 {
                remove_segment(&segment)?;
                continue;
            }
            recovered.segments += 1;
            recovered.records += found.records;
            bytes += found.bytes;
            sealed.push_back(segment);
        }
        // Positions of segments that are gone.
        for entry in fs::read_dir(&dir)?.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pos") && !path.with_extension("seg").exists()
            {
                let _ = fs::remove_file(path);
            }
        }
        metrics::gauge!(m::SPOOL_MAX_BYTES).set(settings.max_bytes as f64);
        metrics::counter!(m::SPOOL_CORRUPT_RECORDS).increment(recovered.corrupt as u64);
        metrics::counter!(m::SPOOL_TORN_TAILS).increment(recovered.torn_tails as u64);
        let shared = Arc::new(Shared {
            dir,
            max_bytes: settings.max_bytes,
            bytes: AtomicU64::new(bytes),
            refused: std::sync::atomic::AtomicBool::new(false),
            sealed_records: AtomicU64::new(recovered.records),
            next_seq: AtomicU64::new(next_seq),
            sealed: Mutex::new(sealed),
            active: Mutex::new(Active::default()),
            syncs: AtomicU64::new(0),
            appended: tokio::sync::Notify::new(),
            late: Mutex::new(HashSet::new()),
        });
        let (commands, received) = mpsc::channel();
        let writing = Arc::clone(&shared);
        let segment_bytes = settings.segment_bytes.max(1);
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_loop(&writing, &received, segment_bytes))?;
        let spool = Spool {
            shared,
            commands,
            writer: Some(writer),
            _lock: lock,
        };
        Ok((spool, recovered))
    }

    /// Closes the spool and waits for its writer to finish: what was
    /// appended stays for the next process.
    pub fn close(self) {
        let Spool {
            commands,
            writer,
            _lock: lock,
            ..
        } = self;
        drop(commands);
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        drop(lock);
    }

    /// Appends `messages` and returns once they are durable, with the
    /// sequence numbers they were given.
    pub async fn append(&self, messages: &[Message]) -> Result<Range<u64>, SpoolError> {
        let count = messages.len() as u64;
        let first_seq = self.shared.next_seq.fetch_add(count, Ordering::Relaxed);
        let written_ms = now_ms();
        let size: usize = messages
            .iter()
            .map(|m| record::HEAD + 64 + m.topic.len() + m.payload.len())
            .sum();
        let mut frames = Vec::with_capacity(size);
        for (seq, message) in (first_seq..).zip(messages) {
            record::encode(&mut frames, seq, written_ms, message);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Append {
                frames,
                first_seq,
                records: count,
                written_ms,
                reply,
            })
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)??;
        Ok(first_seq..first_seq + count)
    }

    /// Seals the segment being written, if it holds anything, so the
    /// replayer can take it.
    pub async fn seal(&self) {
        let (reply, sealed) = tokio::sync::oneshot::channel();
        if self.commands.send(Command::Seal(reply)).is_ok() {
            let _ = sealed.await;
        }
    }

    /// The oldest sealed segment.
    pub fn oldest(&self) -> Option<Segment> {
        lock(&self.shared.sealed).front().cloned()
    }

    /// Waits until an append became durable.
    pub async fn appended(&self) {
        self.shared.appended.notified().await;
    }

    /// What the spool holds.
    pub fn stats(&self) -> Stats {
        let active = *lock(&self.shared.active);
        let oldest = lock(&self.shared.sealed).front().map(|s| s.oldest_ms);
        Stats {
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            records: self.shared.sealed_records.load(Ordering::Relaxed) + active.records,
            oldest_ms: oldest.or(active.oldest_ms),
        }
    }

    /// `fdatasync` calls made for appends so far.
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Whether `bytes` more would still fit.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.shared.bytes.load(Ordering::Relaxed) + bytes <= self.shared.max_bytes
    }

    /// Whether requests can still be spooled: no append was refused for
    /// room since replay last made some, and a request's worth more (the
    /// smaller of 1 MiB and a 64th of the spool) would fit. Readiness
    /// fails once they cannot.
    pub fn has_room_for_requests(&self) -> bool {
        !self.shared.refused.load(Ordering::Relaxed)
            && self.has_room((self.shared.max_bytes / 64).min(1 << 20))
    }

    /// Records that Kafka acknowledged after they were spooled: replay
    /// skips them.
    pub fn acknowledged_late(&self, seqs: impl IntoIterator<Item = u64>) {
        lock(&self.shared.late).extend(seqs);
    }

    /// Whether `seq` was acknowledged late (and forgets it).
    fn take_late(&self, seq: u64) -> bool {
        let mut late = lock(&self.shared.late);
        !late.is_empty() && late.remove(&seq)
    }

    /// Reads the records of `segment` from its replay position on: each
    /// with the offset just after it. Damage found now (the disk changed
    /// under a sealed file) is set aside and counted like at recovery.
    pub fn read(&self, segment: &Segment) -> io::Result<Vec<(Record, u64)>> {
        let bytes = fs::read(&segment.path)?;
        let from = Some(replayed_to(&segment.path))
            .filter(|at| *at <= bytes.len())
            .unwrap_or(0);
        let scanned = scan(&bytes, from);
        set_aside(&self.shared.dir, &segment.path, &bytes, &scanned.damaged)?;
        metrics::counter!(m::SPOOL_CORRUPT_RECORDS).increment(scanned.damaged.len() as u64);
        let mut records = Vec::with_capacity(scanned.frames.len());
        let mut skipped = 0;
        for (body, end) in scanned.frames {
            let Some(record) = record::decode(&bytes[body]) else {
                continue;
            };
            if self.take_late(record.seq) {
                skipped += 1;
                continue;
            }
            records.push((record, end as u64));
        }
        if skipped > 0 {
            metrics::counter!(m::SPOOL_DUPLICATES_AVOIDED).increment(skipped);
            self.shared
                .sealed_records
                .fetch_sub(skipped.min(segment.records), Ordering::Relaxed);
        }
        Ok(records)
    }

    /// Records that `replayed` records of `segment` are in Kafka, up to
    /// byte `position`.
    pub fn replayed(&self, segment: &Segment, replayed: u64, position: u64) -> io::Result<()> {
        let _ =
            self.shared
                .sealed_records
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(replayed))
                });
        let path = segment.position_path();
        let temporary = path.with_extension("pos.new");
        let mut file = File::create(&temporary)?;
        file.write_all(position.to_string().as_bytes())?;
        file.sync_data()?;
        fs::rename(&temporary, &path)
    }

    /// Deletes `segment`, wholly replayed (or set aside).
    pub fn finished(&self, segment: &Segment) -> io::Result<()> {
        remove_segment(segment)?;
        let mut sealed = lock(&self.shared.sealed);
        if let Some(at) = sealed.iter().position(|s| s.path == segment.path) {
            let gone = sealed.remove(at).map_or(0, |s| s.bytes);
            self.shared.bytes.fetch_sub(gone, Ordering::Relaxed);
            self.shared.refused.store(false, Ordering::Relaxed);
        }
        // Replay takes one segment at a time, oldest first: the ones left
        // are untouched, so their counts are exact (whatever the finished
        // one's drifted by: damage found only now, late acknowledgements).
        let left: u64 = sealed.iter().map(|s| s.records).sum();
        self.shared.sealed_records.store(left, Ordering::Relaxed);
        if sealed.is_empty() && lock(&self.shared.active).records == 0 {
            // No record can be acknowledged late any more.
            lock(&self.shared.late).clear();
        }
        Ok(())
    }

    /// Sets aside records Kafka refuses for good (too large for the
    /// broker), so they do not block the replay.
    pub fn reject(&self, segment: &Segment, records: &[&Record]) -> io::Result<()> {
        let mut bytes = Vec::new();
        for record in records {
            record::encode(&mut bytes, record.seq, record.written_ms, &record.message);
        }
        let name = format!(
            "{}-rejected-{}.bin",
            segment
                .path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("segment"),
            records.first().map_or(0, |r| r.seq)
        );
        fs::write(self.shared.dir.join("corrupt").join(name), bytes)?;
        metrics::counter!(m::SPOOL_REJECTED_RECORDS).increment(records.len() as u64);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn remove_segment(segment: &Segment) -> io::Result<()> {
    match fs::remove_file(&segment.path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let _ = fs::remove_file(segment.position_path());
    Ok(())
}

/// What a scan of a segment's bytes found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Whole frames: body range and the offset after the frame.
    pub frames: Vec<(Range<usize>, usize)>,
    /// Damaged stretches, each followed by a whole frame or the end.
    pub damaged: Vec<Range<usize>>,
    /// Where the bytes worth keeping end: before a torn tail, else the end.
    pub keep: usize,
}

/// Reads every frame of `bytes` from `from`: whole ones, damaged stretches
/// (from a bad frame to the next whole one), and a torn tail (a frame cut
/// short with no whole frame after it), which is not kept.
pub fn scan(bytes: &[u8], from: usize) -> Scanned {
    let mut scanned = Scanned {
        keep: bytes.len(),
        ..Scanned::default()
    };
    let mut at = from;
    while at < bytes.len() {
        match record::frame_at(bytes, at) {
            Frame::Whole { body, next } => {
                scanned.frames.push((body, next));
                at = next;
            }
            frame => match record::resync(bytes, at + 1) {
                Some(next) => {
                    scanned.damaged.push(at..next);
                    at = next;
                }
                None if frame == Frame::Short => {
                    scanned.keep = at;
                    break;
                }
                None => {
                    scanned.damaged.push(at..bytes.len());
                    break;
                }
            },
        }
    }
    scanned
}

/// What recovering one segment file found.
struct FileFound {
    bytes: u64,
    records: u64,
    last_seq: Option<u64>,
    oldest_ms: Option<u64>,
    torn: bool,
    corrupt: usize,
}

/// Checks a segment left by a previous process: truncates a torn tail,
/// sets damaged frames aside, and counts its records from its replay
/// position on.
fn recover_file(path: &Path) -> io::Result<FileFound> {
    let bytes = fs::read(path)?;
    let scanned = scan(&bytes, 0);
    let torn = scanned.keep < bytes.len();
    let dir = path.parent().unwrap_or(Path::new("."));
    if torn {
        tracing::warn!(segment = %path.display(), kept = scanned.keep, cut = bytes.len() - scanned.keep, "spool segment ends in a write cut short (never acknowledged); truncated");
        // Kept too: a tail cut short is a write the crash interrupted, but
        // a damaged length at the very end would read the same.
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("segment");
        let target = dir
            .join("corrupt")
            .join(format!("{stem}-{}.torn", scanned.keep));
        fs::write(target, &bytes[scanned.keep..])?;
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(scanned.keep as u64)?;
        file.sync_all()?;
    }
    set_aside(dir, path, &bytes, &scanned.damaged)?;
    let position = replayed_to(path);
    let mut found = FileFound {
        bytes: scanned.keep as u64,
        records: 0,
        last_seq: None,
        oldest_ms: None,
        torn,
        corrupt: scanned.damaged.len(),
    };
    for (body, end) in scanned.frames {
        let Some(record) = record::decode(&bytes[body]) else {
            continue;
        };
        found.last_seq = Some(found.last_seq.map_or(record.seq, |s| s.max(record.seq)));
        if end > position {
            found.records += 1;
            found.oldest_ms.get_or_insert(record.written_ms);
        }
    }
    Ok(found)
}

/// Copies each damaged stretch of a segment to `corrupt/`, logged: kept
/// for a person to look at, never silently skipped.
fn set_aside(dir: &Path, segment: &Path, bytes: &[u8], damaged: &[Range<usize>]) -> io::Result<()> {
    let stem = segment
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("segment");
    for range in damaged {
        let target = dir
            .join("corrupt")
            .join(format!("{stem}-{}.bin", range.start));
        if !target.exists() {
            fs::write(&target, &bytes[range.clone()])?;
        }
        tracing::error!(
            segment = %segment.display(),
            offset = range.start,
            bytes = range.len(),
            kept = %target.display(),
            "damaged spool record set aside"
        );
    }
    Ok(())
}

/// The segment being written.
struct Writing {
    file: File,
    segment: Segment,
}

/// The writer thread: takes every command waiting, writes the appends,
/// syncs once, answers.
fn write_loop(shared: &Shared, commands: &mpsc::Receiver<Command>, segment_bytes: u64) {
    let mut writing: Option<Writing> = None;
    while let Ok(first) = commands.recv() {
        let mut waiting = Vec::new();
        let mut seals = Vec::new();
        for command in std::iter::once(first).chain(commands.try_iter()) {
            match command {
                Command::Seal(reply) => seals.push(reply),
                Command::Append {
                    frames,
                    first_seq,
                    records,
                    written_ms,
                    reply,
                } => {
                    let size = frames.len() as u64;
                    if shared.bytes.load(Ordering::Relaxed) + size > shared.max_bytes {
                        metrics::counter!(m::SPOOL_FULL).increment(1);
                        shared.refused.store(true, Ordering::Relaxed);
                        let _ = reply.send(Err(SpoolError::Full));
                        continue;
                    }
                    if writing.as_ref().is_some_and(|w| {
                        w.segment.bytes > 0 && w.segment.bytes + size > segment_bytes
                    }) {
                        seal(shared, &mut writing, &mut waiting);
                    }
                    match write(shared, &mut writing, &frames, first_seq, written_ms) {
                        Ok(()) => {
                            waiting.push((reply, records, written_ms));
                        }
                        Err(err) => {
                            let _ = reply.send(Err(SpoolError::Io(err)));
                        }
                    }
                }
            }
        }
        sync(shared, &mut writing, &mut waiting);
        if !seals.is_empty() {
            seal(shared, &mut writing, &mut waiting);
            for reply in seals {
                let _ = reply.send(());
            }
        }
    }
    // The spool is gone: what is written stays for the next process.
    if let Some(w) = writing {
        let _ = w.file.sync_data();
    }
}

/// Appends written and not yet synced: who to answer, their records and
/// when they were written.
type Waiting = Vec<(
    tokio::sync::oneshot::Sender<Result<(), SpoolError>>,
    u64,
    u64,
)>;

fn write(
    shared: &Shared,
    writing: &mut Option<Writing>,
    frames: &[u8],
    first_seq: u64,
    written_ms: u64,
) -> io::Result<()> {
    if writing.is_none() {
        let path = shared.dir.join(format!("{first_seq:020}.seg"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        // The new name must survive a crash too.
        File::open(&shared.dir)?.sync_all()?;
        *writing = Some(Writing {
            file,
            segment: Segment {
                path,
                bytes: 0,
                records: 0,
                oldest_ms: written_ms,
            },
        });
    }
    let Some(w) = writing.as_mut() else {
        return Err(io::Error::other("no segment"));
    };
    if let Err(err) = w.file.write_all(frames) {
        // Leave no partial frame behind for the next append.
        let _ = w.file.set_len(w.segment.bytes);
        return Err(err);
    }
    w.segment.bytes += frames.len() as u64;
    // Counted at once, so the next append of the same group is checked
    // against it (`--spool-max-bytes` holds however many arrive together).
    shared
        .bytes
        .fetch_add(frames.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Makes the appends written since the last sync durable and answers them.
/// A failed sync leaves the segment in an unknown state: it is sealed as it
/// is (what reached the disk is replayed; the requests were told to send
/// again, so an event may arrive twice, never not at all).
fn sync(shared: &Shared, writing: &mut Option<Writing>, waiting: &mut Waiting) {
    if waiting.is_empty() {
        return;
    }
    let Some(w) = writing.as_mut() else {
        return;
    };
    let synced = w.file.sync_data();
    shared.syncs.fetch_add(1, Ordering::Relaxed);
    let failed = synced.is_err();
    for (reply, records, written_ms) in waiting.drain(..) {
        match &synced {
            Ok(()) => {
                let mut active = lock(&shared.active);
                active.records += records;
                active.oldest_ms.get_or_insert(written_ms);
                drop(active);
                metrics::counter!(m::SPOOL_APPENDED).increment(records);
                let _ = reply.send(Ok(()));
            }
            Err(err) => {
                let _ = reply.send(Err(SpoolError::Io(io::Error::new(
                    err.kind(),
                    err.to_string(),
                ))));
            }
        }
    }
    if failed {
        tracing::error!(error = ?synced.err(), "spool sync failed; the segment is sealed as it is");
        seal(shared, writing, &mut Vec::new());
    } else {
        shared.appended.notify_waiters();
    }
}

/// Seals the segment being written (after syncing what waits), handing it
/// to the replayer.
fn seal(shared: &Shared, writing: &mut Option<Writing>, waiting: &mut Waiting) {
    sync(shared, writing, waiting);
    let Some(w) = writing.take() else {
        return;
    };
    let _ = w.file.sync_data();
    let active = std::mem::take(&mut *lock(&shared.active));
    if w.segment.bytes == 0 {
        let _ = fs::remove_file(&w.segment.path);
        return;
    }
    let mut segment = w.segment;
    segment.records = active.records;
    segment.oldest_ms = active.oldest_ms.unwrap_or(segment.oldest_ms);
    // Under the lock `Spool::finished` recounts under.
    let mut sealed = lock(&shared.sealed);
    shared
        .sealed_records
        .fetch_add(active.records, Ordering::Relaxed);
    sealed.push_back(segment);
}

#[cfg(test)]
mod tests;
