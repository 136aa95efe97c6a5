//! The command line and the environment parsed, with a refused value named by its environment
//! variable as well as its flag.

use super::cli::Cli;

/// The command with its subcommands, built (clap prints an argument only once it is).
pub(super) fn built_command() -> clap::Command {
    use clap::CommandFactory;
    let mut command = Cli::command();
    command.build();
    command
}

/// The long flag and environment variable of the first argument of `command` or of its
/// subcommands that `wanted` accepts.
pub(super) fn find_arg(
    command: &clap::Command,
    wanted: &dyn Fn(&clap::Arg) -> bool,
) -> Option<(String, Option<String>)> {
    command
        .get_arguments()
        .find(|arg| wanted(arg))
        .and_then(|arg| {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            arg.get_long().map(|flag| (flag.to_owned(), env))
        })
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_arg(sub, wanted))
        })
}

/// Parses the command line and the environment. A value the parser refuses is reported by
/// its environment variable as well as its flag (most settings come from the environment,
/// where the user never typed the flag), and the process exits with code 2; any other
/// parse outcome (`--help`, an unknown flag) is clap's own.
pub fn parse() -> Cli {
    use clap::Parser as _;
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => match invalid_value(&error) {
            Some(message) => {
                eprintln!("pgway: invalid setting {message}");
                std::process::exit(2)
            }
            None => error.exit(),
        },
    }
}

/// `PGWAY_X (--x): invalid value 'v': why` for an error about a value, else `None`.
pub(super) fn invalid_value(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let text = |kind| match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text.clone()),
        _ => None,
    };
    // clap names the argument as it prints it: `--pool-max <POOL_MAX>`.
    let shown = text(ContextKind::InvalidArg)?;
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let (flag, env) = find_arg(&built_command(), &|arg| arg.to_string() == shown)?;
    let why = match (error.kind(), std::error::Error::source(error)) {
        (ErrorKind::ValueValidation, Some(source)) => source.to_string(),
        _ => match error.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
            _ => "not a valid value".to_owned(),
        },
    };
    let named = match env {
        Some(env) => format!("{env} (--{flag})"),
        None => format!("--{flag}"),
    };
    Some(format!("{named}: invalid value {value:?}: {why}"))
}
