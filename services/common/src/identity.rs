//! Identities, as the gateway issues and verifies them and canvas-api records them
//! (docs/protocol.md, Identity): the cookie's name, the identity's form, and the public
//! handle shown instead of it.

use sha2::{Digest, Sha256};

/// The cookie holding a browser's signed anonymous identity.
pub const COOKIE_NAME: &str = "pxp_identity";
/// Every anonymous identity starts with this, followed by 32 lowercase hex digits.
pub const ANONYMOUS_PREFIX: &str = "anon.";
/// Every public handle of an anonymous identity starts with this.
pub const HANDLE_PREFIX: &str = "anon-";

/// Whether `id` has the form of an anonymous identity (`anon.` and 32 lowercase hex digits).
pub fn is_identity(id: &str) -> bool {
    id.strip_prefix(ANONYMOUS_PREFIX).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The public handle of an identity: `anon-` and 8 hex digits of a digest of it. Shown in
/// the hello, the pixel info and the history; the identity itself is never shown.
pub fn handle_of(id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"pixel-playground handle\0")
        .chain_update(id.as_bytes())
        .finalize();
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{HANDLE_PREFIX}{hex}")
}

/// How a placer is shown publicly (pixel info, history): an identity's handle; any other
/// client id as it is (placements made before identities, or by tooling).
pub fn public_name(client_id: &str) -> String {
    if is_identity(client_id) {
        handle_of(client_id)
    } else {
        client_id.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_have_one_form() {
        assert!(is_identity("anon.0123456789abcdef0123456789abcdef"));
        for bad in [
            "anon.0123456789abcdef0123456789abcde",
            "anon.0123456789abcdef0123456789abcdef0",
            "anon.0123456789ABCDEF0123456789abcdef",
            "anon-0123456789abcdef0123456789abcdef",
            "gw-0123456789abcdef",
            "",
        ] {
            assert!(!is_identity(bad), "{bad}");
        }
    }

    #[test]
    fn handles_are_stable_short_and_not_the_identity() {
        let id = "anon.0123456789abcdef0123456789abcdef";
        let handle = handle_of(id);
        assert_eq!(handle, handle_of(id));
        assert_eq!(handle.len(), HANDLE_PREFIX.len() + 8);
        assert!(handle.starts_with(HANDLE_PREFIX));
        assert!(!id.contains(&handle[HANDLE_PREFIX.len()..]));
        assert_ne!(handle, handle_of("anon.0123456789abcdef0123456789abcdee"));
        assert_eq!(public_name(id), handle);
        assert_eq!(public_name("gw-0123456789abcdef"), "gw-0123456789abcdef");
    }
}
