//! Errors as they are logged: the message and every cause behind it.
//!
//! The project's convention: an error's own message says what failed, its cause is only in
//! `source()` (never repeated in the message), and whoever logs it logs the whole chain with
//! [`ErrorChain`].

use std::{error::Error, fmt};

/// Displays an error followed by each of its causes: `outer: middle: root`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the config")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn shows_every_cause_in_order() {
        let error = Outer(Middle(std::io::Error::other("disk on fire")));
        assert_eq!(
            ErrorChain(&error).to_string(),
            "cannot start: cannot read the config: disk on fire"
        );
    }

    #[test]
    fn an_error_without_a_cause_is_its_message() {
        let error = std::io::Error::other("alone");
        assert_eq!(ErrorChain(&error).to_string(), "alone");
    }
}
