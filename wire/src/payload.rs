//! Final-hop payloads: what a forward packet carries to its final hop, and
//! what an acknowledgement carries back.
//!
//! Layouts (all integers big-endian; every kind has one exact length):
//!
//! ```text
//! Deposit      | ver=1 | kind=1 | message id (16) | ack SURB (396) | body (2048) |   2462 bytes
//! DropCover    | ver=1 | kind=2 |                                                       2 bytes
//! LoopCover    | ver=1 | kind=3 | loop id (16) |                                      18 bytes
//! Ack (reply)  | ver=1 | kind=16 | message id (16) |                                  18 bytes
//! ```
//!
//! Parsing checks the version first (an unknown version is refused as such),
//! then the kind, then the exact length, and yields a typed value: a parsed
//! payload cannot be malformed.

use std::fmt;

use crate::error::{Error, Result};
use crate::ids::MessageId;
use crate::packet::{PAYLOAD_CAPACITY, SURB_SIZE, Surb};

/// Version of the final-hop payload format.
pub const PAYLOAD_VERSION: u8 = 1;

/// Bytes of a deposit's opaque body: one fragment of a sealed message,
/// padded by the client. 2 KiB, the reference payload size in this field.
pub const DEPOSIT_BODY_SIZE: usize = 2048;

const KIND_DEPOSIT: u8 = 1;
const KIND_DROP: u8 = 2;
const KIND_LOOP: u8 = 3;
const KIND_ACK: u8 = 16;

/// Encoded length of a deposit.
pub const DEPOSIT_ENCODED_SIZE: usize = 2 + MessageId::LEN + SURB_SIZE + DEPOSIT_BODY_SIZE;

const _: () = assert!(DEPOSIT_ENCODED_SIZE <= PAYLOAD_CAPACITY);

/// A deposit: one packet-sized piece of a message for a mailbox queue.
#[derive(Clone, PartialEq, Eq)]
pub struct Deposit {
    /// Chosen by the sender; the mailbox stores a deposit once per id, and
    /// the acknowledgement names it.
    pub id: MessageId,
    /// The SURB the mailbox uses to acknowledge, once the deposit is durable.
    pub ack: Surb,
    /// Opaque to the mailbox: a fragment of a sealed message.
    pub body: Box<[u8; DEPOSIT_BODY_SIZE]>,
}

impl fmt::Debug for Deposit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deposit").finish_non_exhaustive()
    }
}

/// What a forward packet carries to its final hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalPayload {
    /// Store this in the destination queue and acknowledge it.
    Deposit(Deposit),
    /// Cover traffic: discard (and count).
    DropCover,
    /// A loop packet that returns to its sender: a client's (stored in the
    /// client's loop queue) or a mix node's (the node itself is the final hop).
    LoopCover {
        /// Identifies the loop to its sender.
        id: MessageId,
    },
}

impl FinalPayload {
    /// The encoded bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Deposit(d) => {
                let mut out = Vec::with_capacity(DEPOSIT_ENCODED_SIZE);
                out.extend_from_slice(&[PAYLOAD_VERSION, KIND_DEPOSIT]);
                out.extend_from_slice(d.id.as_bytes());
                out.extend_from_slice(d.ack.as_bytes());
                out.extend_from_slice(&d.body[..]);
                out
            }
            Self::DropCover => vec![PAYLOAD_VERSION, KIND_DROP],
            Self::LoopCover { id } => {
                let mut out = vec![PAYLOAD_VERSION, KIND_LOOP];
                out.extend_from_slice(id.as_bytes());
                out
            }
        }
    }

    /// Parses a final-hop payload.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let (kind, rest) = split_header(bytes, "final-hop payload")?;
        match kind {
            KIND_DEPOSIT => {
                expect_len(rest, DEPOSIT_ENCODED_SIZE - 2, "deposit")?;
                let (id, rest) = rest.split_at(MessageId::LEN);
                let (surb, body) = rest.split_at(SURB_SIZE);
                let body: [u8; DEPOSIT_BODY_SIZE] =
                    body.try_into().map_err(|_| Error::Malformed {
                        what: "deposit",
                        reason: "body length",
                    })?;
                Ok(Self::Deposit(Deposit {
                    id: MessageId::from_slice(id)?,
                    ack: Surb::from_bytes(surb)?,
                    body: Box::new(body),
                }))
            }
            KIND_DROP => {
                expect_len(rest, 0, "drop cover")?;
                Ok(Self::DropCover)
            }
            KIND_LOOP => {
                expect_len(rest, MessageId::LEN, "loop cover")?;
                Ok(Self::LoopCover {
                    id: MessageId::from_slice(rest)?,
                })
            }
            _ => Err(Error::Malformed {
                what: "final-hop payload",
                reason: "unknown kind",
            }),
        }
    }
}

