//! The client side of staff sessions: the interceptor that sends the token on every call.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to every request (none without a token: the node
/// then answers `Unauthenticated` saying how to log in).
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A token that is not valid header text is refused here, not sent.
    pub fn new(token: &str) -> anyhow::Result<Self> {
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| anyhow::anyhow!("the session token holds characters a token never has"))?;
        Ok(Self(Some(value)))
    }

    pub fn none() -> Self {
        Self(None)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to a node's staff API that carries a session token.
pub type StaffChannel = InterceptedService<Channel, Bearer>;

pub fn with_token(channel: Channel, bearer: Bearer) -> StaffChannel {
    InterceptedService::new(channel, bearer)
}

/// Logs in as `name` and returns the session token.
pub async fn login(channel: Channel, name: &str, password: &str) -> Result<String, tonic::Status> {
    let mut client = ldx_proto::v1::staff_client::StaffClient::new(channel);
    let request = ldx_proto::v1::LoginRequest { name: name.to_owned(), password: password.to_owned() };
    Ok(client.login(request).await?.into_inner().token)
}
