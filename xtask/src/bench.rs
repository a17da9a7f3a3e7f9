//! `cargo xtask bench [DIR]`: forge-mkfs against the reference tools on one
//! tree, in one run, interleaved, with the machine's own limits measured.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

const MIB: u64 = 1 << 20;

struct Opts {
    dir: Option<PathBuf>,
    runs: usize,
    json: Option<PathBuf>,
    /// `--only NAME[,NAME...]`: run just these tools (names as in the table),
    /// for a quicker comparison with more rounds.
    only: Option<Vec<String>>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        dir: None,
        runs: 3,
        json: None,
        only: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => o.runs = it.next().context("--runs N")?.parse()?,
            "--json" => o.json = Some(it.next().context("--json FILE")?.into()),
            "--only" => {
                let names = it.next().context("--only NAME[,NAME...]")?;
                o.only = Some(names.split(',').map(|n| n.trim().to_string()).collect());
            }
            s if s.starts_with('-') => bail!("unknown option {s}"),
            s => o.dir = Some(s.into()),
        }
    }
    Ok(o)
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Deterministic pseudo-random numbers (xorshift).
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A ~1 GiB mix: text, real binaries from this machine, incompressible data,
/// and ~50k small files. Made once and kept under target/.
fn corpus(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/bench-corpus");
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    eprintln!("bench: generating the corpus in {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let words: Vec<String> = (0..5000)
        .map(|_| {
            let n = 2 + rng.next() % 9;
            (0..n)
                .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
                .collect()
        })
        .collect();
    let text = |rng: &mut Rng, len: usize| -> Vec<u8> {
        let mut s = Vec::with_capacity(len + 16);
        while s.len() < len {
            s.extend_from_slice(words[(rng.next() % 5000) as usize].as_bytes());
            s.push(if rng.next().is_multiple_of(13) {
                b'\n'
            } else {
                b' '
            });
        }
        s.truncate(len);
        s
    };
    // Text: 300 MiB in files from 4 KiB to 4 MiB.
    let t = dir.join("text");
    std::fs::create_dir_all(&t)?;
    let mut total = 0u64;
    let mut i = 0;
    while total < 300 * MIB {
        let len = 4096 << (rng.next() % 11);
        std::fs::write(
            t.join(format!("doc{i:05}.txt")),
            text(&mut rng, len as usize),
        )?;
        total += len;
        i += 1;
    }
    // Binaries: up to 300 MiB of this machine's shared libraries and programs.
    let b = dir.join("bin");
    std::fs::create_dir_all(&b)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for d in ["/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/lib"] {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    files.push(e.path());
                }
            }
        }
    }
    files.sort();
    let mut total = 0u64;
    for (k, f) in files.iter().enumerate() {
        if total >= 300 * MIB {
            break;
        }
        let Ok(data) = std::fs::read(f) else { continue };
        total += data.len() as u64;
        std::fs::write(
            b.join(format!(
                "{k:05}-{}",
                f.file_name().unwrap_or_default().to_string_lossy()
            )),
            data,
        )?;
    }
    // Incompressible: 250 MiB in files of 1 to 32 MiB.
    let r = dir.join("random");
    std::fs::create_dir_all(&r)?;
    let mut total = 0u64;
    let mut i = 0;
    while total < 250 * MIB {
        let len = MIB << (rng.next() % 6);
        let data: Vec<u8> = (0..len / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        std::fs::write(r.join(format!("blob{i:03}.bin")), data)?;
        total += len;
        i += 1;
    }
    // 50k small files in 500 directories.
    for d in 0..500 {
        let sd = dir.join(format!("small/d{d:03}"));
        std::fs::create_dir_all(&sd)?;
        for f in 0..100 {
            let len = 100 + (rng.next() % 6000) as usize;
            let data = if rng.next().is_multiple_of(3) {
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                text(&mut rng, len)
            };
            std::fs::write(sd.join(format!("f{f:03}")), data)?;
        }
    }
    std::fs::write(dir.join(".complete"), b"")?;
    Ok(dir)
}

