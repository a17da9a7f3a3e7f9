//! Files of up to a sector over the inline limit, with compression and
//! `--dedupe`: those that compress to the limit go inline, the others to an
//! uncompressed extent that copies of them share, whether they are decided in
//! the pipeline or, when space is short, before the duplicates are found.
use btrfs_format::{BTRFS_COMPRESS_NONE, BTRFS_COMPRESS_ZSTD, BTRFS_INODE_NOCOMPRESS};
use btrfs_writer::compress::Compression;
use btrfs_writer::data::{self, DataOptions, DataPlan, FileData, Progress};
use btrfs_writer::layout::Layout;
use btrfs_writer::output::Output;
use btrfs_writer::scan::{scan, Scan, ScanOptions};
use btrfs_writer::Error;

fn opts() -> DataOptions {
    DataOptions {
        sectorsize: 4096,
        csum: btrfs_format::CsumType::Crc32c,
        inline_limit: 2048,
        compression: Compression::parse("zstd", false).unwrap(),
        dedupe: true,
        chunk_max: 1 << 30,
        data_flags: btrfs_format::BTRFS_BLOCK_GROUP_DATA,
        data_stripes: 1,
        memory: 1 << 20,
        data_end_max: None,
    }
}

/// The plan for `tree` on `threads` threads; with `short`, the first image
/// asked for is refused for space, as a too-small `-b` would be.
fn plan(tree: &Scan, dir: &std::path::Path, threads: usize, short: bool) -> DataPlan {
    let img = dir.join(format!("x{threads}{short}.img"));
    let mut layout = Layout::default();
    layout.push_chunk(btrfs_format::BTRFS_BLOCK_GROUP_SYSTEM, 4 << 20, 1);
    let mut refused = !short;
    let mut open = |_: &Layout, _: u64| {
        if !refused {
            refused = true;
            return Err(Error::NoSpace("short on purpose".into()));
        }
        Output::create(&img, Some(64 << 20), false)
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let (_, plan) = data::write_all(
        &pool,
        tree,
        &mut layout,
        &mut open,
        &opts(),
        &Progress::default(),
    )
    .unwrap();
    assert!(refused);
    plan
}

#[test]
fn small_files_go_inline_or_share_an_extent() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let noise = forge_oracle::bytes(7, 3000, false);
    let text: Vec<u8> = b"compresses well enough to go inline. "
        .iter()
        .copied()
        .cycle()
        .take(3500)
        .collect();
    let mut other = noise.clone();
    other[0] ^= 1;
    // A big file between them, so that they are not next to each other.
    std::fs::write(src.join("big"), text.repeat(100)).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("noise{i}")), &noise).unwrap();
        std::fs::write(src.join(format!("text{i}")), &text).unwrap();
    }
    std::fs::write(src.join("other"), &other).unwrap();
    let tree = scan(&src, &ScanOptions::default()).unwrap();
    let nodes = &tree.subvols[0].nodes;
    let find = |name: &str| {
        nodes
            .iter()
            .position(|n| n.path.file_name().is_some_and(|f| f == name))
            .unwrap()
    };
    for short in [false, true] {
        for threads in [1, 2] {
            let p = plan(&tree, dir.path(), threads, short);
            let what = format!("short {short}, {threads} threads");
            for i in 0..3 {
                let ni = find(&format!("text{i}"));
                match &p.files[0][ni] {
                    FileData::Inline {
                        data,
                        ram,
                        compression,
                    } => {
                        assert_eq!((*ram, *compression), (3500, BTRFS_COMPRESS_ZSTD), "{what}");
                        assert!(data.len() <= 2048, "{what}");
                        assert_eq!(zstd::decode_all(&data[..]).unwrap(), text, "{what}");
                    }
                    d => panic!("{what}: text{i} is {d:?}"),
                }
            }
            let extent = |name: &str| {
                let ni = find(name);
                let FileData::Extents(r) = &p.files[0][ni] else {
                    panic!("{what}: {name} is {:?}", p.files[0][ni]);
                };
                assert_eq!(r.len(), 1, "{what}: {name}");
                let e = &p.extents[r.start];
                assert_eq!(
                    (e.num_bytes, e.disk_num_bytes, e.compression),
                    (4096, 4096, BTRFS_COMPRESS_NONE),
                    "{what}: {name}"
                );
                assert!(
                    p.inode_flags[0][ni] & BTRFS_INODE_NOCOMPRESS != 0,
                    "{what}: {name}"
                );
                e.disk_bytenr
            };
            let shared = extent("noise0");
            assert_eq!(extent("noise1"), shared, "{what}");
            assert_eq!(extent("noise2"), shared, "{what}");
            assert_ne!(extent("other"), shared, "{what}");
        }
    }
}
