//! Configuration errors: every problem names the file, the line and the key, and the loader
//! reports all of them at once so an operator fixes a file in one pass.

use std::fmt;
use std::path::PathBuf;

/// Everything wrong with one configuration file. Never empty.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line of the offending key, when it is known.
    pub line: Option<usize>,
    /// Dotted key path such as `route[1].upstream`, when the problem belongs to one key.
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
