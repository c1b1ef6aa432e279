//! Staff accounts, log-in sessions and the audit list: kept in the node's own store, each
//! change in one batch with its audit entry.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::NaiveDate;
use ldx_proto::v1 as pb;
use rand::Rng;

use super::sync::{AuditNote, Txn};
use super::{Registry, RegistryError, page_size};
use crate::crypto::PersonKey;
use crate::domain::{Division, InvalidField};
use crate::staff::token::{TokenError, TokenKey};
use crate::staff::{Actor, StaffRole, check_name};
use crate::storage::StorageError;
use crate::storage::records::{SessionRecord, StaffRecord};

/// How long a session lasts: one working day.
pub const SESSION_HOURS: i64 = 10;
/// Failed log-ins in a row after which an account is locked for [`LOCK_MINUTES`].
pub const LOGIN_FAILURES_MAX: u32 = 5;
pub const LOCK_MINUTES: i64 = 15;
/// Length rules of a password.
pub const PASSWORD_MIN: usize = 10;
pub const PASSWORD_MAX: usize = 256;
/// Default and largest page of the audit list; entries looked at per call at most.
pub const AUDIT_PAGE_DEFAULT: u32 = 500;
pub const AUDIT_PAGE_MAX: u32 = 5000;
pub const AUDIT_SCAN_MAX: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum StaffError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("name: there is no staff account {0:?} at this node")]
    NoAccount(String),
    #[error("name: a staff account {0:?} already exists at this node")]
    Exists(String),
    #[error("wrong name or password")]
    BadLogin,
    #[error("account {name:?} is locked after {failures} failed log-ins until {until} UTC; an admin can reset it")]
    Locked { name: String, failures: u32, until: String },
    #[error("account {0:?} is disabled")]
    Disabled(String),
    #[error("no session token: log in first (ldx-node login NAME), then send it as `authorization: Bearer <token>`")]
    NoToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the session has ended (logged out, or the account was disabled or its password reset): log in again")]
    SessionEnded,
    #[error("the session expired at {0} UTC: log in again")]
    Expired(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<RegistryError> for StaffError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(e) => Self::Invalid(e),
            RegistryError::Storage(e) => Self::Storage(e),
            other => Self::Storage(StorageError::Corrupt { what: "staff record", detail: other.to_string() }),
        }
    }
}

/// A new account, as `staff add` asks for it.
#[derive(Debug, Clone, Default)]
pub struct NewStaff {
    pub name: String,
    pub roles: Vec<String>,
    pub township: String,
    pub deputy_of: String,
    /// Empty: the node makes one.
    pub password: String,
}

/// A change to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaffChange {
    Disable,
    Enable,
    Absent,
    Present,
    Reset,
}

/// A session's caller as stored: the account and the session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: Vec<u8>,
    pub account: StaffRecord,
    /// The account she deputises for, when it is marked absent.
    pub principal: Option<StaffRecord>,
}

/// Filters of the audit list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub person: Option<PersonKey>,
    pub staff: String,
    pub since_ms: Option<i64>,
    pub after: u64,
    pub page_size: u32,
}

fn hasher() -> Argon2<'static> {
    // OWASP's first Argon2id setting: 19 MiB, 2 passes, 1 lane.
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(19 * 1024, 2, 1, None).expect("valid parameters"))
}

fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes encode");
    hasher().hash_password(password.as_bytes(), &salt).expect("argon2id hashes any password").to_string()
}

/// Whether `password` matches `hash` (constant-time inside argon2).
fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| hasher().verify_password(password.as_bytes(), &h).is_ok())
}

/// A password the node makes: 20 characters of an alphabet without look-alikes.
pub fn new_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

fn check_password(password: &str) -> Result<(), InvalidField> {
    let n = password.chars().count();
    match (PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        true => Ok(()),
        false => Err(InvalidField::new(
            "password",
            format!("({n} characters)"),
            format!("must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"),
        )),
    }
}

fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default()
}

pub fn account_view(r: &StaffRecord) -> pb::StaffAccount {
    pb::StaffAccount {
        name: r.name.clone(),
        roles: r.roles.clone(),
        township: r.township.clone(),
        deputy_of: r.deputy_of.clone(),
        disabled: r.disabled,
        absent: r.absent,
        locked_until_ms: r.locked_until_ms,
        created_at_ms: r.created_at_ms,
    }
}

