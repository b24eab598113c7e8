use std::sync::Arc;

use super::*;
use crate::event::header;
use crate::route::DataType;

fn message(n: usize) -> Message {
    Message {
        kind: DataType::Events,
        topic: Arc::from("events"),
        key: Some(format!("phc_t:user-{}", n % 7)),
        headers: vec![
            (header::TOKEN, "phc_t".into()),
            (header::UUID, format!("uuid-{n}")),
        ],
        payload: format!("{{\"uuid\":\"uuid-{n}\",\"n\":{n}}}"),
    }
}

fn settings(dir: &Path) -> SpoolSettings {
    SpoolSettings {
        dir: dir.to_owned(),
        max_bytes: 64 << 20,
        segment_bytes: DEFAULT_SEGMENT_BYTES,
    }
}

fn uuids(records: &[(Record, u64)]) -> Vec<String> {
    records
        .iter()
        .map(|(r, _)| r.message.headers[1].1.clone())
        .collect()
}

/// Every record of every sealed segment, oldest first.
fn all(spool: &Spool) -> Vec<String> {
    lock(&spool.shared.sealed)
        .iter()
        .flat_map(|segment| uuids(&spool.read(segment).expect("readable")))
        .collect()
}

/// A fresh spool holding `uuid-0` to `uuid-2`, appended together.
async fn three_appended() -> (tempfile::TempDir, Spool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(&settings(dir.path())).expect("opens");
    spool
        .append(&[message(0), message(1), message(2)])
        .await
        .expect("durable");
    (dir, spool)
}

fn corrupt_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("corrupt")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn appended_records_survive_a_restart_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, recovered) = Spool::open(&settings(dir.path())).expect("opens");
    assert_eq!(recovered, Recovered::default());
    let first = spool
        .append(&[message(0), message(1)])
        .await
        .expect("durable");
    let second = spool.append(&[message(2)]).await.expect("durable");
    assert_eq!((first, second), (0..2, 2..3));
    assert_eq!(spool.stats().records, 3);
    spool.close();

    let (spool, recovered) = Spool::open(&settings(dir.path())).expect("reopens");
    assert_eq!(recovered.records, 3);
    assert_eq!(recovered.segments, 1);
    assert_eq!(all(&spool), ["uuid-0", "uuid-1", "uuid-2"]);
    let next = spool.append(&[message(3)]).await.expect("durable");
    assert_eq!(next, 3..4, "numbers go on after the recovered ones");
    assert_eq!(spool.stats().records, 4);
}

#[tokio::test]
async fn a_segment_cut_at_every_byte_keeps_exactly_its_whole_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(&settings(dir.path())).expect("opens");
    for n in 0..3 {
        spool.append(&[message(n)]).await.expect("durable");
    }
    spool.close();
    let path = dir.path().join(format!("{:020}.seg", 0));
    let whole = fs::read(&path).expect("segment");
    let ends: Vec<usize> = scan(&whole, 0).frames.iter().map(|(_, end)| *end).collect();
    assert_eq!(ends.len(), 3);

    for cut in 0..whole.len() {
        let case = tempfile::tempdir().expect("tempdir");
        fs::write(case.path().join(format!("{:020}.seg", 0)), &whole[..cut]).expect("write");
        let (spool, recovered) = Spool::open(&settings(case.path())).expect("recovers");
        let kept = ends.iter().filter(|end| **end <= cut).count();
        let torn = !ends.contains(&cut) && cut != 0;
        assert_eq!(recovered.records, kept as u64, "cut at {cut}");
        assert_eq!(recovered.torn_tails, usize::from(torn), "cut at {cut}");
        assert_eq!(
            recovered.corrupt, 0,
            "a torn tail is not damage (cut at {cut})"
        );
        let expected: Vec<String> = (0..kept).map(|n| format!("uuid-{n}")).collect();
        assert_eq!(all(&spool), expected, "cut at {cut}");
        let on_disk = fs::metadata(case.path().join(format!("{:020}.seg", 0)))
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let keep = ends
            .iter()
            .copied()
            .filter(|end| *end <= cut)
            .max()
            .unwrap_or(0);
        assert_eq!(
            on_disk, keep,
            "truncated to the last whole record (cut at {cut})"
        );
        let torn_kept: Vec<Vec<u8>> = fs::read_dir(case.path().join("corrupt"))
            .expect("corrupt dir")
            .filter_map(Result::ok)
            .map(|e| fs::read(e.path()).expect("readable"))
            .collect();
        let expected_torn: Vec<Vec<u8>> = if torn {
            vec![whole[keep..cut].to_vec()]
        } else {
            Vec::new()
        };
        assert_eq!(
            torn_kept, expected_torn,
            "the cut-off bytes are kept (cut at {cut})"
        );
        // What comes next is appended after the kept records, whole.
        spool.append(&[message(9)]).await.expect("durable");
        spool.close();
        let (spool, recovered) = Spool::open(&settings(case.path())).expect("recovers");
        assert_eq!(recovered.records, kept as u64 + 1, "cut at {cut}");
        assert_eq!(recovered.torn_tails, 0);
        drop(spool);
    }
}

