//! Shared command-line conventions: bad usage is one line on stderr and exit code 2; JSON
//! figures are rounded to the precision they are measured with.

use std::fmt::Display;
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

/// `v` rounded to `decimals` places, as a JSON number; `null` if it is not finite. The JSON
/// shows the shortest form of the rounded value (`0.8`, not `0.800000`), so figures carry no
/// digits beyond what they measure.
pub fn json_number(v: f64, decimals: i32) -> serde_json::Value {
    let scale = 10f64.powi(decimals);
    // `From<f64>` turns NaN and the infinities into `null`.
    serde_json::Value::from((v * scale).round() / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_json_numbers() {
        assert_eq!(json_number(1234.56, 1).to_string(), "1234.6");
        assert_eq!(json_number(2.0, 4).to_string(), "2.0");
        assert_eq!(json_number(0.1 + 0.2, 6).to_string(), "0.3");
        assert_eq!(json_number(400.0004, 3).to_string(), "400.0");
        assert_eq!(json_number(f64::INFINITY, 4), serde_json::Value::Null);
        assert_eq!(json_number(f64::NAN, 1), serde_json::Value::Null);
    }
}
