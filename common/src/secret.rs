//! Secrets: passwords, bearer tokens and signing keys.
//!
//! Every secret tokentally reads comes through [`SecretSource`], from a
//! file or from an environment variable, never from a flag (argv is
//! visible to every user of the machine). One precedence holds
//! everywhere: **a file named in the configuration or on the command line
//! wins; the environment variable is read only when no file is named.**
//! The file is named for this one connection, while a variable is ambient
//! and may be shared (one `TOKENTALLY_WEBHOOK_SECRET` for several
//! endpoints), so the specific setting decides. When both are present the
//! variable is ignored and a log line says so, naming both, never a value.
//!
//! A file is read with a bound ([`SECRET_FILE_BYTES`] unless the caller
//! sets another) and must be UTF-8.
//! Errors name the file or the variable, never the content, and
//! [`SecretText`] prints as `<redacted>`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::files::read_bounded;

/// A password, secret or token file holds a line or a few; anything past
/// this is the wrong file.
pub const SECRET_FILE_BYTES: u64 = 64 << 10;

/// Where a secret comes from: an optional file, else an environment
/// variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    file: Option<PathBuf>,
    env: String,
    limit: u64,
}

/// Where a secret was read from, for errors and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "the file {}", p.display()),
            Origin::Env(name) => write!(f, "the environment variable {name}"),
        }
    }
}

/// A secret's text and where it came from. Never prints the text.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText {
    text: String,
    origin: Origin,
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted from {}>", self.origin)
    }
}

impl SecretText {
    /// The whole text (a file's content, a variable's value).
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The first line, for one-line secrets (a password, a signing key):
    /// a trailing newline or a second line is not part of it.
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file exists (or should) but cannot be read; the message names
    /// the file, never its content.
    #[error("cannot read the secret file {}: {source}", .path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not UTF-8")]
    NotUtf8(Origin),
}

impl SecretSource {
    /// Read from `file` when it is given, else from the variable `env`.
    pub fn new(env: impl Into<String>, file: Option<&Path>) -> Self {
        SecretSource {
            file: file.map(Path::to_path_buf),
            env: env.into(),
            limit: SECRET_FILE_BYTES,
        }
    }

    /// Allow a file of up to `bytes` (default [`SECRET_FILE_BYTES`]), for
    /// secrets that are lists (a gateway's bearer tokens).
    pub fn with_limit(mut self, bytes: u64) -> Self {
        self.limit = bytes;
        self
    }

    /// The environment variable this source falls back to.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// The secret, or `None` when no file is named and the variable is
    /// unset. A named file that cannot be read is an error, never a quiet
    /// fall-back to the variable.
    pub fn read(&self) -> Result<Option<SecretText>, SecretError> {
        let var = std::env::var_os(&self.env);
        let Some(path) = &self.file else {
            return match var {
                None => Ok(None),
                Some(v) => v.into_string().map(|text| {
                    Some(SecretText {
                        text,
                        origin: Origin::Env(self.env.clone()),
                    })
                }),
            }
            .map_err(|_| SecretError::NotUtf8(Origin::Env(self.env.clone())));
        };
        if var.is_some() {
            tracing::info!(
                file = %path.display(),
                ignored = %self.env,
                "a secret file is configured and wins over the environment variable"
            );
        }
        let bytes = read_bounded(path, self.limit).map_err(|source| SecretError::File {
            path: path.clone(),
            source,
        })?;
        let origin = Origin::File(path.clone());
        String::from_utf8(bytes)
            .map(|text| Some(SecretText { text, origin }))
            .map_err(|_| SecretError::NotUtf8(Origin::File(path.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test uses its own variable: tests run on parallel threads.
    fn set(name: &str, value: &str) {
        // SAFETY: every test sets only a variable no other test reads.
        unsafe { std::env::set_var(name, value) };
    }

    #[test]
    fn the_file_wins_over_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "from-file\nsecond line\n").unwrap();
        set("TT_TEST_SECRET_BOTH", "from-env");
        let s = SecretSource::new("TT_TEST_SECRET_BOTH", Some(&path))
            .read()
            .unwrap()
            .unwrap();
        assert_eq!(s.first_line(), "from-file");
        assert_eq!(s.expose(), "from-file\nsecond line\n");
        assert_eq!(s.origin(), &Origin::File(path));
    }

    #[test]
    fn without_a_file_the_variable_is_read() {
        set("TT_TEST_SECRET_ENV", "whsec_abc whsec_def");
        let s = SecretSource::new("TT_TEST_SECRET_ENV", None)
            .read()
            .unwrap()
            .unwrap();
        assert_eq!(s.expose(), "whsec_abc whsec_def");
        assert_eq!(s.origin(), &Origin::Env("TT_TEST_SECRET_ENV".into()));
        assert!(
            SecretSource::new("TT_TEST_SECRET_UNSET", None)
                .read()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_missing_or_oversized_file_is_an_error_that_never_shows_the_content() {
        let dir = tempfile::tempdir().unwrap();
        set("TT_TEST_SECRET_FALLBACK", "from-env");
        let missing = dir.path().join("nope");
        let err = SecretSource::new("TT_TEST_SECRET_FALLBACK", Some(&missing))
            .read()
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");

        let big = dir.path().join("big");
        std::fs::write(&big, "hunter2".repeat(10_000)).unwrap();
        let err = SecretSource::new("TT_TEST_SECRET_FALLBACK", Some(&big))
            .read()
            .unwrap_err()
            .to_string();
        assert!(err.contains("big") && !err.contains("hunter2"), "{err}");

        let binary = dir.path().join("binary");
        std::fs::write(&binary, b"hunter2\xff").unwrap();
        let err = SecretSource::new("TT_TEST_SECRET_FALLBACK", Some(&binary))
            .read()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not UTF-8") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn debug_never_shows_the_text() {
        set("TT_TEST_SECRET_DEBUG", "hunter2");
        let s = SecretSource::new("TT_TEST_SECRET_DEBUG", None)
            .read()
            .unwrap()
            .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("TT_TEST_SECRET_DEBUG"), "{shown}");
    }
}
