//! forge-fsck's dev tasks: `cargo xtask fuzz` and `cargo xtask bench-fsck`.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{have, is_root, root, step};

/// Value of `--name V` in `args`.
fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// `cargo xtask fuzz [--seconds N] [--seed S] [--libfuzzer [--target NAME]]`: a
/// bounded fuzz run of `btrfs_check::fuzz_one`. By default the stable-Rust
/// mutation runner (structure-aware mutations of small images, with panic, hang
/// and allocation limits); with `--libfuzzer`, cargo-fuzz on the targets in
/// fuzz/ (needs `cargo install cargo-fuzz`; nightly flags via RUSTC_BOOTSTRAP=1).
pub fn fuzz(args: &[String]) -> Result<()> {
    let seconds: u64 = opt(args, "--seconds").unwrap_or("180").parse()?;
    if args.iter().any(|a| a == "--libfuzzer") {
        let target = opt(args, "--target").unwrap_or("check_patched");
        eprintln!("xtask: fuzz: cargo fuzz run {target} for {seconds} s");
        let st = Command::new("cargo")
            .args(["fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .args([
                "-rss_limit_mb=4096",
                "-timeout=60",
                "-max_len=400",
                "-len_control=0",
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(root().join("fuzz"))
            .status()
            .context("cannot run cargo fuzz (cargo install cargo-fuzz)")?;
        if !st.success() {
            bail!("cargo fuzz found a failure ({st}); see fuzz/artifacts/");
        }
        return Ok(());
    }
    let mut c = Command::new("cargo");
    c.args([
        "run",
        "--quiet",
        "-p",
        "btrfs-check",
        "--example",
        "fuzz_mutate",
        "--",
    ])
    .args(["--seconds", &seconds.to_string()]);
    if let Some(s) = opt(args, "--seed") {
        c.args(["--seed", s]);
    }
    step("fuzz (stable mutation runner)", &mut c)
}

fn drop_caches() {
    if is_root() {
        let _ = Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
}

/// Fill `dir` with about `bytes` of incompressible files: a quarter of the bytes
/// in small files (512 B to 16 KiB, so about 100k files for 3 GiB, many of them
/// inline), the rest in 64 MiB files; deterministic content.
fn generate_tree(dir: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let mut rng = crate::bench::Rng(0x9e37_79b9_7f4a_7c15);
    let mut next = move || rng.next();
    let small_target = bytes / 4;
    let (mut small, mut big) = (0u64, 0u64);
    let mut i = 0u64;
    let mut buf = Vec::new();
    while small + big < bytes {
        let want_small =
            small < small_target && (!i.is_multiple_of(400) || big >= bytes - small_target);
        let size = if want_small {
            512 + next() % (16 << 10)
        } else {
            64 << 20
        };
        let sub = dir.join(format!("d{:03}/e{:02}", i % 300, (i / 300) % 20));
        std::fs::create_dir_all(&sub)?;
        buf.clear();
        while (buf.len() as u64) < size {
            buf.extend_from_slice(&next().to_le_bytes());
        }
        buf.truncate(size as usize);
        std::fs::File::create(sub.join(format!("f{i}")))?.write_all(&buf)?;
        if want_small {
            small += size;
        } else {
            big += size;
        }
        i += 1;
    }
    eprintln!(
        "xtask: generated {i} files, {} bytes ({small} in small files) in {}",
        small + big,
        dir.display()
    );
    Ok(())
}

fn timed(what: &str, cmd: &mut Command) -> Result<f64> {
    drop_caches();
    let t = std::time::Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!("xtask: {what}: {secs:.2} s ({})", out.status);
    if !out.status.success() {
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bail!("{what} failed");
    }
    Ok(secs)
}

/// `cargo xtask bench-fsck [IMAGE] [--gib N] [--runs N]`: time forge-fsck against
/// `btrfs check --readonly --check-data-csum` on the same image (made with
/// forge-mkfs --rootdir of generated data when none is given), with the page
/// cache dropped before each run when root, and print the ratio.
pub fn bench_fsck(args: &[String]) -> Result<()> {
    step(
        "release build",
        Command::new("cargo").args(["build", "--release", "-p", "forge-fsck", "-p", "forge-mkfs"]),
    )?;
    let bin = root().join("target/release");
    let image = match args.first().filter(|a| !a.starts_with("--")) {
        Some(p) => PathBuf::from(p),
        None => {
            let gib: f64 = opt(args, "--gib").unwrap_or("3").parse()?;
            let work = root().join("target/bench-fsck");
            let src = work.join("src");
            let img = work.join("bench.img");
            let want = (gib * (1u64 << 30) as f64) as u64;
            let tag = format!("v2 {want}");
            let made = std::fs::read_to_string(work.join("src.bytes")).ok();
            if made.as_deref() != Some(tag.as_str()) {
                let _ = std::fs::remove_dir_all(&src);
                let _ = std::fs::remove_file(&img);
                generate_tree(&src, want)?;
                std::fs::write(work.join("src.bytes"), &tag)?;
            }
            if !img.exists() {
                step(
                    "forge-mkfs --rootdir",
                    Command::new(bin.join("forge-mkfs"))
                        .args(["-q", "-f", "--rootdir"])
                        .arg(&src)
                        .arg(&img),
                )?;
            }
            img
        }
    };
    if !have("btrfs") {
        bail!("btrfs-progs is not installed: nothing to compare with");
    }
    let gib = std::fs::metadata(&image)?.len() as f64 / (1u64 << 30) as f64;
    eprintln!(
        "xtask: bench-fsck on {} ({gib:.2} GiB){}",
        image.display(),
        if is_root() {
            ", page cache dropped before each run"
        } else {
            " (not root: the page cache is not dropped)"
        }
    );
    // Warm up the binaries and the VM's memory, then the timed runs.
    let _ = Command::new(bin.join("forge-fsck"))
        .args(["-q", "--metadata-only"])
        .arg(&image)
        .output();
    // Interleaved runs, medians: this VM's I/O and memory timings vary.
    let runs: usize = opt(args, "--runs").unwrap_or("3").parse()?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        ours.push(timed(
            "forge-fsck",
            Command::new(bin.join("forge-fsck")).arg("-q").arg(&image),
        )?);
        theirs.push(timed(
            "btrfs check --readonly --check-data-csum",
            Command::new("btrfs")
                .args(["check", "--readonly", "--check-data-csum"])
                .arg(&image),
        )?);
    }
    use crate::bench::median;
    let (o, t) = (median(&mut ours), median(&mut theirs));
    println!(
        "bench-fsck: {gib:.2} GiB image, median of {} runs: forge-fsck {o:.2} s, btrfs check --readonly --check-data-csum {t:.2} s, ratio {:.2}",
        ours.len(),
        o / t
    );
    Ok(())
}
