//! Oracles for tests: btrfs-progs (`btrfs check`, `dump-super`) and the Linux
//! kernel (loop mounts, scrub). Tests that need them call the `require_*`
//! functions, which print a loud SKIPPED line when the tool is missing, or
//! panic when `FORGE_REQUIRE_ORACLES=1` (set by `cargo xtask test` where it
//! could install them), so CI never passes by skipping.
pub mod manifest;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn must_run() -> bool {
    std::env::var("FORGE_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

fn skip(what: &str) -> bool {
    if must_run() {
        panic!("FORGE_REQUIRE_ORACLES=1 but {what}");
    }
    eprintln!("\n*** SKIPPED: {what} ***\n");
    false
}

/// Is `prog` on PATH?
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// btrfs-progs present (else a loud skip).
pub fn require_btrfs_progs() -> bool {
    have("btrfs") && have("mkfs.btrfs")
        || skip("btrfs-progs not installed (apt-get install btrfs-progs)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Root, a loop device and a kernel with btrfs (else a loud skip).
pub fn require_kernel() -> bool {
    if !require_btrfs_progs() {
        return false;
    }
    if !is_root() {
        return skip("not root: kernel mount tests need root");
    }
    if !Path::new("/dev/loop-control").exists() {
        return skip("no /dev/loop-control: kernel mount tests need loop devices");
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.contains("btrfs") {
        let _ = Command::new("modprobe").arg("btrfs").status();
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !fs.contains("btrfs") {
            return skip("the kernel has no btrfs support");
        }
    }
    true
}

/// Run a command, returning its output (panics only if it cannot start).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run and require success; returns stdout+stderr.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    let t = text(&o);
    assert!(o.status.success(), "{cmd:?} failed ({}):\n{t}", o.status);
    t
}

/// `btrfs check --readonly [--check-data-csum] IMG` must find no error.
pub fn btrfs_check(img: &Path, data_csum: bool) -> String {
    let mut c = Command::new("btrfs");
    c.args(["check", "--readonly"]);
    if data_csum {
        c.arg("--check-data-csum");
    }
    let o = run(c.arg(img));
    let t = text(&o);
    assert!(
        o.status.success() && !t.contains("ERROR") && t.contains("no error found"),
        "btrfs check found problems in {}:\n{t}",
        img.display()
    );
    t
}

/// `btrfs check` must reject the image (for corruption tests).
pub fn btrfs_check_fails(img: &Path) -> String {
    let o = run(Command::new("btrfs")
        .args(["check", "--readonly", "--check-data-csum"])
        .arg(img));
    let t = text(&o);
    assert!(
        !o.status.success(),
        "btrfs check accepted a damaged image:\n{t}"
    );
    t
}

/// `btrfs inspect-internal dump-super -f` output as (field, value) lookups.
pub fn dump_super(img: &Path) -> String {
    run_ok(
        Command::new("btrfs")
            .args(["inspect-internal", "dump-super", "-f"])
            .arg(img),
    )
}

/// Value of `field` in dump-super text (first whitespace-separated token after it).
pub fn super_field(dump: &str, field: &str) -> Option<String> {
    dump.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(field)).then(|| it.collect::<Vec<_>>().join(" "))
    })
}

/// A loop mount that is unmounted (and its directory removed) on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
    mounted: bool,
}

impl Mount {
    /// `mount -o loop,OPTS IMG DIR`.
    pub fn new(img: &Path, opts: &str) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("forge-mnt")
            .tempdir()
            .expect("tempdir");
        let o = if opts.is_empty() {
            "loop".to_string()
        } else {
            format!("loop,{opts}")
        };
        let out = run(Command::new("mount")
            .args(["-o", &o])
            .arg(img)
            .arg(dir.path()));
        if !out.status.success() {
            let dmesg = run(&mut Command::new("dmesg")).stdout;
            let d = String::from_utf8_lossy(&dmesg);
            let tail: Vec<_> = d.lines().rev().take(25).collect();
            panic!(
                "the kernel refused to mount {} ({o}): {}\nkernel log:\n{}",
                img.display(),
                text(&out),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Mount { dir, mounted: true }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `btrfs scrub start -B [-r]` must report no error.
    pub fn scrub(&self, readonly: bool) -> String {
        let mut c = Command::new("btrfs");
        c.args(["scrub", "start", "-B"]);
        if readonly {
            c.arg("-r");
        }
        let t = run_ok(c.arg(self.path()));
        assert!(
            t.contains("no errors found"),
            "scrub found errors on {}:\n{t}",
            self.path().display()
        );
        t
    }

    pub fn unmount(mut self) {
        self.do_unmount();
    }

    fn do_unmount(&mut self) {
        if self.mounted {
            let _ = Command::new("sync").status();
            run_ok(Command::new("umount").arg(self.dir.path()));
            self.mounted = false;
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Write, overwrite and delete files on a read-write mount: about `mib` MiB
/// of data in files of mixed sizes, deterministic content.
pub fn churn(root: &Path, mib: usize) {
    use std::io::Write;
    let dir = root.join("churn");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut written = 0usize;
    let mut i = 0;
    let mut names: Vec<PathBuf> = Vec::new();
    while written < mib << 20 {
        let size = match i % 4 {
            0 => 100,
            1 => 5000,
            2 => 300_000,
            _ => 4 << 20,
        };
        let mut buf = vec![0u8; size];
        for chunk in buf.chunks_mut(8) {
            let v = next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let p = dir.join(format!("f{i}"));
        std::fs::File::create(&p).unwrap().write_all(&buf).unwrap();
        names.push(p);
        written += size;
        i += 1;
    }
    // Delete every third file, then overwrite the middle of another.
    for p in names.iter().step_by(3) {
        std::fs::remove_file(p).unwrap();
    }
    if let Some(p) = names.get(1) {
        std::fs::write(p, b"rewritten").unwrap();
    }
    let _ = Command::new("sync").status();
}

/// Does `img` carry a btrfs superblock magic at 64 KiB? A failed run must
/// never leave one behind.
pub fn looks_like_btrfs(img: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 8];
    std::fs::File::open(img).is_ok_and(|f| f.read_exact_at(&mut magic, 0x10040).is_ok())
        && &magic == b"_BHRfS_M"
}

/// Root of the workspace (for fixtures in testdata/).
pub fn workspace_root() -> PathBuf {
    let mut p = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    p.pop();
    p.pop();
    p
}

/// A path under the repository's `testdata/`.
pub fn testdata(name: &str) -> PathBuf {
    workspace_root().join("testdata").join(name)
}

/// A committed fixture image (`testdata/NAME.img.zst`), decompressed in memory.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let z = std::fs::read(testdata(&format!("{name}.img.zst"))).expect("fixture present");
    zstd::stream::decode_all(&z[..]).expect("fixture decompresses")
}

/// Deterministic pseudo-random bytes (xorshift); `text` makes them
/// compressible.
pub fn bytes(seed: u64, len: usize, text: bool) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 32);
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        if text {
            v.extend_from_slice(format!("line {} of seed {seed}\n", s % 1000).as_bytes());
        } else {
            v.extend_from_slice(&s.to_le_bytes());
        }
    }
    v.truncate(len);
    v
}
