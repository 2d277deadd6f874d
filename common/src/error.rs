//! One way to say an error with its causes.

use std::error::Error;

/// An error and its causes on one line, `outer: inner: innermost`, each
/// said once: many errors already include their cause's text in their own
/// message, while others (HTTP clients) wrap the reason a connection
/// failed ("invalid peer certificate: UnknownIssuer") several levels down
/// and name none of it in their own ("client error (Connect)").
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn the_chain_names_every_cause_once() {
        let e = Wrap(
            "client error (Connect)",
            Some(Box::new(Wrap(
                "invalid peer certificate: UnknownIssuer",
                None,
            ))),
        );
        assert_eq!(
            chain(&e),
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        );
        // A cause already quoted in its wrapper's message is not repeated.
        let e = Wrap(
            "reading config.toml: permission denied",
            Some(Box::new(Wrap("permission denied", None))),
        );
        assert_eq!(chain(&e), "reading config.toml: permission denied");
    }
}
