//! Who may call what on the peer port. The TLS layer lets in any certificate of the
//! federation CA; these interceptors then check the client's certificate against the
//! directory in use, on every call: `Exchange` checks its sender itself (receiver.rs),
//! `Monitor` and `Assessment` answer only the gateway's certificate (pinned in the signed
//! directory), and health answers only listed nodes and the gateway.

use ldx_proto::identity::cert_fingerprint;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::directory::DirectoryWatch;

/// Which identities a peer-port service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Only the gateway's client certificate.
    Gateway,
    /// The gateway's, or a node certificate the directory lists.
    Federation,
}

#[derive(Debug, Clone)]
pub struct PeerGuard {
    directory: DirectoryWatch,
    admit: Admit,
}

impl PeerGuard {
    pub fn new(directory: DirectoryWatch, admit: Admit) -> Self {
        Self { directory, admit }
    }
}

impl Interceptor for PeerGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let directory =
            self.directory.current().ok_or_else(|| Status::unavailable("this node has no directory yet"))?;
        let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let cert = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let fingerprint = cert_fingerprint(cert.as_ref());
        let gateway = directory.gateway_cert_sha256() == Some(&fingerprint);
        let node = self.admit == Admit::Federation && directory.division_of_cert(&fingerprint).is_some();
        if gateway || node {
            return Ok(request);
        }
        let who = match self.admit {
            Admit::Gateway => "the gateway's certificate",
            Admit::Federation => "a node or gateway certificate",
        };
        Err(Status::permission_denied(format!(
            "client certificate sha256 {} is not {who} in directory version {}",
            hex::encode(fingerprint),
            directory.version()
        )))
    }
}
