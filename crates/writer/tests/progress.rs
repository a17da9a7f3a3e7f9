//! The live counters behind the progress bar end at the totals: every entry
//! counted once by the scan, every file once as done, every byte once as
//! read, whichever way the file went (empty, inline, compressed inline, raw
//! or compressed extents, a duplicate).
use std::sync::atomic::Ordering;

use btrfs_writer::compress::Compression;
use btrfs_writer::data::{self, DataOptions, Progress};
use btrfs_writer::layout::Layout;
use btrfs_writer::output::Output;
use btrfs_writer::scan::{scan, ScanOptions};

/// Bytes that compress (text-like) or not (xorshift noise).
fn bytes(n: usize, text: bool, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            if text {
                b"lorem ipsum dolor sit amet "[(i + seed as usize) % 27]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

#[test]
fn counters_end_at_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let mut files = 0u64;
    let mut total = 0u64;
    let mut put = |name: &str, data: Vec<u8>| {
        files += 1;
        total += data.len() as u64;
        std::fs::write(src.join(name), data).unwrap();
    };
    put("empty", Vec::new());
    put("inline_text", bytes(1500, true, 1));
    put("inline_noise", bytes(1500, false, 2));
    put("sector_text", bytes(3500, true, 3));
    put("sector_noise", bytes(3500, false, 4));
    put("big_text", bytes(700_000, true, 5));
    put("big_noise", bytes(300_000, false, 6));
    put("sub/copy_of_big_text", bytes(700_000, true, 5));
    put("sub/copy_of_sector_noise", bytes(3500, false, 4));
    let counters = std::sync::Arc::new(Progress::default());
    let so = ScanOptions {
        progress: counters.clone(),
        ..ScanOptions::default()
    };
    let tree = scan(&src, &so).unwrap();
    // Every entry below the root: the files and `sub`.
    assert_eq!(counters.scanned.load(Ordering::Relaxed), files + 1);
    assert_eq!(tree.node_count() as u64, files + 2);
    for (compress, dedupe) in [(false, false), (true, false), (true, true), (false, true)] {
        let o = DataOptions {
            sectorsize: 4096,
            csum: btrfs_format::CsumType::Crc32c,
            inline_limit: 2048,
            compression: if compress {
                Compression::parse("zstd", false).unwrap()
            } else {
                None
            },
            dedupe,
            chunk_max: 1 << 30,
            data_flags: btrfs_format::BTRFS_BLOCK_GROUP_DATA,
            data_stripes: 1,
            memory: 1 << 20,
            data_end_max: None,
        };
        let img = dir.path().join("x.img");
        let mut layout = Layout::default();
        layout.push_chunk(btrfs_format::BTRFS_BLOCK_GROUP_SYSTEM, 4 << 20, 1);
        let mut open = |_: &Layout, _: u64| Output::create(&img, Some(64 << 20), true);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let p = Progress::default();
        assert!(!p.data_started.load(Ordering::Relaxed));
        data::write_all(&pool, &tree, &mut layout, &mut open, &o, &p).unwrap();
        let case = format!("compress {compress}, dedupe {dedupe}");
        assert!(p.data_started.load(Ordering::Relaxed), "{case}");
        assert_eq!(p.files_total.load(Ordering::Relaxed), files, "{case}");
        assert_eq!(p.files_done.load(Ordering::Relaxed), files, "{case}");
        assert_eq!(p.bytes_total.load(Ordering::Relaxed), total, "{case}");
        assert_eq!(p.bytes_in.load(Ordering::Relaxed), total, "{case}");
        let out = p.bytes_out.load(Ordering::Relaxed);
        assert!(
            out > 0 && (!compress || out < total),
            "{case}: {out} out of {total}"
        );
    }
}
