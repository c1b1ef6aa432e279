//! `ldx.v1.Assessment`: this node's two-way assessment statements for a quarter, served
//! to staff and, on the peer API, to the gateway.

use std::sync::Arc;

use ldx_proto::v1 as pb;
use ldx_proto::v1::assessment_server;
use tonic::{Request, Response, Status};

use super::status;
use crate::domain::Period;
use crate::registry::{Registry, RegistryError};

#[derive(Debug, Clone)]
pub struct AssessmentService {
    registry: Arc<Registry>,
}

impl AssessmentService {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    pub fn into_server(self) -> assessment_server::AssessmentServer<Self> {
        assessment_server::AssessmentServer::new(self)
    }
}

#[tonic::async_trait]
impl assessment_server::Assessment for AssessmentService {
    async fn statements(
        &self,
        request: Request<pb::StatementsRequest>,
    ) -> Result<Response<pb::StatementsResponse>, Status> {
        let raw = request.into_inner().period;
        let registry = self.registry.clone();
        let (statements, received) = tokio::task::spawn_blocking(move || {
            let period = Period::parse("period", &raw).map_err(RegistryError::from)?;
            Ok::<_, RegistryError>((registry.assessment(period)?, registry.received_statements(period)?))
        })
        .await
        .map_err(status::from_join)?
        .map_err(status::from_registry)?;
        Ok(Response::new(pb::StatementsResponse { statements, received }))
    }
}
