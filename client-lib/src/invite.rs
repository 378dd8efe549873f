//! Invitations: the out-of-band string that makes two people contacts.
//!
//! An invitation carries what the contact needs to write to the inviter:
//! the inviter's identity public keys (X25519 and the post-quantum X-Wing
//! key, see `crate::identity`), a deposit address (provider node id +
//! a queue created for this contact alone), a fresh 32-byte contact secret
//! (keys the fragment layer of that relation, see `crate::fragment`), and the
//! name the inviter suggests for themself.
//!
//! Text form: `murmur-invite:` followed by base58 of
//! `postcard(Invitation) ‖ SHA-256(postcard)[..4]`; the checksum catches
//! copy-and-paste damage. Anyone who holds an invitation can write to its
//! queue, so it must travel over a channel the two people trust, and they
//! should compare safety numbers afterwards (they cover both keys).
//!
//! Version 2 added the X-Wing key (about 1 870 characters of text instead
//! of 200). A version 1 invitation has no post-quantum key and is refused
//! with a reason saying so: the inviter makes a new one.

use std::fmt;

use murmur_wire::{NodeId, QueueId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::identity::{IdentityPublic, PqPublic};

/// Prefix of an invitation's text form.
pub const INVITATION_PREFIX: &str = "murmur-invite:";
const VERSION: u8 = 2;
/// The version before post-quantum keys.
const VERSION_1: u8 = 1;
const MAX_TEXT_LEN: usize = 2560;
/// The longest contact name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A parsed invitation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    version: u8,
    /// The inviter's identity key.
    pub identity: IdentityPublic,
    /// The inviter's post-quantum (X-Wing) identity key.
    pub pq_identity: PqPublic,
    /// The inviter's mailbox provider.
    pub provider: NodeId,
    /// The queue the inviter created for this contact.
    pub queue: QueueId,
    /// The secret of this contact relation.
    pub secret: [u8; 32],
    /// The name the inviter suggests for themself.
    pub name: String,
}

impl fmt::Debug for Invitation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invitation")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Invitation {
    /// A new invitation.
    pub fn new(
        identity: IdentityPublic,
        pq_identity: PqPublic,
        provider: NodeId,
        queue: QueueId,
        secret: [u8; 32],
        name: String,
    ) -> Result<Self> {
        check_name(&name)?;
        Ok(Self {
            version: VERSION,
            identity,
            pq_identity,
            provider,
            queue,
            secret,
            name,
        })
    }

    /// The text form to hand to the contact.
    pub fn to_text(&self) -> Result<String> {
        let mut bytes = postcard::to_stdvec(self).map_err(|source| {
            Error::Wire(murmur_wire::Error::Encode {
                what: "invitation",
                source,
            })
        })?;
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum[..4]);
        Ok(format!(
            "{INVITATION_PREFIX}{}",
            bs58::encode(bytes).into_string()
        ))
    }

    /// Parses the text form; whitespace around it (and inside it, where a
    /// mail client wrapped it) is ignored.
    pub fn parse(text: &str) -> Result<Self> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.len() > MAX_TEXT_LEN {
            return Err(Error::InvalidInvitation { reason: "too long" });
        }
        let Some(body) = compact.strip_prefix(INVITATION_PREFIX) else {
            return Err(Error::InvalidInvitation {
                reason: "it does not start with \"murmur-invite:\"",
            });
        };
        let bytes = bs58::decode(body)
            .into_vec()
            .map_err(|_| Error::InvalidInvitation {
                reason: "it has characters that are not base58 (was it copied whole?)",
            })?;
        if bytes.len() < 5 {
            return Err(Error::InvalidInvitation {
                reason: "it is truncated",
            });
        }
        let (payload, sum) = bytes.split_at(bytes.len() - 4);
        if Sha256::digest(payload)[..4] != *sum {
            return Err(Error::InvalidInvitation {
                reason: "its checksum does not match (was it copied whole?)",
            });
        }
        // Postcard writes the version byte first, as is.
        if payload.first() == Some(&VERSION_1) {
            return Err(Error::InvalidInvitation {
                reason: "it is from an older version of Murmur, without post-quantum keys: ask for a new invitation",
            });
        }
        let (inv, rest): (Invitation, _) =
            postcard::take_from_bytes(payload).map_err(|_| Error::InvalidInvitation {
                reason: "it does not decode",
            })?;
        if !rest.is_empty() {
            return Err(Error::InvalidInvitation {
                reason: "it has trailing bytes",
            });
        }
        if inv.version != VERSION {
            return Err(Error::InvalidInvitation {
                reason: "it is from an unsupported version of Murmur",
            });
        }
        check_name(&inv.name).map_err(|_| Error::InvalidInvitation {
            reason: "its name is not valid",
        })?;
        Ok(inv)
    }
}