#[tokio::test]
async fn a_damaged_record_is_set_aside_and_counted_and_its_neighbours_kept() {
    let (dir, spool) = three_appended().await;
    spool.close();
    let path = dir.path().join(format!("{:020}.seg", 0));
    let mut bytes = fs::read(&path).expect("segment");
    let ends: Vec<usize> = scan(&bytes, 0).frames.iter().map(|(_, end)| *end).collect();
    // A flipped bit in the middle record's value.
    bytes[ends[1] - 3] ^= 0x01;
    fs::write(&path, &bytes).expect("write");

    let (spool, recovered) = Spool::open(&settings(dir.path())).expect("recovers");
    assert_eq!(recovered.corrupt, 1);
    assert_eq!(recovered.records, 2);
    assert_eq!(all(&spool), ["uuid-0", "uuid-2"]);
    assert_eq!(corrupt_files(dir.path()), 1, "the damaged bytes are kept");
    let kept = fs::read_dir(dir.path().join("corrupt"))
        .expect("corrupt dir")
        .next()
        .expect("one file")
        .expect("entry");
    assert_eq!(
        fs::read(kept.path()).expect("readable"),
        bytes[ends[0]..ends[1]],
        "the whole damaged record is kept"
    );
}

#[tokio::test]
async fn a_damaged_last_record_is_set_aside_not_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(&settings(dir.path())).expect("opens");
    spool
        .append(&[message(0), message(1)])
        .await
        .expect("durable");
    spool.close();
    let path = dir.path().join(format!("{:020}.seg", 0));
    let mut bytes = fs::read(&path).expect("segment");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&path, &bytes).expect("write");
    let (spool, recovered) = Spool::open(&settings(dir.path())).expect("recovers");
    assert_eq!((recovered.corrupt, recovered.torn_tails), (1, 0));
    assert_eq!(all(&spool), ["uuid-0"]);
}

#[tokio::test]
async fn a_full_spool_refuses_and_replay_makes_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut limited = settings(dir.path());
    let mut one = Vec::new();
    record::encode(&mut one, 0, 0, &message(0));
    limited.max_bytes = one.len() as u64 * 2 + 10;
    limited.segment_bytes = one.len() as u64;
    let (spool, _) = Spool::open(&limited).expect("opens");
    spool.append(&[message(0)]).await.expect("fits");
    spool.append(&[message(1)]).await.expect("fits");
    assert!(matches!(
        spool.append(&[message(2)]).await,
        Err(SpoolError::Full)
    ));
    assert!(!spool.has_room(one.len() as u64));

    let segment = spool
        .oldest()
        .expect("the first segment is sealed by the roll");
    let records = spool.read(&segment).expect("readable");
    assert_eq!(uuids(&records), ["uuid-0"]);
    spool
        .replayed(&segment, 1, records[0].1)
        .expect("position kept");
    spool.finished(&segment).expect("deleted");
    assert!(!segment.path.exists());
    spool.append(&[message(2)]).await.expect("room again");
    assert_eq!(spool.stats().records, 2);
}

#[tokio::test]
async fn replay_resumes_from_its_position_after_a_restart() {
    let (dir, spool) = three_appended().await;
    spool.seal().await;
    let segment = spool.oldest().expect("sealed");
    let records = spool.read(&segment).expect("readable");
    spool
        .replayed(&segment, 2, records[1].1)
        .expect("position kept");
    assert_eq!(spool.stats().records, 1);
    spool.close();

    let (spool, recovered) = Spool::open(&settings(dir.path())).expect("reopens");
    assert_eq!(recovered.records, 1, "two were replayed before the restart");
    assert_eq!(all(&spool), ["uuid-2"]);
}

#[tokio::test]
async fn records_acknowledged_late_are_not_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(&settings(dir.path())).expect("opens");
    let seqs = spool
        .append(&[message(0), message(1), message(2)])
        .await
        .expect("durable");
    spool.acknowledged_late([seqs.start + 1]);
    spool.seal().await;
    assert_eq!(all(&spool), ["uuid-0", "uuid-2"]);
    assert_eq!(spool.stats().records, 2);
}

#[tokio::test]
async fn concurrent_appends_share_syncs_and_all_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(&settings(dir.path())).expect("opens");
    let spool = Arc::new(spool);
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let spool = Arc::clone(&spool);
            tokio::spawn(async move { spool.append(&[message(n)]).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("joined").expect("durable");
    }
    spool.seal().await;
    let mut seen = all(&spool);
    seen.sort();
    let mut expected: Vec<String> = (0..64).map(|n| format!("uuid-{n}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn appends_arriving_together_never_take_the_spool_past_its_max_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut one = Vec::new();
    record::encode(&mut one, 0, 0, &message(10));
    let mut limited = settings(dir.path());
    limited.max_bytes = one.len() as u64 * 10 + 5;
    limited.segment_bytes = one.len() as u64 * 4;
    let (spool, _) = Spool::open(&limited).expect("opens");
    let spool = Arc::new(spool);
    for _ in 0..5 {
        let tasks: Vec<_> = (0..64)
            .map(|n| {
                let spool = Arc::clone(&spool);
                tokio::spawn(async move { spool.append(&[message(10 + n % 10)]).await.is_ok() })
            })
            .collect();
        let mut kept = 0;
        for task in tasks {
            kept += usize::from(task.await.expect("joined"));
        }
        let on_disk: u64 = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .map(|e| e.metadata().expect("metadata").len())
            .sum();
        assert!(on_disk <= limited.max_bytes, "{on_disk} bytes on disk");
        assert_eq!(spool.stats().bytes, on_disk);
        assert!(kept <= 10, "{kept} appends kept");
    }
}

#[tokio::test]
async fn a_second_process_cannot_open_a_spool_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(&settings(dir.path())).expect("opens");
    let second = Spool::open(&settings(dir.path()));
    let err = second.expect_err("refused while the first has it");
    assert!(
        err.to_string()
            .contains("in use by another capture process"),
        "{err}"
    );
    spool.close();
    Spool::open(&settings(dir.path())).expect("free once the first closed it");
}
