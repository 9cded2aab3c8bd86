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
/// Every signed-in identity starts with this, followed by 32 lowercase hex digits of a
/// digest of the provider's issuer and the person's subject there.
pub const SIGNED_IN_PREFIX: &str = "oidc.";
/// Every public handle of a signed-in identity starts with this.
pub const SIGNED_IN_HANDLE_PREFIX: &str = "user-";

fn is_hex_128(hex: &str) -> bool {
    hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `id` has the form of an identity: anonymous (`anon.`) or signed in (`oidc.`),
/// then 32 lowercase hex digits.
pub fn is_identity(id: &str) -> bool {
    is_anonymous(id) || is_signed_in(id)
}

/// Whether `id` has the form of an anonymous identity.
pub fn is_anonymous(id: &str) -> bool {
    id.strip_prefix(ANONYMOUS_PREFIX).is_some_and(is_hex_128)
}

/// Whether `id` has the form of a signed-in identity.
pub fn is_signed_in(id: &str) -> bool {
    id.strip_prefix(SIGNED_IN_PREFIX).is_some_and(is_hex_128)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The identity of the person `subject` at the provider `issuer`: the same on every
/// sign-in, and neither value readable from it.
pub fn signed_in_identity(issuer: &str, subject: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"pixel-playground oidc\0")
        .chain_update(issuer.as_bytes())
        .chain_update(b"\0")
        .chain_update(subject.as_bytes())
        .finalize();
    format!("{SIGNED_IN_PREFIX}{}", hex(&digest[..16]))
}

/// The public handle of an identity: `anon-` (or `user-` when signed in) and 8 hex digits
/// of a digest of it. Shown in the hello, the pixel info and the history, and named by
/// moderators; the identity itself is never shown.
pub fn handle_of(id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"pixel-playground handle\0")
        .chain_update(id.as_bytes())
        .finalize();
    let prefix = if is_signed_in(id) {
        SIGNED_IN_HANDLE_PREFIX
    } else {
        HANDLE_PREFIX
    };
    format!("{prefix}{}", hex(&digest[..4]))
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

    #[test]
    fn a_signed_in_identity_is_per_issuer_and_subject_and_has_its_own_handle() {
        let id = signed_in_identity("https://id.example.com/", "248289761001");
        assert!(
            is_identity(&id) && is_signed_in(&id) && !is_anonymous(&id),
            "{id}"
        );
        assert_eq!(
            id,
            signed_in_identity("https://id.example.com/", "248289761001")
        );
        assert_ne!(
            id,
            signed_in_identity("https://other.example.com/", "248289761001")
        );
        assert_ne!(
            id,
            signed_in_identity("https://id.example.com/", "248289761002")
        );
        // The separator keeps (issuer, subject) pairs apart that concatenate alike.
        assert_ne!(
            signed_in_identity("https://a/b", "c"),
            signed_in_identity("https://a/", "bc")
        );
        assert!(!id.contains("248289761001"));
        let handle = public_name(&id);
        assert!(handle.starts_with(SIGNED_IN_HANDLE_PREFIX), "{handle}");
        assert_eq!(handle.len(), SIGNED_IN_HANDLE_PREFIX.len() + 8);
    }
}
