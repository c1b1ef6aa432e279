//! People in the node: staff roles and the scopes they grant, which API call needs which
//! scope, and what each scope lets a response show.
//!
//! One table each, in the manner of a role → scopes table: [`ROLE_SCOPES`] says what a
//! role may do, [`CALL_SCOPES`] what a call needs (any one of its scopes). A call missing
//! from [`CALL_SCOPES`] is refused to everyone but the calls in [`PUBLIC_CALLS`].

pub mod actor;
pub mod client;
pub mod token;

pub use actor::Actor;

use std::fmt;

use ldx_proto::v1 as pb;

/// A staff role at a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StaffRole {
    /// Destination clerk: move-ins, move-outs, services, photos, reports, ledger.
    Registrar,
    /// Origin clerk: report verification, certificates, the origin's lists.
    Verifier,
    /// A verifier limited to the persons of her township at a county node.
    TownshipClerk,
    /// Read-only: identity and address fields only.
    PoliceLiaison,
    /// The audit log and counts; no personal fields.
    Auditor,
    /// Staff accounts and node operations; no personal data.
    Admin,
}

impl StaffRole {
    pub const ALL: [StaffRole; 6] =
        [Self::Registrar, Self::Verifier, Self::TownshipClerk, Self::PoliceLiaison, Self::Auditor, Self::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Self::Registrar => "registrar",
            Self::Verifier => "verifier",
            Self::TownshipClerk => "township-clerk",
            Self::PoliceLiaison => "police-liaison",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    pub fn scopes(self) -> &'static [Scope] {
        ROLE_SCOPES.iter().find(|(r, _)| *r == self).map_or(&[], |(_, s)| s)
    }
}

impl fmt::Display for StaffRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a call may do, and the purpose it is served under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Register and change records at a destination: move-ins, move-outs, services,
    /// photos, transfers, certificate queries, reports to issue.
    Register,
    /// Read whole records (all fields) and the worklist.
    ReadRecords,
    /// Read identity and address fields only (name, ID number, address, move dates).
    ReadIdentity,
    /// Verify reports received at the origin; read the reports.
    Verify,
    /// Read the audit log.
    ReadAudit,
    /// Read counts and the node's assessment statements; no personal fields.
    ReadCounts,
    /// Staff accounts.
    ManageStaff,
    /// The node's channels, outbox and message log.
    OperateNode,
}

impl Scope {
    /// The purpose a response is served under, as its audit entry and the `ldx-purpose`
    /// response header name it.
    pub fn purpose(self) -> &'static str {
        match self {
            Self::Register => "registration",
            Self::ReadRecords => "case-work",
            Self::ReadIdentity => "identity-check",
            Self::Verify => "verification",
            Self::ReadAudit => "audit",
            Self::ReadCounts => "statistics",
            Self::ManageStaff => "staff-management",
            Self::OperateNode => "node-operation",
        }
    }
}

/// Role → scopes.
pub const ROLE_SCOPES: &[(StaffRole, &[Scope])] = &[
    (StaffRole::Registrar, &[Scope::Register, Scope::ReadRecords]),
    (StaffRole::Verifier, &[Scope::Verify, Scope::ReadRecords]),
    (StaffRole::TownshipClerk, &[Scope::Verify, Scope::ReadRecords]),
    (StaffRole::PoliceLiaison, &[Scope::ReadIdentity]),
    (StaffRole::Auditor, &[Scope::ReadAudit, Scope::ReadCounts]),
    (StaffRole::Admin, &[Scope::ManageStaff, Scope::OperateNode, Scope::ReadCounts]),
];

/// Calls served without a session: health, reflection and the log-in itself.
pub const PUBLIC_CALLS: &[&str] =
    &["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// The log-in call: public, and rate-limited on its own.
pub const LOGIN_CALL: &str = "/ldx.v1.Staff/Login";

/// Call → the scopes that allow it (any one). An empty list: any logged-in account.
pub const CALL_SCOPES: &[(&str, &[Scope])] = &[
    ("/ldx.v1.Registry/RegisterMoveIn", &[Scope::Register]),
    ("/ldx.v1.Registry/RegisterMoveIns", &[Scope::Register]),
    ("/ldx.v1.Registry/RegisterMoveOut", &[Scope::Register]),
    ("/ldx.v1.Registry/RecordService", &[Scope::Register]),
    ("/ldx.v1.Registry/TransferArchive", &[Scope::Register]),
    ("/ldx.v1.Registry/QueryCertificate", &[Scope::Register]),
    ("/ldx.v1.Registry/RecordPhoto", &[Scope::Register]),
    ("/ldx.v1.Registry/IssueReport", &[Scope::Register]),
    ("/ldx.v1.Registry/GetPerson", &[Scope::ReadRecords, Scope::ReadIdentity]),
    ("/ldx.v1.Registry/ListPersons", &[Scope::ReadRecords, Scope::ReadIdentity]),
    ("/ldx.v1.Registry/ListReports", &[Scope::ReadRecords]),
    ("/ldx.v1.Registry/VerifyReport", &[Scope::Verify]),
    ("/ldx.v1.Registry/ListWork", &[Scope::ReadRecords]),
    ("/ldx.v1.Registry/ListOutbox", &[Scope::OperateNode]),
    ("/ldx.v1.Registry/SetAsideEnvelope", &[Scope::OperateNode]),
    ("/ldx.v1.Registry/RunRetention", &[Scope::OperateNode]),
    ("/ldx.v1.Monitor/Status", &[Scope::OperateNode, Scope::ReadCounts]),
    ("/ldx.v1.Monitor/ListLog", &[Scope::OperateNode]),
    ("/ldx.v1.Assessment/Statements", &[Scope::ReadCounts]),
    ("/ldx.v1.Staff/Logout", &[]),
    ("/ldx.v1.Staff/WhoAmI", &[]),
    ("/ldx.v1.Staff/AddStaff", &[Scope::ManageStaff]),
    ("/ldx.v1.Staff/ListStaff", &[Scope::ManageStaff]),
    ("/ldx.v1.Staff/UpdateStaff", &[Scope::ManageStaff]),
    ("/ldx.v1.Staff/ListAudit", &[Scope::ReadAudit]),
];

/// The scopes that allow `call`; `None` for a call nobody may make.
pub fn call_scopes(call: &str) -> Option<&'static [Scope]> {
    CALL_SCOPES.iter().find(|(c, _)| *c == call).map(|(_, s)| *s)
}

