//! Bounded mutation fuzzing of the checker on stable Rust: mutate small images
//! (structure-aware, see `btrfs_check::fuzzing`), run `btrfs_check::fuzz_one` on
//! each (and `forge_inspect::inspect_all`), and fail on a panic, a hang (a case over the time limit) or an
//! allocation over the limits. Every case is reproducible from `BASE:SEED`.
//!
//! cargo run -p btrfs-check --example fuzz_mutate -- --seconds 120
//! cargo run -p btrfs-check --example fuzz_mutate -- --replay 1:12345
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use btrfs_check::fuzzing::Mutator;

/// Largest single allocation and most live memory a case may use.
const MAX_ALLOC: usize = 1 << 30;
const MAX_LIVE: usize = 3 << 30;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        check(l.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        check(l.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        check(new);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

fn check(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    if size > MAX_ALLOC || live > MAX_LIVE {
        let case = CURRENT.load(Ordering::Relaxed);
        eprintln!(
            "fuzz: UNBOUNDED ALLOCATION: {size} bytes (live {live}) in case {}:{}",
            case >> 48,
            case & ((1 << 48) - 1)
        );
        std::process::abort();
    }
}

#[global_allocator]
static A: Counting = Counting;

static CURRENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn bases(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    for i in 0..60u64 {
        let n = [0usize, 10, 3000, 5000, 70_000][i as usize % 5];
        let v: Vec<u8> = (0..n).map(|j| (j as u64 * 31 + i) as u8).collect();
        let sub = if i % 3 == 0 {
            "d"
        } else if i % 3 == 1 {
            "d/e"
        } else {
            ""
        };
        std::fs::write(src.join(sub).join(format!("f{i}")), v).unwrap();
    }
    std::os::unix::fs::symlink("f1", src.join("link")).unwrap();
    std::fs::hard_link(src.join("f2"), src.join("d/f2-again")).unwrap();
    for (i, (nodesize, single, bgt, csum)) in [
        (4096u32, false, true, btrfs_format::CsumType::Crc32c),
        (16384, true, false, btrfs_format::CsumType::Xxhash64),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cfg = btrfs_writer::MkfsConfig {
            nodesize,
            csum,
            force: true,
            fsid: Some([3; 16]),
            dev_uuid: Some([4; 16]),
            ..Default::default()
        };
        cfg.features.block_group_tree = bgt;
        if single {
            cfg.metadata_profile = btrfs_writer::Profile::Single;
        }
        let img = dir.join(format!("base{i}.img"));
        let mut o = btrfs_writer::RootdirOptions::new(&src);
        o.shrink = true;
        o.threads = 1;
        btrfs_writer::make_rootdir_filesystem(&img, &cfg, &o).expect("base image");
        out.push(std::fs::read(&img).unwrap());
    }
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/kernel-compressed.img.zst");
    if let Ok(z) = std::fs::read(fx) {
        if let Ok(b) = zstd::stream::decode_all(&z[..]) {
            out.push(b);
        }
    }
    out
}

fn run_case(m: &Mutator, base: usize, seed: u64, limit: Duration) -> Result<usize, String> {
    CURRENT.store(
        ((base as u64) << 48) | (seed & ((1 << 48) - 1)),
        Ordering::Relaxed,
    );
    let img = m.mutate(seed);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            let r = std::panic::catch_unwind(|| {
                let n = btrfs_check::fuzz_one(&img).findings.len();
                // forge-inspect's read-only commands over the same image.
                forge_inspect::inspect_all(img);
                n
            });
            let _ = tx.send(r);
        })
        .map_err(|e| e.to_string())?;
    match rx.recv_timeout(limit) {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(_)) => Err(format!("PANIC in case {base}:{seed}")),
        Err(_) => Err(format!("HANG (over {limit:?}) in case {base}:{seed}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seconds = 60u64;
    let mut seed0 = 1u64;
    let mut replay: Option<(usize, u64)> = None;
    let mut limit = Duration::from_secs(30);
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seconds" => seconds = v.parse().expect("--seconds N"),
            "--seed" => seed0 = v.parse().expect("--seed N"),
            "--timeout" => limit = Duration::from_secs(v.parse().expect("--timeout SECS")),
            "--replay" => {
                let (b, s) = v.split_once(':').expect("--replay BASE:SEED");
                replay = Some((b.parse().unwrap(), s.parse().unwrap()));
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    let dir = tempfile::tempdir().unwrap();
    let muts: Vec<Mutator> = bases(dir.path()).into_iter().map(Mutator::new).collect();
    for (i, m) in muts.iter().enumerate() {
        eprintln!(
            "fuzz: base {i}: {} bytes, {} tree blocks",
            m.base().len(),
            m.tree_blocks()
        );
        // The bases themselves are clean.
        let r = btrfs_check::fuzz_one(m.base());
        assert!(
            r.findings.is_empty(),
            "base {i} is not clean: {:?}",
            r.findings
        );
    }
    if let Some((b, s)) = replay {
        match run_case(&muts[b], b, s, limit) {
            Ok(n) => println!("case {b}:{s}: {n} findings, no failure"),
            Err(e) => {
                eprintln!("fuzz: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let start = Instant::now();
    let mut n = 0u64;
    let mut findings = 0usize;
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(seconds) {
        // The big kernel image one time in ten.
        let b = if muts.len() > 2 && n % 10 == 9 {
            2
        } else {
            (n % 2) as usize
        };
        let seed = seed0.wrapping_mul(1_000_003).wrapping_add(n);
        let t = Instant::now();
        match run_case(&muts[b], b, seed, limit) {
            Ok(f) => findings += f,
            Err(e) => {
                eprintln!("fuzz: {e}; reproduce with: cargo run -p btrfs-check --example fuzz_mutate -- --replay {b}:{seed}");
                std::process::exit(1);
            }
        }
        slowest = slowest.max(t.elapsed());
        n += 1;
    }
    println!(
        "fuzz: {n} mutated images in {:.0?}, {findings} findings, slowest case {slowest:.1?}, no panic, hang or unbounded allocation",
        start.elapsed()
    );
}
