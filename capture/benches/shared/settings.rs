//! Reading a bench's settings from the environment.

use std::str::FromStr;

/// The variable `name` parsed, or `default` when it is unset; a value that
/// does not parse stops the bench with its name.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        Err(_) => default,
    }
}