/// The plaintext of an acknowledgement, sent back through the deposit's SURB
/// once the deposit is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The acknowledged deposit.
    pub id: MessageId,
}

impl Ack {
    /// Encoded length.
    pub const ENCODED_SIZE: usize = 2 + MessageId::LEN;

    /// The encoded bytes.
    pub fn encode(&self) -> [u8; Self::ENCODED_SIZE] {
        let mut out = [0u8; Self::ENCODED_SIZE];
        out[0] = PAYLOAD_VERSION;
        out[1] = KIND_ACK;
        out[2..].copy_from_slice(self.id.as_bytes());
        out
    }

    /// Parses an acknowledgement.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let (kind, rest) = split_header(bytes, "acknowledgement")?;
        if kind != KIND_ACK {
            return Err(Error::Malformed {
                what: "acknowledgement",
                reason: "unknown kind",
            });
        }
        expect_len(rest, MessageId::LEN, "acknowledgement")?;
        Ok(Self {
            id: MessageId::from_slice(rest)?,
        })
    }
}

fn split_header<'a>(bytes: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8])> {
    match bytes {
        [] => Err(Error::Malformed {
            what,
            reason: "empty",
        }),
        [version, ..] if *version != PAYLOAD_VERSION => Err(Error::UnsupportedVersion {
            what,
            version: *version,
        }),
        [_] => Err(Error::Malformed {
            what,
            reason: "no kind byte",
        }),
        [_, kind, rest @ ..] => Ok((*kind, rest)),
    }
}

fn expect_len(rest: &[u8], len: usize, what: &'static str) -> Result<()> {
    if rest.len() != len {
        return Err(Error::WrongLength {
            what,
            expected: len + 2,
            actual: rest.len() + 2,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_kinds_round_trip() {
        for p in [
            FinalPayload::DropCover,
            FinalPayload::LoopCover {
                id: MessageId::from_bytes([4; 16]),
            },
        ] {
            assert_eq!(FinalPayload::parse(&p.encode()).unwrap(), p);
        }
        let ack = Ack {
            id: MessageId::from_bytes([8; 16]),
        };
        assert_eq!(Ack::parse(&ack.encode()).unwrap(), ack);
    }

    #[test]
    fn unknown_version_is_named() {
        let err = FinalPayload::parse(&[9, 2]).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedVersion { version: 9, .. }),
            "{err}"
        );
        let err = Ack::parse(&[2, 16]).unwrap_err();
        assert!(matches!(err, Error::UnsupportedVersion { version: 2, .. }));
    }

    #[test]
    fn wrong_lengths_and_kinds_are_refused() {
        assert!(FinalPayload::parse(&[]).is_err());
        assert!(FinalPayload::parse(&[1]).is_err());
        assert!(FinalPayload::parse(&[1, 2, 0]).is_err());
        assert!(FinalPayload::parse(&[1, 3, 0]).is_err());
        assert!(FinalPayload::parse(&[1, 99]).is_err());
        assert!(FinalPayload::parse(&vec![0u8; DEPOSIT_ENCODED_SIZE]).is_err());
        let mut fake_deposit = vec![1u8, 1];
        fake_deposit.resize(DEPOSIT_ENCODED_SIZE, 0);
        // Any 396 bytes are a structurally valid SURB (its header is opaque
        // to the mailbox), so this parses, and re-encodes to the same bytes.
        let parsed = FinalPayload::parse(&fake_deposit).unwrap();
        assert_eq!(parsed.encode(), fake_deposit);
        assert!(Ack::parse(&[1, 1]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = FinalPayload::parse(&data);
            let _ = Ack::parse(&data);
        }

        #[test]
        fn arbitrary_bytes_behind_a_valid_prefix_never_panic(kind in 0u8..20, data in proptest::collection::vec(any::<u8>(), 0..2600)) {
            let mut bytes = vec![PAYLOAD_VERSION, kind];
            bytes.extend_from_slice(&data);
            let _ = FinalPayload::parse(&bytes);
            let _ = Ack::parse(&bytes);
        }
    }
}
