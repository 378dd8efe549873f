//! The pinned directory authority: one type for every place a Murmur
//! component names an authority it trusts.

use std::net::SocketAddr;

use murmur_wire::IdentityKey;
use serde::{Deserialize, Serialize};

/// A pinned directory authority: where to reach it and the key it signs
/// with. The one pin type of every daemon's configuration (a node's
/// `[[directory.authorities]]`, an authority's `[[peers]]`), of the
/// `--authority ADDR=KEY` flags, and of the directory client.
///
/// In TOML it is a table `{ addr = "ADDR", key = "BASE58" }`; as text (the
/// command-line flags) `ADDR=BASE58`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityPin {
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// Its Ed25519 public key (base58 in text, as `murmur-directory init`
    /// prints it).
    #[serde(with = "base58_key")]
    pub key: IdentityKey,
}

impl std::str::FromStr for AuthorityPin {
    type Err = String;

    /// Parses `ADDR=BASE58KEY`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, key) = s
            .split_once('=')
            .ok_or_else(|| format!("{s}: expected ADDR=KEY"))?;
        let addr = addr.parse().map_err(|e| format!("{s}: bad address: {e}"))?;
        let key = IdentityKey::from_base58(key).map_err(|e| format!("{s}: bad key: {e}"))?;
        Ok(Self { addr, key })
    }
}

impl std::fmt::Display for AuthorityPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.addr, self.key)
    }
}

/// An identity key as its base58 text, for serde.
mod base58_key {
    use murmur_wire::IdentityKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(key: &IdentityKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&key.to_base58())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IdentityKey, D::Error> {
        let text = String::deserialize(d)?;
        IdentityKey::from_base58(&text)
            .map_err(|e| serde::de::Error::custom(format!("key {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> IdentityKey {
        let k = murmur_wire::ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        IdentityKey::from(&k.verifying_key())
    }

    #[test]
    fn text_and_toml_forms_round_trip() {
        let pin = AuthorityPin {
            addr: "127.0.0.1:7100".parse().unwrap(),
            key: key(),
        };
        let text = pin.to_string();
        assert_eq!(text, format!("127.0.0.1:7100={}", key().to_base58()));
        assert_eq!(text.parse::<AuthorityPin>().unwrap(), pin);
        let toml_text = format!("addr = \"127.0.0.1:7100\"\nkey = \"{}\"\n", key());
        let parsed: AuthorityPin = toml::from_str(&toml_text).unwrap();
        assert_eq!(parsed, pin);
        assert_eq!(toml::to_string(&pin).unwrap(), toml_text);
    }

    #[test]
    fn bad_pins_are_refused_with_the_reason() {
        for (bad, reason) in [
            ("127.0.0.1:7100", "expected ADDR=KEY"),
            ("nowhere=abc", "bad address"),
            ("127.0.0.1:7100=0OIl", "bad key"),
        ] {
            let err = bad.parse::<AuthorityPin>().unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
        }
        let err =
            toml::from_str::<AuthorityPin>("addr = \"127.0.0.1:1\"\nkey = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(
            toml::from_str::<AuthorityPin>(&format!(
                "addr = \"127.0.0.1:1\"\nkey = \"{}\"\nextra = 1\n",
                key()
            ))
            .is_err()
        );
    }
}
