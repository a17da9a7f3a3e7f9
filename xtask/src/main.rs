//! Developer tasks: `cargo xtask test` runs every test with the oracles.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

mod bench;
mod fsck;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {what}: {cmd:?}");
    let st = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// Install missing programs (`prog:package`) with apt where we can, and say so.
pub fn ensure_packages(list: &[&str]) {
    let missing: Vec<&str> = list
        .iter()
        .filter_map(|e| e.split_once(':'))
        .filter(|(prog, _)| !have(prog))
        .map(|(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return;
    }
    if is_root() && have("apt-get") {
        eprintln!("xtask: installing {} with apt-get", missing.join(" "));
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "(apt-get install -y -qq {0} || (apt-get update -qq && apt-get install -y -qq {0})) >/dev/null 2>&1",
                missing.join(" ")
            ))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    } else {
        eprintln!(
            "xtask: missing {} (not root with apt): those comparisons are skipped",
            missing.join(" ")
        );
    }
}

/// Install btrfs-progs with apt where we can (root on Debian), and say so.
fn ensure_oracles() -> bool {
    if have("btrfs") && have("mkfs.btrfs") {
        return true;
    }
    if is_root() && have("apt-get") {
        eprintln!(
            "xtask: btrfs-progs missing; installing it with apt-get (needed by the oracle tests)"
        );
        let ok = Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq btrfs-progs >/dev/null")
            .status()
            .is_ok_and(|s| s.success());
        if ok && have("btrfs") {
            return true;
        }
        eprintln!("xtask: apt-get install btrfs-progs failed");
    }
    eprintln!(
        "\n*** xtask: btrfs-progs is not available and cannot be installed here (need root with apt): \
         the oracle tests will SKIP ***\n"
    );
    false
}

fn test(args: &[String]) -> Result<()> {
    let oracles = ensure_oracles();
    let kernel = oracles && is_root() && Path::new("/dev/loop-control").exists();
    if !kernel {
        eprintln!(
            "\n*** xtask: not root or no loop devices: the kernel mount tests will SKIP ***\n"
        );
    }
    let mut c = Command::new("cargo");
    c.args(["test", "--workspace", "--all-targets"]);
    c.args(args);
    // The slow tests (a real tree of tens of thousands of files) run here too.
    c.args(["--", "--include-ignored"]);
    if kernel {
        // Everything is here: a test that would skip is a failure instead.
        c.env("FORGE_REQUIRE_ORACLES", "1");
    }
    step("tests", &mut c)?;
    step(
        "doc tests",
        Command::new("cargo").args(["test", "--workspace", "--doc"]),
    )?;
    // A bounded fuzz run: mutated images through forge-fsck and forge-inspect
    // must not panic, hang or allocate without bound.
    fsck::fuzz(&["--seconds".to_string(), "180".to_string()])?;
    step(
        "format",
        Command::new("cargo").args(["fmt", "--all", "--check"]),
    )?;
    step(
        "clippy",
        Command::new("cargo").args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench::bench(&root(), &args[1..]),
        Some("fuzz") => fsck::fuzz(&args[1..]),
        Some("bench-fsck") => fsck::bench_fsck(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask test [cargo test args] | cargo xtask bench [DIR] [--runs N] [--json FILE] [--only NAME,...] | cargo xtask fuzz [--seconds N] [--libfuzzer] | cargo xtask bench-fsck [IMAGE] [--gib N] [--runs N]");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
