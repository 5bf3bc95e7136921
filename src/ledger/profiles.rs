//! The `profiles` tree: for every account, a few bytes saying where it is in its life, how the
//! daemon came to manage it, its mxid and a digest of the profile last applied (DN, display
//! name, e-mails). A complete plan reads this instead of every record: an agent whose digest
//! matches what the directory says now needs nothing, and its record is never decoded.
//!
//! Written in the same transaction as the account record it describes.
//!
//! The profiles are kept in [`BUCKETS`] values, each holding the accounts whose id hashes to
//! it, not one value per account: sled's iterator walks down the tree again for every key
//! (~1.5 µs), which for 100,000 accounts was an eighth of a whole no-op run's CPU. Writing an
//! account rewrites its bucket (~5 KB at 300,000 accounts).

use std::collections::BTreeMap;

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

/// How many values `profiles` spreads the accounts over.
pub(super) const BUCKETS: u16 = 4096;

/// The key of the bucket holding the profile of the account with this id: a stable hash.
pub(super) fn bucket_key(id: &[u8]) -> [u8; 2] {
    let hash = Sha256::digest(id);
    let bucket = u16::from_be_bytes([hash[0], hash[1]]) % BUCKETS;
    bucket.to_be_bytes()
}

/// A bucket's value: `[id length: u16][id][profile length: u16][encoded profile]`, repeated.
/// `None`: it is damaged.
fn bucket_entries(raw: &[u8]) -> impl Iterator<Item = Option<(&[u8], &[u8])>> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut field = || {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let len = usize::from(u16::from_be_bytes(*len));
            let (value, tail) = (tail.get(..len)?, tail.get(len..)?);
            rest = tail;
            Some(value)
        };
        let entry = field().zip(field());
        if entry.is_none() {
            rest = &[];
        }
        Some(entry)
    })
}

/// `bucket` (if any) with the profile of `id` put in, or replaced. `None`: `bucket` is
/// damaged, or an id or profile is too long for its u16 length.
pub(super) fn bucket_with(bucket: Option<&[u8]>, id: &[u8], profile: &[u8]) -> Option<Vec<u8>> {
    let bucket = bucket.unwrap_or_default();
    let mut out = Vec::with_capacity(bucket.len() + id.len() + profile.len() + 4);
    for entry in bucket_entries(bucket) {
        let (other, other_profile) = entry?;
        if other != id {
            push_entry(&mut out, other, other_profile)?;
        }
    }
    push_entry(&mut out, id, profile)?;
    Some(out)
}

fn push_entry(out: &mut Vec<u8>, id: &[u8], profile: &[u8]) -> Option<()> {
    for field in [id, profile] {
        out.extend_from_slice(&u16::try_from(field.len()).ok()?.to_be_bytes());
        out.extend_from_slice(field);
    }
    Some(())
}

impl Ledger {
    /// Every account's profile (no record decoded), in stable-id order.
    pub fn profiles(&self) -> Result<Profiles, LedgerError> {
        let damaged = || LedgerError::Corrupt("unreadable profiles bucket".into());
        let mut profiles = Profiles::with_capacity(self.account_count()?);
        for item in self.profiles.iter() {
            let (_, bucket) = item?;
            for entry in bucket_entries(&bucket) {
                let (id, raw) = entry.ok_or_else(damaged)?;
                let id = StableId(String::from_utf8_lossy(id).into_owned());
                let profile = Profile::decode(raw).ok_or_else(|| {
                    LedgerError::Corrupt(format!("unreadable profile for {}", id.0))
                })?;
                profiles.push((id, profile));
            }
        }
        // Ids are unique (one bucket each, once in it): no order to keep among equals.
        profiles.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(profiles)
    }

    /// Rebuilds `profiles` from the account records (ledgers before schema 3 had none, and
    /// before schema 4 one value per account).
    pub(super) fn rebuild_profiles(&self) -> Result<(), LedgerError> {
        let mut buckets: BTreeMap<[u8; 2], Vec<u8>> = BTreeMap::new();
        for item in self.accounts.iter() {
            let (key, value) = item?;
            let record: AccountRecord = super::decode(&value)?;
            let bucket = buckets.entry(bucket_key(&key)).or_default();
            push_entry(bucket, &key, &Profile::of(&record).encode()).ok_or_else(|| {
                LedgerError::Corrupt(format!("the id or mxid of {} is too long", record.id))
            })?;
        }
        self.profiles.clear()?;
        for (key, bucket) in buckets {
            self.profiles.insert(key, bucket)?;
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
    fn a_bucket_holds_each_id_once_with_its_latest_profile() {
        let bucket = bucket_with(None, b"a", b"one").unwrap();
        let bucket = bucket_with(Some(&bucket), b"b", b"two").unwrap();
        let bucket = bucket_with(Some(&bucket), b"a", b"three").unwrap();
        let entries: Vec<_> = bucket_entries(&bucket).map(Option::unwrap).collect();
        assert_eq!(
            entries,
            [(&b"b"[..], &b"two"[..]), (&b"a"[..], &b"three"[..])]
        );
        // Cut short: the damage is reported, not read past.
        let cut = &bucket[..bucket.len() - 2];
        assert_eq!(bucket_entries(cut).last(), Some(None));
        assert_eq!(bucket_with(Some(cut), b"c", b"four"), None);
        assert_eq!(bucket_with(None, &[b'x'; 70_000], b"p"), None);
    }

    #[test]
    fn bucket_keys_are_stable_and_spread() {
        // Stored on disk: the hash must never change between versions.
        assert_eq!(bucket_key(b"a"), [0x0a, 0x97]);
        let used: std::collections::HashSet<_> = (0..20_000)
            .map(|i| bucket_key(format!("id-{i}").as_bytes()))
            .collect();
        assert!(used.len() > 4000, "{} buckets used", used.len());
        assert!(used.iter().all(|k| u16::from_be_bytes(*k) < BUCKETS));
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
