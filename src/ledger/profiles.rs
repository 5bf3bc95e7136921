//! The `profiles` tree: for every account, a few bytes saying where it is in its life, how the
//! daemon came to manage it, its mxid and a digest of the profile last applied (DN, display
//! name, e-mails). A complete plan reads this instead of every record: an agent whose digest
//! matches what the directory says now needs nothing, and its record is never decoded.
//!
//! Written in the same transaction as the account record it describes.

use sha2::{Digest, Sha256};

use super::{AccountRecord, AccountStatus, Ledger, LedgerError, Origin};
use crate::directory::StableId;

/// Where an account is in its life, as [`AccountStatus`] without the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Active,
    Departing,
    Deactivated,
}

/// What `profiles` holds about one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub stage: Stage,
    pub origin: Origin,
    pub mxid: String,
    /// [`profile_digest`] of the record.
    pub digest: [u8; 16],
}

/// Every account's [`Profile`], in stable-id order.
pub type Profiles = Vec<(StableId, Profile)>;

/// A digest of what a plan compares between an agent and the record of their account.
/// Exact (every field length-prefixed): equal digests mean equal fields.
pub fn profile_digest(dn: &str, display_name: &str, emails: &[String]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    for field in [dn, display_name]
        .into_iter()
        .chain(emails.iter().map(String::as_str))
    {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    let mut digest = [0; 16];
    digest.copy_from_slice(&hasher.finalize()[..16]);
    digest
}

impl Profile {
    pub fn of(record: &AccountRecord) -> Profile {
        Profile {
            stage: match record.status {
                AccountStatus::Active => Stage::Active,
                AccountStatus::Departing { .. } => Stage::Departing,
                AccountStatus::Deactivated { .. } => Stage::Deactivated,
            },
            origin: record.origin,
            mxid: record.mxid.clone(),
            digest: profile_digest(&record.dn, &record.display_name, &record.emails),
        }
    }

    /// `[stage][origin][digest: 16][mxid]`.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18 + self.mxid.len());
        out.push(match self.stage {
            Stage::Active => b'a',
            Stage::Departing => b'd',
            Stage::Deactivated => b'x',
        });
        out.push(match self.origin {
            Origin::Created => b'c',
            Origin::Adopted => b'a',
        });
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(self.mxid.as_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Option<Profile> {
        let (&[stage, origin], rest) = raw.split_first_chunk::<2>()?;
        let (digest, mxid) = rest.split_first_chunk::<16>()?;
        Some(Profile {
            stage: match stage {
                b'a' => Stage::Active,
                b'd' => Stage::Departing,
                b'x' => Stage::Deactivated,
                _ => return None,
            },
            origin: match origin {
                b'c' => Origin::Created,
                b'a' => Origin::Adopted,
                _ => return None,
            },
            digest: *digest,
            mxid: String::from_utf8(mxid.to_vec()).ok()?,
        })
    }
}

impl Ledger {
    /// Every account's profile (no record decoded), in stable-id order.
    pub fn profiles(&self) -> Result<Profiles, LedgerError> {
        let mut profiles = Profiles::with_capacity(self.account_count()?);
        for item in self.profiles.iter() {
            let (key, value) = item?;
            let id = StableId(String::from_utf8_lossy(&key).into_owned());
            let profile = Profile::decode(&value)
                .ok_or_else(|| LedgerError::Corrupt(format!("unreadable profile for {}", id.0)))?;
            profiles.push((id, profile));
        }
        Ok(profiles)
    }

    /// Rebuilds `profiles` from the account records (ledgers before schema 3 had none).
    pub(super) fn rebuild_profiles(&self) -> Result<(), LedgerError> {
        self.profiles.clear()?;
        for item in self.accounts.iter() {
            let (key, value) = item?;
            let record: AccountRecord = super::decode(&value)?;
            self.profiles.insert(key, Profile::of(&record).encode())?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn digest_tells_every_field_apart() {
        let emails = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let base = profile_digest("uid=a", "Agent A", &emails(&["a@x.org"]));
        assert_eq!(
            base,
            profile_digest("uid=a", "Agent A", &emails(&["a@x.org"]))
        );
        for other in [
            profile_digest("uid=b", "Agent A", &emails(&["a@x.org"])),
            profile_digest("uid=a", "Agent B", &emails(&["a@x.org"])),
            profile_digest("uid=a", "Agent A", &emails(&[])),
            profile_digest("uid=a", "Agent A", &emails(&["a@x.org", "b@x.org"])),
            // The same bytes, cut elsewhere.
            profile_digest("uid=aAgent", " A", &emails(&["a@x.org"])),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn encoding_round_trips_and_refuses_garbage() {
        let profile = Profile {
            stage: Stage::Departing,
            origin: Origin::Adopted,
            mxid: "@élodie:example.org".into(),
            digest: [7; 16],
        };
        assert_eq!(Profile::decode(&profile.encode()), Some(profile));
        assert_eq!(Profile::decode(b"ac"), None);
        assert_eq!(Profile::decode(&[b'q'; 30]), None);
    }
}
