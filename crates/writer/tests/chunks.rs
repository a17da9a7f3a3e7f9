//! Data spread over many block groups (small chunks force what a tree of
//! several GiB does with 1 GiB chunks), with DUP data too.
use btrfs_writer::{make_rootdir_filesystem, MkfsConfig, Profile, RootdirOptions};
use forge_oracle::manifest::{diff, manifest, Compare};
use forge_oracle::{self as oracle, Mount};

#[test]
fn data_across_many_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut s = 7u64;
    for i in 0..12 {
        let len = (3 << 20) + i * 7919;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        std::fs::write(src.join(format!("f{i}")), data).unwrap();
    }
    for (profile, name) in [(Profile::Single, "single"), (Profile::Dup, "dup")] {
        let img = dir.path().join(format!("{name}.img"));
        let cfg = MkfsConfig {
            data_profile: profile,
            now: (1_700_000_000, 0),
            ..Default::default()
        };
        let mut opts = RootdirOptions::new(&src);
        opts.data_chunk_max = 8 << 20;
        let r = make_rootdir_filesystem(&img, &cfg, &opts).unwrap();
        let data_chunks = r
            .layout
            .chunks
            .iter()
            .filter(|c| c.flags & btrfs_format::BTRFS_BLOCK_GROUP_DATA != 0)
            .count();
        assert!(data_chunks >= 5, "{data_chunks} data chunks");
        // Our own reader sees every byte.
        let image = btrfs_image::Image::open(&img).unwrap();
        for i in 0..12 {
            let (sv, ino) = image.lookup(5, format!("f{i}").as_bytes()).unwrap();
            let got = image.read_file_all(sv, ino, 1 << 30).unwrap();
            assert_eq!(got, std::fs::read(src.join(format!("f{i}"))).unwrap());
        }
        if !oracle::require_kernel() {
            continue;
        }
        oracle::btrfs_check(&img, true);
        let want = manifest(&src);
        let m = Mount::new(&img, "ro");
        let d = diff(
            &want,
            &manifest(m.path()),
            Compare {
                atime: false,
                ctime: true,
                sparse_blocks: true,
            },
        );
        assert!(d.is_empty(), "{}", d.join("\n"));
        m.scrub(true);
        m.unmount();
        let m = Mount::new(&img, "");
        oracle::churn(m.path(), 10);
        m.unmount();
        oracle::btrfs_check(&img, true);
    }
}
