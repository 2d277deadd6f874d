//! Bearer tokens: who may post events, and under which source name.
//!
//! Tokens come from a file (`--tokens-file`) or, when no file is given,
//! from the environment (`TOKENTALLY_GATEWAY_TOKENS`). The file has one `name:token` per line;
//! blank lines and lines starting with `#` are ignored; surrounding
//! whitespace is trimmed. The environment variable holds the same pairs
//! separated by commas. A name is 1–64 characters of `A-Z a-z 0-9 . _ -`
//! and is recorded as the `source` of the events sent with its token; a
//! token is any non-empty string without whitespace or commas (use at
//! least 32 random characters, e.g. `openssl rand -hex 32`).

use std::fmt;

/// The accepted tokens and their names. Never prints a token.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The token names, in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Add the lines of a tokens file; `origin` names the file in errors.
    pub fn add_file_text(&mut self, text: &str, origin: &str) -> Result<(), String> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            self.add_pair(line)
                .map_err(|e| format!("{origin} line {}: {e}", i + 1))?;
        }
        Ok(())
    }

    /// Add `name:token[,name:token...]`; `origin` names the source in errors.
    pub fn add_list(&mut self, list: &str, origin: &str) -> Result<(), String> {
        for (i, pair) in list.split(',').enumerate() {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            self.add_pair(pair)
                .map_err(|e| format!("{origin} entry {}: {e}", i + 1))?;
        }
        Ok(())
    }

    fn add_pair(&mut self, pair: &str) -> Result<(), String> {
        let Some((name, token)) = pair.split_once(':') else {
            return Err("expected name:token".into());
        };
        let (name, token) = (name.trim(), token.trim());
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(format!(
                "token name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
            ));
        }
        if token.is_empty() || token.contains(|c: char| c.is_whitespace() || c == ',') {
            return Err(format!(
                "the token of {name} must be non-empty, without whitespace or commas"
            ));
        }
        if self.entries.iter().any(|(n, _)| n == name) {
            return Err(format!("token name {name} appears twice"));
        }
        if self.entries.iter().any(|(_, t)| t == token.as_bytes()) {
            return Err(format!(
                "the token of {name} is also the token of another name"
            ));
        }
        if token.len() < 16 {
            tracing::warn!(
                name,
                "the token of {name} is shorter than 16 characters; use long random tokens"
            );
        }
        self.entries
            .push((name.to_owned(), token.as_bytes().to_vec()));
        Ok(())
    }

    /// The name of `token`, if it is one of ours. Every token is compared,
    /// each in time independent of where the bytes differ.
    pub fn name_of(&self, token: &[u8]) -> Option<&str> {
        let mut found = None;
        for (name, candidate) in &self.entries {
            if constant_time_eq(candidate, token) {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// The name of the token in an `Authorization: Bearer TOKEN` header value.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Option<&str> {
        let value = authorization?;
        let (scheme, rest) = value.split_at_checked(7)?;
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return None;
        }
        self.name_of(rest.trim_ascii())
    }

    /// The name of the token in an `Authorization: Basic` header value
    /// whose user is the token's name and whose password is the token (what
    /// a browser sends once asked).
    pub fn authorize_basic(&self, authorization: Option<&[u8]>) -> Option<&str> {
        let value = authorization?;
        let (scheme, rest) = value.split_at_checked(6)?;
        if !scheme.eq_ignore_ascii_case(b"basic ") {
            return None;
        }
        let decoded = data_encoding::BASE64.decode(rest.trim_ascii()).ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        let (user, token) = (&decoded[..colon], &decoded[colon + 1..]);
        self.name_of(token).filter(|name| name.as_bytes() == user)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_takes_the_name_as_user_and_the_token_as_password() {
        let mut t = Tokens::default();
        t.add_list("viewer:0123456789abcdef0123", "test").unwrap();
        let basic = |s: &str| format!("Basic {}", data_encoding::BASE64.encode(s.as_bytes()));
        let ok = basic("viewer:0123456789abcdef0123");
        assert_eq!(t.authorize_basic(Some(ok.as_bytes())), Some("viewer"));
        for bad in [
            basic("other:0123456789abcdef0123"),
            basic("viewer:0123456789abcdef012"),
            basic("viewer"),
            "Basic !!!".to_string(),
            "Bearer 0123456789abcdef0123".to_string(),
        ] {
            assert_eq!(t.authorize_basic(Some(bad.as_bytes())), None, "{bad}");
        }
    }

    #[test]
    fn file_and_list_formats() {
        let mut t = Tokens::default();
        t.add_file_text(
            "# fleet tokens\n\nnode-eu:0123456789abcdef0123\n  batch.jobs_2 : s3cr3t-s3cr3t-s3cr3t  \n",
            "tokens.txt",
        )
        .unwrap();
        t.add_list("ci:ci-token-ci-token-1,,other:xyzxyzxyzxyzxyzxyz", "env")
            .unwrap();
        assert_eq!(
            t.names().collect::<Vec<_>>(),
            ["node-eu", "batch.jobs_2", "ci", "other"]
        );
        assert_eq!(t.name_of(b"s3cr3t-s3cr3t-s3cr3t"), Some("batch.jobs_2"));
        assert_eq!(t.name_of(b"s3cr3t-s3cr3t-s3cr3"), None);
        assert_eq!(t.name_of(b""), None);
        assert_eq!(t.authorize(Some(b"Bearer ci-token-ci-token-1")), Some("ci"));
        assert_eq!(
            t.authorize(Some(b"bearer   ci-token-ci-token-1 ")),
            Some("ci")
        );
        assert_eq!(t.authorize(Some(b"Basic ci-token-ci-token-1")), None);
        assert_eq!(t.authorize(Some(b"Bearer")), None);
        assert_eq!(t.authorize(None), None);
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn bad_entries_name_their_line() {
        let mut t = Tokens::default();
        let e = t
            .add_file_text("a:1234567890123456\nno-colon\n", "f")
            .unwrap_err();
        assert!(e.starts_with("f line 2:"), "{e}");
        assert!(
            t.add_list("a:other-token-abcdef", "env")
                .unwrap_err()
                .contains("twice")
        );
        assert!(t.add_list("b:1234567890123456", "env").is_err());
        assert!(t.add_list("bad name:tok", "env").is_err());
        assert!(t.add_list("x:", "env").is_err());
    }
}