impl Registry {
    fn token_key(&self) -> TokenKey {
        TokenKey::new(self.data_key.session_token_key(), self.division.as_str())
    }

    fn check_new_staff(&self, new: &NewStaff) -> Result<Vec<String>, StaffError> {
        check_name(&new.name).map_err(|rule| InvalidField::new("name", &new.name, rule))?;
        if new.roles.is_empty() {
            return Err(InvalidField::new("roles", "", "must name at least one role").into());
        }
        let mut roles = Vec::new();
        for raw in &new.roles {
            let role = StaffRole::parse(raw).ok_or_else(|| {
                let known: Vec<_> = StaffRole::ALL.iter().map(|r| r.name()).collect();
                InvalidField::new("role", raw, format!("is not a role; roles are {}", known.join(", ")))
            })?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        let clerk = roles.contains(&StaffRole::TownshipClerk);
        match (clerk, new.township.is_empty()) {
            (true, true) => {
                return Err(InvalidField::new("township", "", "is required for the township-clerk role").into());
            }
            (false, false) => {
                return Err(InvalidField::new("township", &new.township, "is only for the township-clerk role").into());
            }
            (true, false) => {
                let township = Division::parse("township", &new.township)?;
                if township.as_str().len() != 9 || !self.division.contains(&township) || township == self.division {
                    return Err(InvalidField::new(
                        "township",
                        &new.township,
                        format!("must be a 9-digit township within this node's division {}", self.division),
                    )
                    .into());
                }
            }
            (false, true) => {}
        }
        if !new.deputy_of.is_empty() {
            if new.deputy_of == new.name {
                return Err(InvalidField::new("deputy_of", &new.deputy_of, "must name another account").into());
            }
            if self.store.staff(&new.deputy_of)?.is_none() {
                return Err(
                    InvalidField::new("deputy_of", &new.deputy_of, "is not a staff account of this node").into()
                );
            }
        }
        if !new.password.is_empty() {
            check_password(&new.password)?;
        }
        roles.sort();
        Ok(roles.iter().map(|r| r.name().to_owned()).collect())
    }

    /// Adds a staff account; returns it and the password the node made (if it made one).
    pub fn staff_add(&self, new: &NewStaff) -> Result<(StaffRecord, String), StaffError> {
        let roles = self.check_new_staff(new)?;
        let made = new.password.is_empty().then(new_password).unwrap_or_default();
        let password = if made.is_empty() { new.password.as_str() } else { made.as_str() };
        let password_hash = hash_password(password);
        let writer = self.lock();
        if self.store.staff(&new.name)?.is_some() {
            return Err(StaffError::Exists(new.name.clone()));
        }
        let record = StaffRecord {
            name: new.name.clone(),
            roles,
            township: new.township.clone(),
            deputy_of: new.deputy_of.clone(),
            password_hash,
            created_at_ms: self.clock.now().timestamp_millis(),
            ..Default::default()
        };
        let mut txn = Txn::new(self.store.batch());
        txn.batch.put_staff(&record);
        txn.audit_note(AuditNote {
            detail: format!("account {} with roles {}", record.name, record.roles.join(", ")),
            ..AuditNote::new("staff_add", None)
        });
        self.commit_txn(writer, txn)?;
        Ok((record, made))
    }

    pub fn staff_list(&self) -> Result<Vec<StaffRecord>, StaffError> {
        Ok(self.store.staff_all()?)
    }

    /// Disables, enables, marks absent or present, or resets the password of `name`.
    pub fn staff_update(
        &self,
        name: &str,
        change: StaffChange,
        password: &str,
    ) -> Result<(StaffRecord, String), StaffError> {
        let mut made = String::new();
        let new_hash = match change {
            StaffChange::Reset => {
                if password.is_empty() {
                    made = new_password();
                } else {
                    check_password(password)?;
                }
                Some(hash_password(if made.is_empty() { password } else { &made }))
            }
            _ => None,
        };
        let writer = self.lock();
        let mut record = self.store.staff(name)?.ok_or_else(|| StaffError::NoAccount(name.to_owned()))?;
        let action = match change {
            StaffChange::Disable => {
                record.disabled = true;
                record.generation += 1;
                "staff_disable"
            }
            StaffChange::Enable => {
                record.disabled = false;
                "staff_enable"
            }
            StaffChange::Absent => {
                record.absent = true;
                "staff_absent"
            }
            StaffChange::Present => {
                record.absent = false;
                "staff_present"
            }
            StaffChange::Reset => {
                record.password_hash = new_hash.expect("made above");
                record.generation += 1;
                record.failed_logins = 0;
                record.locked_until_ms = 0;
                "staff_reset"
            }
        };
        let mut txn = Txn::new(self.store.batch());
        txn.batch.put_staff(&record);
        txn.audit_note(AuditNote { detail: format!("account {name}"), ..AuditNote::new(action, None) });
        self.commit_txn(writer, txn)?;
        Ok((record, made))
    }

    /// Checks a name and password; on success starts a session and returns its token.
    /// Every attempt is audited; [`LOGIN_FAILURES_MAX`] failures in a row lock the account
    /// for [`LOCK_MINUTES`], during which even the right password is refused.
    pub fn login(&self, name: &str, password: &str, from: &str) -> Result<(String, i64, StaffRecord), StaffError> {
        let now = self.clock.now().timestamp_millis();
        let found = self.store.staff(name)?;
        // The hash is checked without the writer lock (it takes tens of milliseconds); an
        // account with no such name is checked against a dummy hash to take as long.
        let matches = match &found {
            Some(r) => password_matches(&r.password_hash, password),
            None => {
                let _ = password_matches(dummy_hash(), password);
                false
            }
        };
        let actor = Actor { staff: name.to_owned(), call: crate::staff::LOGIN_CALL.to_owned(), ..Default::default() };
        let writer = self.lock();
        let mut txn = Txn::new(self.store.batch());
        let fail = |txn: &mut Txn<'_>, why: String| {
            txn.audit_note(AuditNote {
                detail: format!("{why} (from {from})"),
                actor: Some(actor.clone()),
                ..AuditNote::new("login_failed", None)
            });
        };
        let Some(mut record) = self.store.staff(name)? else {
            fail(&mut txn, "no such account".into());
            self.commit_txn(writer, txn)?;
            return Err(StaffError::BadLogin);
        };
        let stale = found.as_ref().is_none_or(|f| f.password_hash != record.password_hash);
        let outcome = if record.disabled {
            fail(&mut txn, "account disabled".into());
            Err(StaffError::Disabled(name.to_owned()))
        } else if record.locked_until_ms > now {
            fail(&mut txn, "account locked".into());
            Err(StaffError::Locked {
                name: name.to_owned(),
                failures: record.failed_logins,
                until: utc(record.locked_until_ms),
            })
        } else if !matches || stale {
            record.failed_logins += 1;
            let mut why = format!("wrong password ({} in a row)", record.failed_logins);
            if record.failed_logins >= LOGIN_FAILURES_MAX {
                record.locked_until_ms = now + LOCK_MINUTES * 60_000;
                why.push_str(&format!("; locked until {} UTC", utc(record.locked_until_ms)));
            }
            txn.batch.put_staff(&record);
            fail(&mut txn, why);
            Err(StaffError::BadLogin)
        } else {
            record.failed_logins = 0;
            record.locked_until_ms = 0;
            txn.batch.put_staff(&record);
            Ok(())
        };
        if let Err(e) = outcome {
            self.commit_txn(writer, txn)?;
            return Err(e);
        }
        let (id, token) = self.token_key().issue();
        let expires_at_ms = now + SESSION_HOURS * 3_600_000;
        let session =
            SessionRecord { name: name.to_owned(), generation: record.generation, issued_at_ms: now, expires_at_ms };
        txn.batch.put_session(&id, &session);
        txn.audit_note(AuditNote {
            detail: format!("from {from}"),
            actor: Some(Actor { role: record.roles.join(","), ..actor }),
            ..AuditNote::new("login", None)
        });
        self.commit_txn(writer, txn)?;
        Ok((token, expires_at_ms, record))
    }