fn tree_bytes(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (bytes, files)
}

/// Read every file (warms the page cache; returns the rate).
fn read_all(dir: &Path) -> f64 {
    let paths = all_files(dir);
    let t = Instant::now();
    let mut buf = vec![0u8; MIB as usize];
    let mut n = 0u64;
    for p in &paths {
        if let Ok(mut f) = std::fs::File::open(p) {
            while let Ok(k) = f.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Every regular file of the tree (sorted).
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Machine limits on this tree: crc32c and zstd-3 of every byte in 128 KiB
/// pieces (read from the page cache and compressed, as the writer must) on
/// 1 and all cores, and the page-cache read rate.
fn limits(dir: &Path) -> Vec<(String, f64)> {
    let threads = rayon::current_num_threads();
    let files = all_files(dir);
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    // Each thread reads into one buffer it keeps, as the writer does: a
    // fresh allocation per file costs page faults (on a VM that hands free
    // memory back to its host, many), which would lower the limit below
    // what a writer can reach.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let each = |f: &PathBuf, work: &(dyn Fn(&[u8]) + Sync)| {
        BUF.with_borrow_mut(|d| {
            d.clear();
            if std::fs::File::open(f)
                .and_then(|mut h| h.read_to_end(d))
                .is_ok()
            {
                for c in d.chunks(128 << 10) {
                    work(c);
                }
            }
        })
    };
    let rate = |work: &(dyn Fn(&[u8]) + Sync), par: bool| {
        let t = Instant::now();
        if par {
            files.par_iter().for_each(|f| each(f, work));
        } else {
            files.iter().for_each(|f| each(f, work));
        }
        total as f64 / t.elapsed().as_secs_f64()
    };
    let crc = |c: &[u8]| {
        std::hint::black_box(crc32c::crc32c(c));
    };
    // One reusable compressor per thread, as a good writer keeps them.
    thread_local! {
        static Z3: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let z3 = |c: &[u8]| {
        Z3.with(|z| {
            let mut z = z.borrow_mut();
            if z.is_none() {
                *z = zstd::bulk::Compressor::new(3).ok();
            }
            if let Some(z) = z.as_mut() {
                std::hint::black_box(z.compress(c).map(|v| v.len()).unwrap_or(0));
            }
        })
    };
    vec![
        ("read + crc32c, 1 core".into(), rate(&crc, false)),
        (format!("read + crc32c, {threads} cores"), rate(&crc, true)),
        ("read + zstd-3, 1 core".into(), rate(&z3, false)),
        (format!("read + zstd-3, {threads} cores"), rate(&z3, true)),
        ("page-cache read, 1 thread".into(), read_all(dir)),
    ]
}

struct Tool {
    name: String,
    /// Program and arguments; `{src}` and `{out}` are substituted.
    cmd: Vec<String>,
    /// Pre-create the output file with this size (tools that need one).
    presize: Option<u64>,
    compressed: bool,
}

fn tool(name: &str, cmd: &[&str], presize: Option<u64>, compressed: bool) -> Tool {
    Tool {
        name: name.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        presize,
        compressed,
    }
}

struct Sample {
    /// The round it was timed in.
    round: usize,
    secs: f64,
    /// User + system CPU seconds.
    cpu: f64,
    rss_kib: u64,
    size: u64,
    alloc: u64,
}

/// Touch `bytes` of memory and give it back: on a VM that returns idle memory
/// to its host, the next program's page cache would otherwise pay to fault it
/// back in (seconds per GiB), whichever tool happens to run.
fn warm_memory(bytes: usize) {
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
}

/// A fixed piece of work's time on one thread, and how much longer two
/// threads take than one on it: 1.0 when the machine has two free cores;
/// more when its host takes time from one of them (on our VM, up to 1.9x
/// for minutes). Either slows the tools of that round, and shows in their
/// CPU seconds.
fn contention() -> (f64, f64) {
    fn spin() -> f64 {
        let t = Instant::now();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..25_000_000u64 {
            x = std::hint::black_box(
                x.wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407),
            );
        }
        std::hint::black_box(x);
        t.elapsed().as_secs_f64()
    }
    let one = spin();
    let two = std::thread::scope(|s| {
        let a = s.spawn(spin);
        let b = spin();
        a.join().unwrap_or(b).max(b)
    });
    (one, two / one)
}

/// The output disk's rate for a writer that starts writeback early, as the
/// image writers must all end with a flush: `bytes` written through the page
/// cache in 1 MiB pieces, writeback started on every 8 MiB written, then
/// `fdatasync`; bytes per second of the whole. An uncompressed build cannot
/// end sooner than its image's bytes at this rate after its first write.
fn disk_write(dir: &Path, bytes: u64) -> Result<f64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    const PIECE: u64 = MIB;
    const START_EVERY: u64 = 8 * MIB;
    let path = dir.join("disk-probe.bin");
    let _ = std::fs::remove_file(&path);
    let _ = Command::new("sync").status();
    warm_memory(3 << 30);
    // Bytes no disk or host could compress or share: a xorshift stream, and
    // every 4 KiB block of every piece stamped with its offset.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut buf: Vec<u8> = (0..PIECE / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let t = Instant::now();
    let mut off = 0u64;
    while off < bytes {
        for (i, block) in buf.chunks_mut(4096).enumerate() {
            block[..8].copy_from_slice(&(off + i as u64 * 4096).to_le_bytes());
        }
        f.write_all_at(&buf, off)
            .with_context(|| format!("writing {} at {off}", path.display()))?;
        off += PIECE;
        if off.is_multiple_of(START_EVERY) {
            // SAFETY: a plain syscall on a descriptor `f` keeps open.
            unsafe {
                libc::sync_file_range(
                    f.as_raw_fd(),
                    (off - START_EVERY) as libc::off64_t,
                    START_EVERY as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
    }
    f.sync_data()
        .with_context(|| format!("flushing {}", path.display()))?;
    let rate = off as f64 / t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

/// Run one command, returning wall time, CPU time and peak RSS.
fn run_one(t: &Tool, src: &Path, out: &Path, round: usize) -> Result<Sample> {
    let _ = std::fs::remove_file(out);
    // Same start for every tool: earlier outputs flushed, the source tree in
    // the page cache (a VM's proactive reclaim, e.g. DAMON pageout, evicts
    // it while other tools run), memory backed.
    let _ = Command::new("sync").status();
    read_all(src);
    warm_memory(3 << 30);
    if let Some(sz) = t.presize {
        std::fs::File::create(out)?.set_len(sz)?;
    }
    let args: Vec<String> = t
        .cmd
        .iter()
        .map(|a| {
            a.replace("{src}", &src.to_string_lossy())
                .replace("{out}", &out.to_string_lossy())
        })
        .collect();
    // Peak RSS through GNU time: a child forked straight from us would inherit
    // our own high-water mark across exec.
    let rss_file = out.with_extension("rss");
    let start = Instant::now();
    let o = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M %U %S")
        .arg("-o")
        .arg(&rss_file)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {} (is GNU time installed?)", args[0]))?;
    let secs = start.elapsed().as_secs_f64();
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        bail!(
            "{} failed: {}",
            t.name,
            err.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    let report = std::fs::read_to_string(&rss_file)?;
    let fields: Vec<&str> = report
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let rss_kib = fields.first().and_then(|f| f.parse().ok()).unwrap_or(0);
    let cpu: f64 = fields
        .iter()
        .skip(1)
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    let _ = std::fs::remove_file(&rss_file);
    let m = std::fs::metadata(out)?;
    use std::os::unix::fs::MetadataExt;
    Ok(Sample {
        round,
        secs,
        cpu,
        rss_kib,
        size: m.len(),
        alloc: m.blocks() * 512,
    })
}

/// `v` in ascending order.
fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    eprintln!("bench: building release binaries");
    let st = Command::new("cargo")
        .args(["build", "--release", "-q", "-p", "forge-mkfs"])
        .current_dir(root)
        .status()?;
    if !st.success() {
        bail!("release build failed");
    }
    crate::ensure_packages(&[
        "mksquashfs:squashfs-tools",
        "mkfs.erofs:erofs-utils",
        "mkfs.btrfs:btrfs-progs",
        "mkfs.ext4:e2fsprogs",
    ]);
    let src = match &o.dir {
        Some(d) => d.clone(),
        None => corpus(root)?,
    };
    let (bytes, files) = tree_bytes(&src);
    eprintln!(
        "bench: tree {} ({files} files, {:.1} MiB); warming the page cache",
        src.display(),
        bytes as f64 / MIB as f64
    );
    read_all(&src);
    let lim = limits(&src);
    // FORGE_MKFS=PATH times another build (e.g. an older commit's).
    let forge = std::env::var("FORGE_MKFS").unwrap_or_else(|_| {
        root.join("target/release/forge-mkfs")
            .to_string_lossy()
            .into_owned()
    });
    let cores = rayon::current_num_threads().to_string();
    let presize = bytes * 2 + 512 * MIB;
    let mut tools = vec![
        tool(
            "forge-mkfs",
            &[&forge, "-q", "-f", "--rootdir", "{src}", "{out}"],
            None,
            false,
        ),
        tool(
            "forge-mkfs --shrink",
            &[
                &forge,
                "-q",
                "-f",
                "--shrink",
                "--rootdir",
                "{src}",
                "{out}",
            ],
            None,
            false,
        ),
        tool(
            "forge-mkfs zstd:3",
            &[
                &forge,
                "-q",
                "-f",
                "--compress",
                "zstd:3",
                "--rootdir",
                "{src}",
                "{out}",
            ],
            None,
            true,
        ),
        tool(
            "forge-mkfs zstd:3 -j1",
            &[
                &forge,
                "-q",
                "-f",
                "-j",
                "1",
                "--compress",
                "zstd:3",
                "--rootdir",
                "{src}",
                "{out}",
            ],
            None,
            true,
        ),
        tool(
            "forge-mkfs zstd:3 --dedupe",
            &[
                &forge,
                "-q",
                "-f",
                "--dedupe",
                "--compress",
                "zstd:3",
                "--rootdir",
                "{src}",
                "{out}",
            ],
            None,
            true,
        ),
    ];
    if have("mkfs.btrfs") {
        tools.push(tool(
            "mkfs.btrfs --rootdir --shrink",
            &[
                "mkfs.btrfs",
                "-q",
                "-f",
                "--shrink",
                "--rootdir",
                "{src}",
                "{out}",
            ],
            Some(presize),
            false,
        ));
    }
    if let Ok(newer) = std::env::var("BTRFS_PROGS") {
        let mk = Path::new(&newer)
            .join("mkfs.btrfs")
            .to_string_lossy()
            .into_owned();
        tools.push(tool(
            "mkfs.btrfs (BTRFS_PROGS) --shrink",
            &[&mk, "-q", "-f", "--shrink", "--rootdir", "{src}", "{out}"],
            Some(presize),
            false,
        ));
        tools.push(tool(
            "mkfs.btrfs (BTRFS_PROGS) zstd:3",
            &[
                &mk,
                "-q",
                "-f",
                "--shrink",
                "--compress",
                "zstd:3",
                "--rootdir",
                "{src}",
                "{out}",
            ],
            Some(presize),
            true,
        ));
    }
    if have("mksquashfs") {
        tools.push(tool(
            "mksquashfs zstd:3",
            &[
                "mksquashfs",
                "{src}",
                "{out}",
                "-noappend",
                "-quiet",
                "-no-progress",
                "-comp",
                "zstd",
                "-Xcompression-level",
                "3",
                "-processors",
                &cores,
            ],
            None,
            true,
        ));
    }
    if have("mkfs.erofs") {
        tools.push(tool(
            "mkfs.erofs",
            &["mkfs.erofs", "--quiet", "{out}", "{src}"],
            None,
            false,
        ));
        tools.push(tool(
            "mkfs.erofs lz4hc",
            &["mkfs.erofs", "--quiet", "-zlz4hc", "{out}", "{src}"],
            None,
            true,
        ));
    }
    if let Ok(newer) = std::env::var("EROFS_UTILS") {
        let mk = Path::new(&newer)
            .join("mkfs.erofs")
            .to_string_lossy()
            .into_owned();
        tools.push(tool(
            "mkfs.erofs (EROFS_UTILS) zstd:3",
            // The level must be spelled out: a bare -zzstd is level -1 in
            // erofs-utils 1.9, whatever its help says.
            &[&mk, "--quiet", "-zzstd,level=3", "{out}", "{src}"],
            None,
            true,
        ));
    }
    if have("mkfs.ext4") {
        tools.push(tool(
            "mkfs.ext4 -d",
            &["mkfs.ext4", "-q", "-F", "-d", "{src}", "{out}"],
            Some(presize),
            false,
        ));
    }
    if let Some(only) = &o.only {
        if let Some(n) = only.iter().find(|n| !tools.iter().any(|t| &t.name == *n)) {
            let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            bail!("--only: no tool named '{n}' (tools: {})", names.join(", "));
        }
        tools.retain(|t| only.contains(&t.name));
    }
    let work = root.join("target/bench-out");
    std::fs::create_dir_all(&work)?;
    let mut samples: Vec<Vec<Sample>> = tools.iter().map(|_| Vec::new()).collect();
    let mut probes = Vec::new();
    // The output disk's write + flush rate, each round (it varies from
    // minute to minute on a VM's disk).
    let mut disk = Vec::new();
    for run in 0..o.runs {
        probes.push(contention());
        disk.push(
            disk_write(&work, bytes)
                .map_err(|e| eprintln!("bench: disk probe: {e:#}"))
                .ok(),
        );
        // Let the disk (on a VM, the host behind it) settle before the
        // round's first tool writes.
        std::thread::sleep(Duration::from_secs(5));
        // Rotate the order each round: whichever tool runs first after the
        // previous round's last (a 2.6 GB ext4 image) pays for its writeback.
        let n = tools.len();
        for i in (0..n).map(|k| (k + run * 5) % n) {
            let t = &tools[i];
            let out = work.join(format!("out{i}.img"));
            // A slow tool (over a minute) is timed once.
            if run > 0 && samples[i].first().is_some_and(|s| s.secs > 60.0) {
                continue;
            }
            eprintln!("bench: run {}/{}: {}", run + 1, o.runs, t.name);
            match run_one(t, &src, &out, run) {
                Ok(s) => samples[i].push(s),
                Err(e) => eprintln!("bench: {e:#}"),
            }
            let _ = std::fs::remove_file(&out);
        }
    }
    // Report.
    // Every run's time, sorted: on a VM one slow run in three decides a
    // median, and the range shows it.
    let times = |i: usize| -> Vec<f64> { sorted(samples[i].iter().map(|x| x.secs).collect()) };
    let cpus = |i: usize| -> Vec<f64> { samples[i].iter().map(|x| x.cpu).collect() };
    let med = |i: usize| -> Option<(f64, u64, u64, u64, f64)> {
        let s = &samples[i];
        if s.is_empty() {
            return None;
        }
        Some((
            median(&mut times(i)),
            s.iter().map(|x| x.rss_kib).max().unwrap_or(0),
            s[0].size,
            s[0].alloc,
            median(&mut cpus(i)),
        ))
    };
    let find = |name: &str| tools.iter().position(|t| t.name == name).and_then(med);
    let reference = find("mkfs.btrfs --rootdir --shrink");
    let mut table = String::new();
    table.push_str(&format!(
        "tree: {} files, {:.1} MiB; {} runs each, interleaved; medians\n\n",
        files,
        bytes as f64 / MIB as f64,
        o.runs
    ));
    table.push_str("| tool | time (s) | min–max (s) | CPU (s) | MB/s | vs mkfs.btrfs | image size (MiB) | allocated (MiB) | peak RSS (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut json = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let Some((secs, rss, size, alloc, cpu)) = med(i) else {
            table.push_str(&format!("| {} | failed | | | | | | | |\n", t.name));
            continue;
        };
        let rate = bytes as f64 / secs / 1e6;
        let vs = reference.map(|r| r.0 / secs);
        let all = times(i);
        table.push_str(&format!(
            "| {} | {secs:.2} | {:.2}–{:.2} | {cpu:.2} | {rate:.0} | {} | {:.1} | {:.1} | {:.0} |\n",
            t.name,
            all[0],
            all[all.len() - 1],
            vs.map(|v| format!("{v:.1}x")).unwrap_or_default(),
            size as f64 / MIB as f64,
            alloc as f64 / MIB as f64,
            rss as f64 / 1024.0
        ));
        json.push(serde_json::json!({
            "tool": t.name, "seconds": secs, "samples": all, "cpu_seconds": cpu, "cpu_samples": cpus(i), "mb_per_s": rate, "speedup_vs_mkfs_btrfs": vs,
            "image_bytes": size, "allocated_bytes": alloc, "peak_rss_kib": rss, "compressed": t.compressed,
        }));
    }
    if !probes.is_empty() {
        let mut one = sorted(probes.iter().map(|p| p.0 * 1e3).collect());
        let mut two = sorted(probes.iter().map(|p| p.1).collect());
        let (one_lo, one_hi, two_lo, two_hi) =
            (one[0], one[one.len() - 1], two[0], two[two.len() - 1]);
        table.push_str(&format!(
            "\nthe machine before each round: a fixed busy loop took {:.0} ms ({one_lo:.0}–{one_hi:.0}) on one thread; two at once took {:.2}x as long ({two_lo:.2}–{two_hi:.2}; 1.00 = two free cores)\n",
            median(&mut one),
            median(&mut two),
        ));
    }
    table.push_str("\nmachine limits (measured now):\n");
    for (name, r) in &lim {
        table.push_str(&format!("  {name}: {:.0} MB/s\n", r / 1e6));
    }
    let mut measured = sorted(
        disk.iter()
            .flatten()
            .copied()
            .filter(|r| *r > 0.0)
            .collect(),
    );
    let disk_rate = (!measured.is_empty()).then(|| median(&mut measured));
    if let Some(d) = disk_rate {
        let all = &measured;
        table.push_str(&format!(
            "  write + flush to the output's disk ({:.0} MiB, writeback started every 8 MiB; each round): {:.0} MB/s ({:.0}–{:.0})\n",
            bytes as f64 / MIB as f64,
            d / 1e6,
            all[0] / 1e6,
            all[all.len() - 1] / 1e6,
        ));
    }
    // A limit measured on all cores, by the start of its name.
    let all_cores = |what: &str| {
        lim.iter()
            .find(|l| l.0.starts_with(what) && !l.0.contains("1 core"))
            .map(|l| l.1)
    };
    // Uncompressed, the binding limit is the lower of reading and
    // checksumming the tree on all cores and writing the image to disk.
    let crc_all = all_cores("read + crc32c,");
    if let Some(ours) = find("forge-mkfs --shrink") {
        if let Some(c) = crc_all {
            table.push_str(&format!(
                "  forge-mkfs --shrink reads the tree at {:.0}% of the all-core read + crc32c limit\n",
                bytes as f64 / ours.0 / c * 100.0
            ));
        }
        if let Some(d) = disk_rate {
            table.push_str(&format!(
                "  forge-mkfs --shrink writes its image ({:.0} MiB allocated) at {:.0}% of the disk's write + flush rate; that alone takes {:.2} s\n",
                ours.3 as f64 / MIB as f64,
                ours.3 as f64 / ours.0 / d * 100.0,
                ours.3 as f64 / d,
            ));
        }
    }
    let zstd_all = all_cores("read + zstd-3,");
    if let (Some(z), Some(ours)) = (zstd_all, find("forge-mkfs zstd:3")) {
        table.push_str(&format!(
            "  forge-mkfs zstd:3 runs at {:.0}% of the all-core zstd-3 limit\n",
            bytes as f64 / ours.0 / z * 100.0
        ));
    }
    if let (Some(one), Some(all)) = (find("forge-mkfs zstd:3 -j1"), find("forge-mkfs zstd:3")) {
        table.push_str(&format!(
            "  speedup from 1 to {cores} threads with zstd:3: {:.2}x\n",
            one.0 / all.0
        ));
    }
    // The comparisons, each against the reference measured in this run.
    let pairs = [
        ("forge-mkfs --shrink", "mkfs.btrfs --rootdir --shrink"),
        ("forge-mkfs --shrink", "mkfs.btrfs (BTRFS_PROGS) --shrink"),
        ("forge-mkfs zstd:3", "mkfs.btrfs (BTRFS_PROGS) zstd:3"),
        ("forge-mkfs zstd:3 --dedupe", "mksquashfs zstd:3"),
        ("forge-mkfs zstd:3", "mkfs.erofs (EROFS_UTILS) zstd:3"),
        ("forge-mkfs --shrink", "mkfs.erofs"),
    ];
    // Besides the ratio of medians, the median of each round's ratio: the
    // two tools of a round ran within seconds of each other, so a slow
    // period of the machine (on a VM, minutes long) slows both.
    let round_ratios = |ours: usize, theirs: usize| -> Vec<f64> {
        sorted(
            samples[ours]
                .iter()
                .filter_map(|a| {
                    let b = samples[theirs].iter().find(|b| b.round == a.round)?;
                    Some(b.secs / a.secs)
                })
                .collect(),
        )
    };
    let index = |name: &str| tools.iter().position(|t| t.name == name);
    let mut ratios = Vec::new();
    table.push_str(
        "\nspeed ratios (reference time / ours: of the medians; median and range of each round's):\n",
    );
    for (ours, theirs) in pairs {
        if let (Some(a), Some(b)) = (find(ours), find(theirs)) {
            let per_round = match (index(ours), index(theirs)) {
                (Some(i), Some(j)) => round_ratios(i, j),
                _ => Vec::new(),
            };
            let paired = (!per_round.is_empty()).then(|| median(&mut per_round.clone()));
            let line = match (paired, per_round.first(), per_round.last()) {
                (Some(m), Some(lo), Some(hi)) if per_round.len() > 1 => {
                    format!("{:.2}x; {m:.2}x ({lo:.2}–{hi:.2}x)", b.0 / a.0)
                }
                _ => format!("{:.2}x", b.0 / a.0),
            };
            table.push_str(&format!("  {ours} vs {theirs}: {line}\n"));
            ratios.push(serde_json::json!({
                "ours": ours, "reference": theirs, "ratio": b.0 / a.0,
                "round_ratios": per_round, "round_ratio_median": paired,
            }));
        }
    }
    println!("{table}");
    if let Some(j) = &o.json {
        let doc = serde_json::json!({
            "tree": src, "files": files, "bytes": bytes, "runs": o.runs, "results": json,
            "probe_per_round": probes.iter().map(|p| serde_json::json!({"one_thread_s": p.0, "two_threads_ratio": p.1})).collect::<Vec<_>>(),
            "disk_write_bytes_per_s_per_round": disk,
            "ratios": ratios,
            "limits": lim.iter().map(|(n, r)| serde_json::json!({"what": n, "bytes_per_s": r})).collect::<Vec<_>>(),
        });
        std::fs::write(j, serde_json::to_string_pretty(&doc)?)?;
        eprintln!("bench: wrote {}", j.display());
    }
    Ok(())
}
