//! `kakehashi`: the command-line client of a Kakehashi broker.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "{}: 非同期ランタイムを起動できません / cannot start the async runtime: {e}",
                cli::fail::ERROR
            );
            return ExitCode::from(cli::fail::Exit::Internal.code());
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            eprintln!("{}: {e}", cli::fail::ERROR);
            ExitCode::from(e.exit.code())
        }
    }
}