    /// The session a token names, if it still holds: issued by this node, unaltered, not
    /// expired, not logged out, of an enabled account whose password was not reset since.
    /// Reads only.
    pub fn session(&self, token: &str) -> Result<Session, StaffError> {
        let id = self.token_key().check(token)?;
        let session = self.store.session(&id)?.ok_or(StaffError::SessionEnded)?;
        if session.expires_at_ms <= self.clock.now().timestamp_millis() {
            return Err(StaffError::Expired(utc(session.expires_at_ms)));
        }
        let account = self.store.staff(&session.name)?.ok_or(StaffError::SessionEnded)?;
        if account.disabled || account.generation != session.generation {
            return Err(StaffError::SessionEnded);
        }
        let principal = match account.deputy_of.as_str() {
            "" => None,
            principal => self.store.staff(principal)?.filter(|p| p.absent && !p.disabled),
        };
        Ok(Session { id, account, principal })
    }

    /// Ends the session `id`.
    pub fn logout(&self, id: &[u8]) -> Result<(), StaffError> {
        let writer = self.lock();
        let mut txn = Txn::new(self.store.batch());
        txn.batch.delete_session(id);
        txn.audit("logout", None);
        self.commit_txn(writer, txn)?;
        Ok(())
    }

    /// Audits a refused call: who (as far as known), what, and the rule that refused it.
    pub fn audit_refusal(&self, actor: Actor, person: Option<&PersonKey>, rule: &str) -> Result<(), StorageError> {
        let mut txn = Txn::new(self.store.batch());
        txn.within_reserve();
        txn.audit_note(AuditNote { detail: rule.to_owned(), actor: Some(actor), ..AuditNote::new("refused", person) });
        self.commit_txn(self.lock(), txn)
    }

