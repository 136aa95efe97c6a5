//! The `pgway` command: parses settings, sets up logging and hands over to the library.

use std::process::ExitCode;

use pgway::app::config::Command;

// Every call allocates in the HTTP/2 and gRPC layers; jemalloc spends ~5% fewer instructions
// per call than the system allocator and hands freed memory back on its own, so RSS stays
// flat under steady load (bench/notes.md, finding 5; mimalloc in its defaults did not).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = pgway::app::config::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pgway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => {
            pgway::logging::init(args.log_format);
            let config = match args.validate() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("pgway: invalid setting {error}");
                    return ExitCode::from(2);
                }
            };
            match runtime.block_on(pgway::app::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("pgway: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Probe(probe) => {
            ExitCode::from(runtime.block_on(pgway::admin::probe::run(&probe.args)))
        }
        Command::Stats(args) => {
            ExitCode::from(runtime.block_on(pgway::admin::stats::run(args.metrics_addr)))
        }
        Command::Dev(args) => {
            pgway::logging::init(args.log_format);
            match runtime.block_on(pgway::devdb::run_dev(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("pgway dev: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
