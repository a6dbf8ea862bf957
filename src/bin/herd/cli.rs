//! Shared command-line conventions: bad usage is one line on stderr and exit code 2.

use std::fmt::Display;
use std::process::ExitCode;
use std::str::FromStr;

/// Prints `herd: {message}` and returns exit code 2 (bad usage).
pub fn usage_error(message: impl Display) -> ExitCode {
    eprintln!("herd: {message}");
    ExitCode::from(2)
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
