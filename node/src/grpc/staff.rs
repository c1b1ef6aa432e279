//! `ldx.v1.Staff` over gRPC: log-in and log-out, staff accounts, the audit list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ldx_proto::v1 as pb;
use ldx_proto::v1::staff_server;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::status;
use crate::registry::{AuditFilter, NewStaff, Registry, StaffChange, StaffError, account_view, since_ms};
use crate::staff::Caller;

/// Failed log-ins from one address within [`ADDRESS_WINDOW`] after which it is refused
/// until the window has passed.
pub const ADDRESS_FAILURES_MAX: u32 = 20;
pub const ADDRESS_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Addresses tracked at most: the oldest windows are forgotten first.
const ADDRESSES_MAX: usize = 10_000;

/// Failed log-ins per address, in memory (a restart forgets them; the per-account lock is
/// stored).
#[derive(Debug, Default)]
struct AddressLimiter {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl AddressLimiter {
    fn refused(&self, from: &str) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (count, since) = failures.get(from)?;
        let left = ADDRESS_WINDOW.checked_sub(since.elapsed())?;
        (*count >= ADDRESS_FAILURES_MAX).then_some(left)
    }

    fn failed(&self, from: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() >= ADDRESSES_MAX && !failures.contains_key(from) {
            failures.retain(|_, (_, since)| since.elapsed() < ADDRESS_WINDOW);
            if failures.len() >= ADDRESSES_MAX
                && let Some(oldest) = failures.iter().min_by_key(|(_, (_, since))| *since).map(|(k, _)| k.clone())
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(from.to_owned()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= ADDRESS_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn succeeded(&self, from: &str) {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(from);
    }
}

#[derive(Debug, Clone)]
pub struct StaffService {
    registry: Arc<Registry>,
    limiter: Arc<AddressLimiter>,
}

pub fn from_staff(e: StaffError) -> Status {
    match e {
        StaffError::Invalid(_) => Status::invalid_argument(e.to_string()),
        StaffError::NoAccount(_) => Status::not_found(e.to_string()),
        StaffError::Exists(_) => Status::already_exists(e.to_string()),
        StaffError::BadLogin
        | StaffError::Locked { .. }
        | StaffError::Disabled(_)
        | StaffError::NoToken
        | StaffError::Token(_)
        | StaffError::SessionEnded
        | StaffError::Expired(_) => Status::unauthenticated(e.to_string()),
        StaffError::Storage(e) => status::from_registry(e.into()),
    }
}

impl StaffService {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry, limiter: Arc::default() }
    }

    pub fn into_server(self) -> staff_server::StaffServer<Self> {
        staff_server::StaffServer::new(self)
    }

    /// Runs `work` on the blocking pool as `caller`.
    async fn run<T, F>(&self, caller: Option<Caller>, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> Result<T, StaffError> + Send + 'static,
    {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || match caller {
            Some(c) => crate::staff::actor::acting(c.actor, || work(&registry)),
            None => work(&registry),
        })
        .await
        .map_err(status::from_join)?
        .map_err(from_staff)
    }
}

fn change(raw: i32) -> Result<StaffChange, Status> {
    match pb::StaffChange::try_from(raw) {
        Ok(pb::StaffChange::Disable) => Ok(StaffChange::Disable),
        Ok(pb::StaffChange::Enable) => Ok(StaffChange::Enable),
        Ok(pb::StaffChange::Absent) => Ok(StaffChange::Absent),
        Ok(pb::StaffChange::Present) => Ok(StaffChange::Present),
        Ok(pb::StaffChange::Reset) => Ok(StaffChange::Reset),
        _ => Err(Status::invalid_argument(format!(
            "change: {raw} must be one of disable, enable, absent, present, reset"
        ))),
    }
}

#[tonic::async_trait]
impl staff_server::Staff for StaffService {
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let from = request.remote_addr().map_or_else(|| "an unknown address".to_owned(), |a| a.ip().to_string());
        let req = request.into_inner();
        if let Some(left) = self.limiter.refused(&from) {
            let rule = format!(
                "too many failed log-ins from {from}: refused for another {} minutes",
                left.as_secs().div_ceil(60)
            );
            let actor = crate::staff::Actor {
                staff: req.name.clone(),
                call: crate::staff::LOGIN_CALL.into(),
                ..Default::default()
            };
            let registry = self.registry.clone();
            let audited = rule.clone();
            tokio::task::spawn_blocking(move || registry.audit_refusal(actor, None, &audited))
                .await
                .map_err(status::from_join)?
                .map_err(|e| status::from_registry(e.into()))?;
            return Err(Status::resource_exhausted(rule));
        }
        let at = from.clone();
        let outcome = self.run(None, move |r| r.login(&req.name, &req.password, &at)).await;
        match &outcome {
            Ok(_) => self.limiter.succeeded(&from),
            Err(s) if s.code() == tonic::Code::Unauthenticated => self.limiter.failed(&from),
            Err(_) => {}
        }
        let (token, expires_at_ms, account) = outcome?;
        Ok(Response::new(pb::LoginResponse { token, expires_at_ms, account: Some(account_view(&account)) }))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = caller(&request)?;
        let id = caller.session.clone();
        self.run(Some(caller), move |r| r.logout(&id)).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Result<Response<pb::StaffAccount>, Status> {
        let caller = caller(&request)?;
        let name = caller.actor.staff.clone();
        let accounts = self.run(None, |r| r.staff_list()).await?;
        let account = accounts.iter().find(|a| a.name == name).ok_or_else(|| Status::unauthenticated("no account"))?;
        Ok(Response::new(account_view(account)))
    }

    async fn add_staff(&self, request: Request<pb::AddStaffRequest>) -> Result<Response<pb::AddStaffResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let new = NewStaff {
            name: req.name,
            roles: req.roles,
            township: req.township,
            deputy_of: req.deputy_of,
            password: req.password,
        };
        let (account, password) = self.run(Some(caller), move |r| r.staff_add(&new)).await?;
        Ok(Response::new(pb::AddStaffResponse { account: Some(account_view(&account)), password }))
    }

    async fn list_staff(
        &self,
        request: Request<pb::ListStaffRequest>,
    ) -> Result<Response<pb::ListStaffResponse>, Status> {
        let caller = caller(&request)?;
        let accounts = self.run(Some(caller), |r| r.staff_list()).await?;
        Ok(Response::new(pb::ListStaffResponse { accounts: accounts.iter().map(account_view).collect() }))
    }

    async fn update_staff(
        &self,
        request: Request<pb::UpdateStaffRequest>,
    ) -> Result<Response<pb::UpdateStaffResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let change = change(req.change)?;
        let (account, password) =
            self.run(Some(caller), move |r| r.staff_update(&req.name, change, &req.password)).await?;
        Ok(Response::new(pb::UpdateStaffResponse { account: Some(account_view(&account)), password }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let page = self
            .run(Some(caller), move |r| {
                let person = match req.id_number.as_str() {
                    "" => None,
                    id => Some(r.person_key_of(id)?),
                };
                let filter = AuditFilter {
                    person,
                    staff: req.staff,
                    since_ms: since_ms(&req.since)?,
                    after: req.after,
                    page_size: req.page_size,
                };
                let page = r.audit_list(&filter)?;
                // The auditor's reading of the log is itself audited.
                r.audit_access("list_audit", filter.person.as_ref())?;
                Ok(page)
            })
            .await?;
        Ok(Response::new(page))
    }
}