/// Checks a contact name: 1 to 64 bytes, no control characters, not only
/// whitespace.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.trim().is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 64 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("it has control characters");
    }
    if name != name.trim() {
        return bad("it starts or ends with whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Invitation {
        Invitation::new(
            IdentityPublic([1; 32]),
            crate::identity::Identity::from_secrets([1; 32], [2; 32])
                .pq_public()
                .clone(),
            NodeId::from_bytes([2; 32]),
            QueueId::from_bytes([3; 32]),
            [4; 32],
            "alice".into(),
        )
        .unwrap()
    }

    #[test]
    fn round_trips_and_survives_wrapping() {
        let text = sample().to_text().unwrap();
        assert!(text.starts_with(INVITATION_PREFIX));
        assert_eq!(Invitation::parse(&text).unwrap(), sample());
        let wrapped = format!("  {}\n{}  ", &text[..40], &text[40..]);
        assert_eq!(Invitation::parse(&wrapped).unwrap(), sample());
    }

    #[test]
    fn damage_is_caught_with_a_reason() {
        let text = sample().to_text().unwrap();
        let reason = |t: &str| match Invitation::parse(t) {
            Err(Error::InvalidInvitation { reason }) => reason,
            other => panic!("expected an invalid invitation, got {other:?}"),
        };
        assert!(reason("hello").contains("murmur-invite"));
        assert!(reason(&text[..text.len() - 3]).contains("checksum"));
        assert!(reason(&format!("{text}0")).contains("base58"));
        let mut chars: Vec<char> = text.chars().collect();
        let i = chars.len() - 10;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        assert!(reason(&chars.into_iter().collect::<String>()).contains("checksum"));
        assert!(reason(&"x".repeat(3000)).contains("too long"));
        assert!(reason("murmur-invite:").contains("truncated"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("bob").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(" bob").is_err());
        assert!(check_name("bo\nb").is_err());
        assert!(check_name(&"b".repeat(65)).is_err());
    }

    #[test]
    fn version_1_invitations_are_refused_with_a_reason() {
        // An invitation as version 1 wrote it.
        #[derive(Serialize)]
        struct V1 {
            version: u8,
            identity: IdentityPublic,
            provider: NodeId,
            queue: QueueId,
            secret: [u8; 32],
            name: String,
        }
        let mut bytes = postcard::to_stdvec(&V1 {
            version: 1,
            identity: IdentityPublic([1; 32]),
            provider: NodeId::from_bytes([2; 32]),
            queue: QueueId::from_bytes([3; 32]),
            secret: [4; 32],
            name: "alice".into(),
        })
        .unwrap();
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum[..4]);
        let text = format!("{INVITATION_PREFIX}{}", bs58::encode(bytes).into_string());
        match Invitation::parse(&text) {
            Err(Error::InvalidInvitation { reason }) => {
                assert!(reason.contains("post-quantum"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,3000}") {
            let _ = Invitation::parse(&s);
            let _ = Invitation::parse(&format!("{INVITATION_PREFIX}{s}"));
        }
    }
}
