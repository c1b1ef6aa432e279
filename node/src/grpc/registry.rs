//! `ldx.v1.Registry` over gRPC: each call runs the blocking registry work off the async
//! runtime and maps its outcome through [`super::status`].

use std::sync::Arc;

use ldx_proto::v1 as pb;
use ldx_proto::v1::registry_server;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::auth::caller;
use super::status;
use crate::registry::{Registry, RegistryError};
use crate::staff::Caller;

#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Arc<Registry>,
}

impl RegistryService {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    pub fn into_server(self) -> registry_server::RegistryServer<Self> {
        registry_server::RegistryServer::new(self)
    }

    /// Runs `work` on the blocking pool (RocksDB calls and fsyncs must not stall the
    /// runtime), as `caller`: the audit entries it writes name her.
    async fn run<T, F>(&self, caller: &Caller, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    {
        let registry = self.registry.clone();
        let actor = caller.actor.clone();
        tokio::task::spawn_blocking(move || crate::staff::actor::acting(actor, || work(&registry)))
            .await
            .map_err(status::from_join)?
            .map_err(|e| {
                tracing::debug!(error = %e, "request refused");
                status::from_registry(e)
            })
    }
}

/// Holds a list to the caller's township, if she is limited to one: an empty filter
/// becomes hers, another township is refused (and audited).
fn within(registry: &Registry, caller: &Caller, requested: &mut String) -> Result<(), RegistryError> {
    let Some(township) = &caller.township else {
        return Ok(());
    };
    if requested.is_empty() || requested == township {
        *requested = township.clone();
        return Ok(());
    }
    let rule = format!("township {requested} is not {township}, the only one this account may see");
    registry.audit_refusal(caller.actor.clone(), None, &rule)?;
    Err(RegistryError::OutsideTownship { township: township.clone() })
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    #[instrument(level = "debug", skip_all, name = "register_move_in")]
    async fn register_move_in(
        &self,
        request: Request<pb::RegisterMoveInRequest>,
    ) -> Result<Response<pb::RegisterMoveInResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (person, created) = self.run(&caller, move |r| r.move_in(&req)).await?;
        Ok(Response::new(pb::RegisterMoveInResponse { person: Some(viewed(&caller, person)), created }))
    }

