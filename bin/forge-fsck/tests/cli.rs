//! forge-fsck's command line: exit codes as fsck documents them, text and JSON output.
use std::path::Path;
use std::process::Command;

fn fsck() -> Command {
    Command::new(env!("CARGO_BIN_EXE_forge-fsck"))
}

fn image(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("a"), b"hello").unwrap();
    std::fs::write(src.join("d/b"), vec![7u8; 100_000]).unwrap();
    let img = dir.join("t.img");
    let cfg = btrfs_writer::MkfsConfig {
        force: true,
        ..Default::default()
    };
    let mut o = btrfs_writer::RootdirOptions::new(&src);
    o.shrink = true;
    btrfs_writer::make_rootdir_filesystem(&img, &cfg, &o).unwrap();
    img
}

#[test]
fn exit_codes_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    // Clean: 0, a summary line.
    let o = fsck().arg(&img).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("no errors found"), "{out}");
    // JSON for CI.
    let o = fsck().arg("--json").arg(&img).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    assert!(v["stats"]["tree_blocks"].as_u64().unwrap() > 5);
    // Damaged (a data byte): 4, the finding named in text and JSON.
    let mut bytes = std::fs::read(&img).unwrap();
    let i = btrfs_image::Image::from_bytes(bytes.clone()).unwrap();
    let (sv, ino) = i.lookup(5, b"d/b").unwrap();
    let fe = i.file_extents(sv, ino).unwrap();
    let btrfs_image::FileExtentKind::Regular { disk_bytenr, .. } = fe[0].kind else {
        panic!("regular extent")
    };
    let phys = i.chunk_map().map(disk_bytenr, 4096).unwrap()[0] as usize;
    bytes[phys + 10] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    let o = fsck().arg(&img).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(
        out.contains("error[data-checksum]") && out.contains("/d/b"),
        "{out}"
    );
    let o = fsck().args(["--json"]).arg(&img).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 4);
    assert_eq!(v["findings"][0]["kind"], "data-checksum");
    assert_eq!(v["findings"][0]["severity"], "error");
    assert_eq!(v["findings"][0]["path"], "/d/b");
    // --metadata-only does not read data.
    let o = fsck()
        .args(["--metadata-only", "-q"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty());
    // Cannot open: 8. Usage: 16.
    let o = fsck().arg(dir.path().join("missing.img")).output().unwrap();
    assert_eq!(o.status.code(), Some(8));
    let o = fsck().output().unwrap();
    assert_eq!(o.status.code(), Some(16));
    let o = fsck().args(["--bogus"]).arg(&img).output().unwrap();
    assert_eq!(o.status.code(), Some(16));
    let o = fsck().arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    // Not btrfs at all: an error finding, 4.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    let o = fsck().arg(&junk).output().unwrap();
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stdout).contains("superblock-invalid"));
}