    /// Audits an access that changes nothing (by the actor of the call being served).
    pub fn audit_access(&self, action: &str, person: Option<&PersonKey>) -> Result<(), StorageError> {
        self.commit_audit(self.lock(), self.store.batch(), action, person)
    }

    /// The person key of an ID number, as this node's records use it.
    pub fn person_key_of(&self, id_number: &str) -> Result<PersonKey, RegistryError> {
        let id = crate::domain::ResidentId::parse("id_number", id_number)?;
        Ok(self.salt.person_key(id.as_str()))
    }

    /// One page of audit entries matching `filter`, oldest first. Looks at no more than
    /// [`AUDIT_SCAN_MAX`] entries per call: `next_after` says where to go on.
    pub fn audit_list(&self, filter: &AuditFilter) -> Result<pb::ListAuditResponse, RegistryError> {
        let page = page_size(filter.page_size, AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX)?;
        let person = filter.person.map(|k| k.0.to_vec());
        let mut entries = Vec::new();
        let mut next_after = 0;
        for (scanned, item) in self.store.audit_after(filter.after).enumerate() {
            let entry = item?;
            if entries.len() == page || scanned == AUDIT_SCAN_MAX {
                next_after = entry.seq - 1;
                break;
            }
            let matches = person.as_ref().is_none_or(|k| entry.person_key == *k || entry.disclosed.contains(k))
                && (filter.staff.is_empty() || entry.staff == filter.staff || entry.acting_for == filter.staff)
                && filter.since_ms.is_none_or(|since| entry.at_ms >= since);
            if matches {
                entries.push(pb::AuditRecord {
                    index: entry.seq,
                    at_ms: entry.at_ms,
                    action: entry.action,
                    person_key: hex::encode(&entry.person_key),
                    staff: if entry.staff.is_empty() { "node".into() } else { entry.staff },
                    acting_for: entry.acting_for,
                    role: entry.role,
                    purpose: entry.purpose,
                    call: entry.call,
                    detail: entry.detail,
                    disclosed: entry.disclosed.iter().map(hex::encode).collect(),
                });
            }
        }
        Ok(pb::ListAuditResponse { entries, next_after })
    }
}

/// A hash of a password nobody has: what a log-in for an unknown name is checked against.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&new_password()))
}

/// The first day of `since` (YYYY-MM-DD) in milliseconds, UTC.
pub fn since_ms(raw: &str) -> Result<Option<i64>, InvalidField> {
    if raw.is_empty() {
        return Ok(None);
    }
    let day = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| InvalidField::new("since", raw, "must be a date YYYY-MM-DD"))?;
    Ok(Some(day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis()))
}