    #[instrument(level = "debug", skip_all, name = "register_move_ins")]
    async fn register_move_ins(
        &self,
        request: Request<pb::RegisterMoveInsRequest>,
    ) -> Result<Response<pb::RegisterMoveInsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let outcomes = self.run(&caller, move |r| r.move_ins(&req.move_ins)).await?;
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok((person, created)) => {
                    pb::MoveInResult { person: Some(viewed(&caller, person)), created, ..Default::default() }
                }
                Err(e) => {
                    let status = status::from_registry(e);
                    pb::MoveInResult {
                        error_code: status.code() as i32,
                        error: status.message().to_owned(),
                        ..Default::default()
                    }
                }
            })
            .collect();
        Ok(Response::new(pb::RegisterMoveInsResponse { results }))
    }

    #[instrument(level = "debug", skip_all, name = "register_move_out")]
    async fn register_move_out(
        &self,
        request: Request<pb::RegisterMoveOutRequest>,
    ) -> Result<Response<pb::PersonResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let person = self.run(&caller, move |r| r.move_out(&req)).await?;
        Ok(Response::new(pb::PersonResponse { person: Some(viewed(&caller, person)) }))
    }

    #[instrument(level = "debug", skip_all, name = "record_service")]
    async fn record_service(
        &self,
        request: Request<pb::RecordServiceRequest>,
    ) -> Result<Response<pb::PersonResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let person = self.run(&caller, move |r| r.record_service(&req)).await?;
        Ok(Response::new(pb::PersonResponse { person: Some(viewed(&caller, person)) }))
    }

    #[instrument(level = "debug", skip_all, name = "get_person")]
    async fn get_person(&self, request: Request<pb::GetPersonRequest>) -> Result<Response<pb::PersonResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let township = caller.township.clone();
        let person = self.run(&caller, move |r| r.get_within(&req, township.as_deref())).await?;
        Ok(Response::new(pb::PersonResponse { person: Some(viewed(&caller, person)) }))
    }

    #[instrument(level = "debug", skip_all, name = "list_persons")]
    async fn list_persons(
        &self,
        request: Request<pb::ListPersonsRequest>,
    ) -> Result<Response<pb::ListPersonsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut req = req;
        let limit = caller.clone();
        let mut page = self
            .run(&caller, move |r| {
                within(r, &limit, &mut req.township)?;
                r.list(&req)
            })
            .await?;
        let view = caller.view();
        page.persons.iter_mut().for_each(|p| view.apply(p));
        Ok(Response::new(page))
    }

    #[instrument(level = "debug", skip_all, name = "transfer_archive")]
    async fn transfer_archive(
        &self,
        request: Request<pb::TransferArchiveRequest>,
    ) -> Result<Response<pb::PersonResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let person = self.run(&caller, move |r| r.transfer_archive(&req)).await?;
        Ok(Response::new(pb::PersonResponse { person: Some(viewed(&caller, person)) }))
    }

    #[instrument(level = "debug", skip_all, name = "query_certificate")]
    async fn query_certificate(
        &self,
        request: Request<pb::QueryCertificateRequest>,
    ) -> Result<Response<pb::PersonResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let person = self.run(&caller, move |r| r.query_certificate(&req)).await?;
        Ok(Response::new(pb::PersonResponse { person: Some(viewed(&caller, person)) }))
    }

    #[instrument(level = "debug", skip_all, name = "record_photo")]
    async fn record_photo(
        &self,
        request: Request<pb::RecordPhotoRequest>,
    ) -> Result<Response<pb::PersonResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let person = self.run(&caller, move |r| r.record_photo(&req)).await?;
        Ok(Response::new(pb::PersonResponse { person: Some(viewed(&caller, person)) }))
    }

    #[instrument(level = "debug", skip_all, name = "issue_report")]
    async fn issue_report(
        &self,
        request: Request<pb::IssueReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (report, created) = self.run(&caller, move |r| r.issue_report(&req)).await?;
        Ok(Response::new(pb::ReportResponse { report: Some(report), created }))
    }

    #[instrument(level = "debug", skip_all, name = "list_reports")]
    async fn list_reports(
        &self,
        request: Request<pb::ListReportsRequest>,
    ) -> Result<Response<pb::ListReportsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut req = req;
        let limit = caller.clone();
        Ok(Response::new(
            self.run(&caller, move |r| {
                within(r, &limit, &mut req.township)?;
                r.list_reports(&req)
            })
            .await?,
        ))
    }

    #[instrument(level = "debug", skip_all, name = "verify_report")]
    async fn verify_report(
        &self,
        request: Request<pb::VerifyReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let township = caller.township.clone();
        let (report, created) = self.run(&caller, move |r| r.verify_report_within(&req, township.as_deref())).await?;
        Ok(Response::new(pb::ReportResponse { report: Some(report), created }))
    }

    #[instrument(level = "debug", skip_all, name = "list_work")]
    async fn list_work(&self, request: Request<pb::ListWorkRequest>) -> Result<Response<pb::ListWorkResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut req = req;
        let limit = caller.clone();
        Ok(Response::new(
            self.run(&caller, move |r| {
                within(r, &limit, &mut req.township)?;
                r.work_list(&req)
            })
            .await?,
        ))
    }

    #[instrument(level = "debug", skip_all, name = "list_outbox")]
    async fn list_outbox(
        &self,
        request: Request<pb::ListOutboxRequest>,
    ) -> Result<Response<pb::ListOutboxResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        Ok(Response::new(self.run(&caller, move |r| r.list_outbox(&req)).await?))
    }

    #[instrument(level = "debug", skip_all, name = "set_aside_envelope")]
    async fn set_aside_envelope(
        &self,
        request: Request<pb::SetAsideEnvelopeRequest>,
    ) -> Result<Response<pb::SetAsideEnvelopeResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let set_aside = self.run(&caller, move |r| r.set_aside(&req)).await?;
        Ok(Response::new(pb::SetAsideEnvelopeResponse { set_aside: Some(set_aside) }))
    }

    #[instrument(level = "debug", skip_all, name = "run_retention")]
    async fn run_retention(
        &self,
        request: Request<pb::RunRetentionRequest>,
    ) -> Result<Response<pb::RunRetentionResponse>, Status> {
        let caller = caller(&request)?;
        let dry_run = request.get_ref().dry_run;
        Ok(Response::new(self.run(&caller, move |r| r.run_retention(dry_run)).await?))
    }
}

/// The person as the caller's view shows her.
fn viewed(caller: &Caller, mut person: pb::Person) -> pb::Person {
    caller.view().apply(&mut person);
    person
}
