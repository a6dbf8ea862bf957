//! Shared command-line conventions: bad usage is one line on stderr and exit code 2; JSON
//! output is written by hand (no serde), with one string escaper.

use std::fmt::{Display, Write as _};
use std::process::ExitCode;
use std::str::FromStr;

/// Prints `herd: {message}` and returns exit code 2 (bad usage).
pub fn usage_error(message: impl Display) -> ExitCode {
    eprintln!("herd: {message}");
    ExitCode::from(2)
}

/// Prints `herd COMMAND: {message}` and returns exit code 2 (bad usage of a subcommand).
pub fn command_error(command: &str, message: impl Display) -> ExitCode {
    eprintln!("herd {command}: {message}");
    ExitCode::from(2)
}

/// What a subcommand's argument parser returned, turned into the arguments or the exit code:
/// `Ok(None)` (`--help`) prints `help` and exits 0; an error prints
/// `herd COMMAND: ERROR (see herd COMMAND --help)` and exits 2.
pub fn arguments<T>(command: &str, help: &str, parsed: Result<Option<T>, String>) -> Result<T, ExitCode> {
    match parsed {
        Ok(Some(args)) => Ok(args),
        Ok(None) => {
            print!("{help}");
            Err(ExitCode::SUCCESS)
        }
        Err(e) => Err(command_error(command, format!("{e} (see herd {command} --help)"))),
    }
}

/// Parses an option's value, naming the option in the error.
pub fn parse<T>(parser: &mut lexopt::Parser, option: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: Display,
{
    let value = parser.value().map_err(|e| e.to_string())?;
    let text = value.to_string_lossy();
    text.parse::<T>().map_err(|e| format!("{option} {text}: {e}"))
}

/// Appends `v` as a JSON string literal, escaping quotes, backslashes and control characters.
pub fn push_json_string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
