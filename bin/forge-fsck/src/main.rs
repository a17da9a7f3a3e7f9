//! forge-fsck: verify a btrfs image. Parses options, draws progress, prints
//! findings; the checking is `btrfs_check`.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use btrfs_check::{Options, Progress, Report, Severity};
use clap::Parser;

/// Exit codes as fsck(8) documents them.
const EXIT_OK: u8 = 0;
const EXIT_OPERATIONAL: u8 = 8;
const EXIT_USAGE: u8 = 16;

#[derive(Parser, Debug)]
#[command(
    name = "forge-fsck",
    version,
    about = "Verify every tree block, reference, extent and checksum of a btrfs image",
    long_about = "Verify every tree block (each copy), reference, extent and checksum of a \
                  btrfs image, as `btrfs check --readonly --check-data-csum` does.\n\n\
                  Exit status: 0 no errors; 4 errors found (left uncorrected); 8 operational \
                  error (the image cannot be read, or it uses something this checker cannot \
                  verify); 16 usage error."
)]
struct Args {
    /// The image file (or block device) to check
    image: PathBuf,
    /// Check metadata only: do not read data to compare checksums or decompress
    #[arg(long = "metadata-only")]
    metadata_only: bool,
    /// Print the findings as JSON (for CI)
    #[arg(long)]
    json: bool,
    /// Print nothing but findings (no progress bar, no summary)
    #[arg(short, long)]
    quiet: bool,
    /// Worker threads (default: all cores)
    #[arg(short = 'j', long = "threads", value_name = "N", default_value = "0")]
    threads: usize,
    /// Data reads in flight (default 8)
    #[arg(long = "io-depth", value_name = "N", default_value = "0")]
    io_depth: usize,
    /// Keep at most N findings of each kind
    #[arg(long = "max-findings", value_name = "N", default_value = "200")]
    max_findings: usize,
}

/// A progress bar on stderr.
struct Bar {
    bar: indicatif::ProgressBar,
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        self.bar.set_position(0);
        if total == 0 {
            self.bar.set_length(0);
            self.bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
        } else {
            self.bar.set_length(total);
            self.bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
        }
        self.bar.set_message(name.to_string());
    }

    fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
}

fn summary(r: &Report) -> String {
    let s = &r.stats;
    let warnings = r.findings.len() - r.errors();
    format!(
        "{} error(s), {} other finding(s); checked {} trees, {} tree blocks ({} copies), {} extent items, {} inodes, {} bytes of data, {} compressed extents",
        r.errors(),
        warnings,
        s.trees,
        s.tree_blocks,
        s.tree_block_copies,
        s.extent_items,
        s.inodes,
        s.data_bytes_verified,
        s.compressed_extents
    )
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::from(EXIT_OK)
                }
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    let show_bar = !args.quiet && std::io::stderr().is_terminal();
    let bar = show_bar.then(|| {
        Arc::new(Bar {
            bar: indicatif::ProgressBar::new_spinner(),
        })
    });
    let opts = Options {
        metadata_only: args.metadata_only,
        max_findings_per_kind: args.max_findings.max(1),
        threads: args.threads,
        io_depth: args.io_depth,
        progress: bar.clone().map(|b| b as Arc<dyn Progress>),
    };
    let report = btrfs_check::check_path(&args.image, &opts);
    if let Some(b) = &bar {
        b.bar.finish_and_clear();
    }
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                let v = serde_json::json!({
                    "image": args.image.display().to_string(),
                    "error": e.to_string(),
                    "exit_code": EXIT_OPERATIONAL,
                });
                println!("{v}");
            } else {
                eprintln!("forge-fsck: {e}");
            }
            return ExitCode::from(EXIT_OPERATIONAL);
        }
    };
    let code = report.exit_code();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "image": args.image.display().to_string(),
            "findings": report.findings,
            "stats": report.stats,
            "errors": report.errors(),
            "exit_code": code,
        });
        let _ = writeln!(out, "{v}");
    } else {
        for f in &report.findings {
            let _ = writeln!(out, "{f}");
        }
        if report.stats.findings_dropped > 0 {
            let _ = writeln!(
                out,
                "({} more findings not shown: raise --max-findings)",
                report.stats.findings_dropped
            );
        }
        if !args.quiet {
            let verdict = if report.errors() > 0 {
                "ERRORS FOUND"
            } else if report
                .findings
                .iter()
                .any(|f| f.severity == Severity::Unsupported)
            {
                "NOT FULLY CHECKED"
            } else {
                "no errors found"
            };
            let _ = writeln!(
                out,
                "forge-fsck: {}: {verdict}: {}",
                args.image.display(),
                summary(&report)
            );
        }
    }
    ExitCode::from(code as u8)
}