pub fn is_public(call: &str) -> bool {
    call == LOGIN_CALL || PUBLIC_CALLS.iter().any(|p| call.starts_with(p))
}

/// An authenticated caller, allowed to make the call it makes: what the registry's views
/// and the audit need to know of her.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    /// The scope that allowed the call (`None` for a call any account may make).
    pub scope: Option<Scope>,
    /// Her township, when she is limited to one.
    pub township: Option<String>,
    /// The session's id, for log-out.
    pub session: Vec<u8>,
}

impl Caller {
    /// How much of a person record this caller's response may show.
    pub fn view(&self) -> View {
        match self.scope {
            Some(Scope::ReadRecords | Scope::Register | Scope::Verify) => View::Full,
            Some(Scope::ReadIdentity) => View::Identity,
            _ => View::Nothing,
        }
    }
}

/// The fields of a person record a response may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Full,
    /// Name, ID number, address, divisions and move dates: no phone, services, photos,
    /// certificate or reports.
    Identity,
    Nothing,
}

impl View {
    /// Leaves in `person` only what this view shows: the rest is not sent at all.
    pub fn apply(self, person: &mut pb::Person) {
        match self {
            View::Full => {}
            View::Identity => {
                person.phone.clear();
                person.services.clear();
                person.sync = None;
            }
            View::Nothing => *person = pb::Person::default(),
        }
    }
}

/// The rule of a staff account name, as `staff add` checks it: `Err` holds the rule.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (2..=32).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    match ok {
        true => Ok(()),
        false => Err("must be 2 to 32 characters of a-z, 0-9, '.', '-' or '_', starting with a letter".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_of_the_staff_listener_is_in_the_table_or_public() {
        let descriptor = ldx_proto::FILE_DESCRIPTOR_SET;
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(descriptor).unwrap();
        let mut calls = Vec::new();
        for file in &set.file {
            for service in &file.service {
                let name = service.name();
                if matches!(name, "Exchange" | "Directory") {
                    continue; // the peer port's, not the staff listener's
                }
                for method in &service.method {
                    calls.push(format!("/{}.{name}/{}", file.package(), method.name()));
                }
            }
        }
        assert!(calls.len() > 20, "{calls:?}");
        for call in &calls {
            assert!(call_scopes(call).is_some() || is_public(call), "{call} is in no table");
        }
        for (call, _) in CALL_SCOPES {
            assert!(calls.iter().any(|c| c == call), "{call} is not a call of the API");
        }
    }

    #[test]
    fn roles_by_name_and_the_scopes_they_lack() {
        for role in StaffRole::ALL {
            assert_eq!(StaffRole::parse(role.name()), Some(role));
            assert!(!role.scopes().is_empty());
        }
        assert!(!StaffRole::Admin.scopes().contains(&Scope::ReadRecords));
        assert!(!StaffRole::Auditor.scopes().contains(&Scope::ReadIdentity));
        assert!(!StaffRole::Registrar.scopes().contains(&Scope::Verify));
        assert!(!StaffRole::PoliceLiaison.scopes().contains(&Scope::ReadRecords));
    }

    #[test]
    fn the_identity_view_sends_no_service_phone_or_sync_state() {
        let mut person = pb::Person {
            name: "Zhang San".into(),
            id_number: "x".into(),
            phone: "138".into(),
            address: "Road 1".into(),
            services: vec![pb::Service::default()],
            sync: Some(pb::SyncState::default()),
            ..Default::default()
        };
        View::Identity.apply(&mut person);
        assert_eq!((person.name.as_str(), person.address.as_str()), ("Zhang San", "Road 1"));
        assert!(person.phone.is_empty() && person.services.is_empty() && person.sync.is_none());
        View::Nothing.apply(&mut person);
        assert_eq!(person, pb::Person::default());
    }

    #[test]
    fn names() {
        assert!(check_name("li.na").is_ok());
        assert!(check_name("a").is_err());
        assert!(check_name("Li").is_err());
        assert!(check_name("1ab").is_err());
    }
}
