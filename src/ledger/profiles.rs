//! The `profiles` tree: for every account, a few bytes saying where it is in its life, how the
//! daemon came to manage it, its mxid and a digest of the profile last applied (DN, display
//! name, e-mails). A complete plan reads this instead of every record: an agent whose digest
//! matches what the directory says now needs nothing, and its record is never decoded.
//!
//! Written in the same transaction as the account record it describes.

use sha2::{Digest, Sha256};

use super::{AccountRecord, AccountStatus, Ledger, LedgerError, Origin};
use crate::directory::StableId;
use crate::homeserver::ExternalId;
use crate::mapping::DesiredAccount;

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

/// The parts of an account's profile the daemon keeps in step with the directory: what a plan
/// compares between an agent and the record of their account (`plan::update_for`), and what
/// the digest of [`Profile`] covers. Both take it apart field by field, so a field added here
/// cannot be forgotten by either (an account in step would otherwise never be updated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileFields<'a> {
    /// Not written to the homeserver: a DN change is recorded in the ledger only.
    pub dn: &'a str,
    pub display_name: &'a str,
    pub emails: &'a [String],
    pub external_ids: &'a [ExternalId],
}

impl<'a> ProfileFields<'a> {
    /// What the record says was applied.
    pub fn of(record: &'a AccountRecord) -> Self {
        ProfileFields {
            dn: &record.dn,
            display_name: &record.display_name,
            emails: &record.emails,
            external_ids: &record.external_ids,
        }
    }

    /// What the directory wants.
    pub fn wanted(account: &'a DesiredAccount) -> Self {
        ProfileFields {
            dn: &account.dn,
            display_name: &account.display_name,
            emails: &account.emails,
            external_ids: &account.external_ids,
        }
    }

    /// Exact (every field length-prefixed): equal digests mean equal fields. External ids
    /// come after a marker no field length can be, and only when there are some: the digest
    /// of a profile without them is the one ledgers stored before they existed.
    pub fn digest(&self) -> [u8; 16] {
        let ProfileFields {
            dn,
            display_name,
            emails,
            external_ids,
        } = *self;
        let mut hasher = Sha256::new();
        let field = |hasher: &mut Sha256, text: &str| {
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
        };
        field(&mut hasher, dn);
        field(&mut hasher, display_name);
        for email in emails {
            field(&mut hasher, email);
        }
        if !external_ids.is_empty() {
            hasher.update(u64::MAX.to_be_bytes());
            for id in external_ids {
                field(&mut hasher, &id.auth_provider);
                field(&mut hasher, &id.external_id);
            }
        }
        let mut digest = [0; 16];
        digest.copy_from_slice(&hasher.finalize()[..16]);
        digest
    }
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
            digest: ProfileFields::of(record).digest(),
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

    fn digest(dn: &str, name: &str, emails: &[&str], ids: &[(&str, &str)]) -> [u8; 16] {
        let emails: Vec<String> = emails.iter().map(|s| s.to_string()).collect();
        let ids: Vec<ExternalId> = ids
            .iter()
            .map(|(p, i)| ExternalId {
                auth_provider: p.to_string(),
                external_id: i.to_string(),
            })
            .collect();
        ProfileFields {
            dn,
            display_name: name,
            emails: &emails,
            external_ids: &ids,
        }
        .digest()
    }

    #[test]
    fn digest_tells_every_field_apart() {
        let base = digest("uid=a", "Agent A", &["a@x.org"], &[]);
        assert_eq!(base, digest("uid=a", "Agent A", &["a@x.org"], &[]));
        let others = [
            digest("uid=b", "Agent A", &["a@x.org"], &[]),
            digest("uid=a", "Agent B", &["a@x.org"], &[]),
            digest("uid=a", "Agent A", &[], &[]),
            digest("uid=a", "Agent A", &["a@x.org", "b@x.org"], &[]),
            // The same bytes, cut elsewhere.
            digest("uid=aAgent", " A", &["a@x.org"], &[]),
            digest("uid=a", "Agent A", &["a@x.org"], &[("oidc-x", "1")]),
            digest("uid=a", "Agent A", &["a@x.org"], &[("oidc-x", "2")]),
            digest("uid=a", "Agent A", &["a@x.org"], &[("oidc-y", "1")]),
            digest("uid=a", "Agent A", &["a@x.org"], &[("oidc-x1", "")]),
            // An external id is not an e-mail address, whatever its text.
            digest("uid=a", "Agent A", &["a@x.org", "oidc-x", "1"], &[]),
            digest("uid=a", "Agent A", &[], &[("a@x.org", "")]),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(base, *other, "{i}");
            for (j, another) in others.iter().enumerate().skip(i + 1) {
                assert_ne!(other, another, "{i} and {j}");
            }
        }
    }

    #[test]
    fn a_profile_without_external_ids_keeps_the_digest_older_ledgers_stored() {
        // The digest as schema 3 computed it, before external ids existed.
        let mut hasher = Sha256::new();
        for field in ["uid=a", "Agent A", "a@x.org"] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        let old: [u8; 16] = hasher.finalize()[..16].try_into().unwrap();
        assert_eq!(digest("uid=a", "Agent A", &["a@x.org"], &[]), old);
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
