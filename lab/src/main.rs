//! `lab`: build kernels with a patch series, boot them under QEMU on x86_64, aarch64 and
//! ppc64le, run stress workloads, judge the console, write JUnit. See ARCHITECTURE.md.

mod accel;
mod apt;
mod arch;
mod bench;
mod cache;
mod cli;
mod doctor;
mod image;
mod inputs;
mod kernel;
mod matrix;
mod model;
mod plan;
mod process;
mod report;
mod results;
mod run;
mod ssh_keys;
mod triage;
mod ui;
mod vm;
mod vocab;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::args::{Cli, Command};
// bench.rs names it `crate::AccelArg`.
use crate::cli::args::AccelArg;

fn main() -> ExitCode {
    // Output piped into `head` ends with EPIPE: die quietly like any Unix tool, not with a panic.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<process::Interrupted>() {
            Some(interrupted) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "lab: {interrupted}; every QEMU and make started was killed, finished results are kept"
                );
                ExitCode::from(interrupted.0.exit_code())
            }
            None => {
                eprintln!("lab: error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    process::install_signal_handlers()?;
    let env = cli::Env::new(cli.cache_dir, cli.verbose)?;
    match cli.command {
        Command::Run(args) => cli::run::run(&env, args),
        Command::Boot { cell, hold } => cli::hold::boot(&env, &cell, hold),
        Command::Ssh { cell, hold, command } => cli::hold::ssh(&env, &cell, hold, command),
        Command::Build(args) => cli::build::build(&env, args),
        Command::Image { arch } => cli::build::image(&env, arch),
        Command::Triage(args) => cli::triage::triage(args),
        Command::Compare { base, new, junit, html } => {
            cli::results::compare(&base, &new, junit.as_deref(), html.as_deref())
        }
        Command::Report { dir } => cli::results::report(&dir),
        Command::Merge { out, shards } => cli::results::merge(&out, &shards),
        Command::Export { dir, kcidb: _, origin } => cli::results::export_kcidb(&dir, &origin),
        Command::Series(args) => cli::series::series(&env, args),
        Command::Doctor => cli::doctor::doctor(&env),
        Command::Setup { dry_run } => cli::doctor::setup(&env, dry_run),
        Command::Model(args) => cli::model::model(args),
        Command::Bench(args) => bench::run(&env.sh, &env.cache()?, &args, &env.ui, Path::new(cli::PROJECT_DIR)),
    }
}
