//! Authentication and authorisation of the staff listener: one tower layer in front of
//! every service. It lets the public calls through ([`crate::staff::is_public`]), checks
//! the session token of every other call, finds the scope that allows the call in
//! [`crate::staff::CALL_SCOPES`] (default: refused), and hands the services a
//! [`Caller`]. Every refusal is answered `Unauthenticated` or `PermissionDenied` naming
//! the rule, and audited.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::registry::{Registry, Session, StaffError};
use crate::staff::{Actor, Caller, Scope, StaffRole, call_scopes, is_public};

/// The response header naming the purpose a call was served under.
pub const PURPOSE_HEADER: &str = "ldx-purpose";

#[derive(Debug, Clone)]
pub struct StaffAuthLayer {
    registry: Arc<Registry>,
}

impl StaffAuthLayer {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl<S> tower_layer::Layer<S> for StaffAuthLayer {
    type Service = StaffAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StaffAuth { inner, registry: self.registry.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct StaffAuth<S> {
    inner: S,
    registry: Arc<Registry>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for StaffAuth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let call = request.uri().path().to_owned();
        if is_public(&call) {
            return Box::pin(self.inner.call(request));
        }
        // The service that was made ready serves this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let registry = self.registry.clone();
        let token = bearer(request.headers());
        let from = remote(&request);
        Box::pin(async move {
            let decided = tokio::task::spawn_blocking(move || authorize(&registry, &call, token.as_deref(), &from))
                .await
                .unwrap_or_else(|e| Err(super::status::from_join(e)));
            match decided {
                Ok(caller) => {
                    let purpose = caller.scope.map(Scope::purpose);
                    request.extensions_mut().insert(caller);
                    let mut response = inner.call(request).await?;
                    if let Some(purpose) = purpose {
                        response.headers_mut().insert(PURPOSE_HEADER, http::HeaderValue::from_static(purpose));
                    }
                    Ok(response)
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_owned())
}

/// The caller's address, as the listener saw it.
pub fn remote<B>(request: &http::Request<B>) -> String {
    let extensions = request.extensions();
    let addr = extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.get_ref().remote_addr()));
    addr.map_or_else(|| "an unknown address".to_owned(), |a| a.ip().to_string())
}

/// Who may make `call` with `token`: the caller, or the refusal (audited).
fn authorize(registry: &Registry, call: &str, token: Option<&str>, from: &str) -> Result<Caller, Status> {
    let session = token.ok_or(StaffError::NoToken).and_then(|t| registry.session(t));
    let session = match session {
        Ok(session) => session,
        Err(StaffError::Storage(e)) => return Err(super::status::from_registry(e.into())),
        Err(e) => {
            let rule = e.to_string();
            let actor = Actor { call: call.to_owned(), ..Default::default() };
            audit(registry, actor, &format!("{rule} (from {from})"));
            return Err(Status::unauthenticated(rule));
        }
    };
    match allow(&session, call) {
        Ok(caller) => Ok(caller),
        Err(rule) => {
            let actor = Actor {
                staff: session.account.name.clone(),
                role: session.account.roles.join(","),
                call: call.to_owned(),
                ..Default::default()
            };
            audit(registry, actor, &rule);
            Err(Status::permission_denied(rule))
        }
    }
}

fn audit(registry: &Registry, actor: Actor, rule: &str) {
    if let Err(e) = registry.audit_refusal(actor, None, rule) {
        tracing::error!(error = %crate::error_chain(&e), "a refused call could not be audited");
    }
}

fn roles(names: &[String]) -> Vec<StaffRole> {
    names.iter().filter_map(|n| StaffRole::parse(n)).collect()
}

/// The first of `roles` (in the order of [`StaffRole::ALL`]) granting one of `scopes`, with
/// the scope it grants.
fn granting(roles: &[StaffRole], scopes: &[Scope]) -> Option<(StaffRole, Scope)> {
    scopes.iter().find_map(|scope| {
        let mut sorted = roles.to_vec();
        sorted.sort();
        sorted.into_iter().find(|r| r.scopes().contains(scope)).map(|r| (r, *scope))
    })
}

/// Whether the session may make `call`: by the account's own roles, or by those of the
/// account it deputises for while that one is marked absent. The error is the rule.
fn allow(session: &Session, call: &str) -> Result<Caller, String> {
    let account = &session.account;
    let Some(scopes) = call_scopes(call) else {
        return Err(format!("no role may call {call}"));
    };
    let own = roles(&account.roles);
    let caller = |role: Option<StaffRole>, scope: Option<Scope>, acting_for: &str, township: &str| Caller {
        actor: Actor {
            staff: account.name.clone(),
            acting_for: acting_for.to_owned(),
            role: role.map_or_else(|| account.roles.join(","), |r| r.name().to_owned()),
            purpose: scope.map(Scope::purpose).unwrap_or_default().to_owned(),
            call: call.to_owned(),
        },
        scope,
        township: (role == Some(StaffRole::TownshipClerk)).then(|| township.to_owned()),
        session: session.id.clone(),
    };
    if scopes.is_empty() {
        return Ok(caller(None, None, "", ""));
    }
    if let Some((role, scope)) = granting(&own, scopes) {
        return Ok(caller(Some(role), Some(scope), "", &account.township));
    }
    if let Some(principal) = &session.principal
        && let Some((role, scope)) = granting(&roles(&principal.roles), scopes)
    {
        return Ok(caller(Some(role), Some(scope), &principal.name, &principal.township));
    }
    let needed: Vec<_> = StaffRole::ALL
        .into_iter()
        .filter(|r| scopes.iter().any(|s| r.scopes().contains(s)))
        .map(StaffRole::name)
        .collect();
    let mut rule = format!(
        "account {:?} (roles {}) may not call {call}: it needs the role {}",
        account.name,
        account.roles.join(", "),
        needed.join(" or ")
    );
    if !account.deputy_of.is_empty() && session.principal.is_none() {
        rule.push_str(&format!(
            "; as deputy of {:?} it acts for that account only while it is marked absent",
            account.deputy_of
        ));
    }
    Err(rule)
}

/// The caller the auth layer put on `request`.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::records::StaffRecord;

    fn session(roles: &[&str], deputy_of: &str, principal: Option<StaffRecord>) -> Session {
        Session {
            id: vec![1; 16],
            account: StaffRecord {
                name: "b".into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                deputy_of: deputy_of.into(),
                township: "410102001".into(),
                ..Default::default()
            },
            principal,
        }
    }

    #[test]
    fn scopes_decide_and_the_rule_is_named() {
        let registrar = session(&["registrar"], "", None);
        let c = allow(&registrar, "/ldx.v1.Registry/RegisterMoveIn").unwrap();
        assert_eq!((c.actor.role.as_str(), c.actor.purpose.as_str()), ("registrar", "registration"));
        let e = allow(&registrar, "/ldx.v1.Registry/VerifyReport").unwrap_err();
        assert!(e.contains("needs the role verifier or township-clerk"), "{e}");
        let e = allow(&registrar, "/ldx.v1.Registry/Unknown").unwrap_err();
        assert!(e.contains("no role may call"), "{e}");

        let police = session(&["police-liaison"], "", None);
        let c = allow(&police, "/ldx.v1.Registry/GetPerson").unwrap();
        assert_eq!(c.view(), crate::staff::View::Identity);
        assert!(allow(&police, "/ldx.v1.Registry/ListReports").is_err());

        let admin = session(&["admin"], "", None);
        assert!(allow(&admin, "/ldx.v1.Registry/GetPerson").is_err());
        assert!(allow(&admin, "/ldx.v1.Staff/AddStaff").is_ok());

        let clerk = session(&["township-clerk"], "", None);
        let c = allow(&clerk, "/ldx.v1.Registry/VerifyReport").unwrap();
        assert_eq!(c.township.as_deref(), Some("410102001"));
    }

    #[test]
    fn a_deputy_acts_for_an_absent_principal_only() {
        let present = session(&["police-liaison"], "a", None);
        let e = allow(&present, "/ldx.v1.Registry/RegisterMoveIn").unwrap_err();
        assert!(e.contains("only while it is marked absent"), "{e}");
        let principal = StaffRecord { name: "a".into(), roles: vec!["registrar".into()], ..Default::default() };
        let absent = session(&["police-liaison"], "a", Some(principal));
        let c = allow(&absent, "/ldx.v1.Registry/RegisterMoveIn").unwrap();
        assert_eq!((c.actor.staff.as_str(), c.actor.acting_for.as_str()), ("b", "a"));
        // What she may do herself she does as herself.
        let c = allow(&absent, "/ldx.v1.Registry/GetPerson").unwrap();
        assert_eq!(c.actor.acting_for, "");
    }
}
