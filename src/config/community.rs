//! BGP community values as MetalLB spells them: standard communities `AA:NN` (RFC 1997) and large communities
//! `large:AA:BB:CC` (RFC 8092).
//!
//! This module only parses and prints values. Aliases (names defined by `Community` objects) are resolved by
//! validation, which decides whether a string that is not a value names an alias.

use std::fmt;
use std::str::FromStr;

/// A community attached to advertised routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommunityValue {
    /// RFC 1997: two 16-bit halves, conventionally the ASN and a local value.
    Standard { asn: u16, value: u16 },
    /// RFC 8092: a 32-bit global administrator and two 32-bit local data parts.
    Large {
        global: u32,
        local1: u32,
        local2: u32,
    },
}

/// Why a string is not a community value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The shape is wrong: this may still be the name of an alias.
    #[error("{0:?} is not of the form AA:NN or large:AA:BB:CC")]
    Format(String),
    /// The shape is right but a part is out of range: never an alias.
    #[error("{text:?}: {part:?} must be a number from 0 to {max}")]
    Value {
        text: String,
        part: String,
        max: u32,
    },
}

impl Error {
    /// Whether the string has the shape of a value, so it cannot be meant as an alias name.
    pub fn looks_like_value(&self) -> bool {
        matches!(self, Error::Value { .. })
    }
}

impl FromStr for CommunityValue {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let part = |s: &str, max: u32| -> Result<u32, Error> {
            s.parse::<u64>()
                .ok()
                .filter(|n| *n <= u64::from(max))
                .map(|n| n as u32)
                .ok_or_else(|| Error::Value {
                    text: text.to_string(),
                    part: s.to_string(),
                    max,
                })
        };
        if let Some(rest) = text.strip_prefix("large:") {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
                return Err(Error::Format(text.to_string()));
            }
            return Ok(CommunityValue::Large {
                global: part(parts[0], u32::MAX)?,
                local1: part(parts[1], u32::MAX)?,
                local2: part(parts[2], u32::MAX)?,
            });
        }
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 2 || !parts.iter().all(|p| numeric(p)) {
            return Err(Error::Format(text.to_string()));
        }
        Ok(CommunityValue::Standard {
            asn: part(parts[0], u16::MAX.into())? as u16,
            value: part(parts[1], u16::MAX.into())? as u16,
        })
    }
}

impl fmt::Display for CommunityValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommunityValue::Standard { asn, value } => write!(f, "{asn}:{value}"),
            CommunityValue::Large {
                global,
                local1,
                local2,
            } => write!(f, "large:{global}:{local1}:{local2}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_standard_and_large() {
        assert_eq!(
            "65535:65281".parse(),
            Ok(CommunityValue::Standard {
                asn: 65535,
                value: 65281
            })
        );
        assert_eq!(
            "large:4294967295:0:7".parse(),
            Ok(CommunityValue::Large {
                global: u32::MAX,
                local1: 0,
                local2: 7
            })
        );
    }

    #[test]
    fn out_of_range_parts_are_value_errors_and_other_shapes_format_errors() {
        let e = "65536:1".parse::<CommunityValue>().unwrap_err();
        assert!(e.looks_like_value(), "{e}");
        let e = "large:1:2:4294967296"
            .parse::<CommunityValue>()
            .unwrap_err();
        assert!(e.looks_like_value(), "{e}");
        for alias in [
            "no-export",
            "NO_ADVERTISE",
            "1:2:3",
            ":1",
            "large:1:2",
            "a:b",
        ] {
            let e = alias.parse::<CommunityValue>().unwrap_err();
            assert!(!e.looks_like_value(), "{alias}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["0:0", "64512:1", "large:1:2:3"] {
            assert_eq!(s.parse::<CommunityValue>().unwrap().to_string(), s);
        }
    }
}
